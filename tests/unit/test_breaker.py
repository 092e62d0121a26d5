"""The circuit breaker's state machine (fake clock), its guarded calls, and GuardedPrefixIndex."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from router.breaker import BreakerState, CircuitBreaker, DependencyUnavailable, GuardedPrefixIndex
from router.prefix_index import (
    ApplyResult,
    EventBatch,
    IndexEvent,
    InMemoryPrefixIndex,
    PrefixIndex,
)

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def make_breaker(clock: FakeClock, **overrides) -> CircuitBreaker:
    settings = {"failure_threshold": 3, "reset_timeout_s": 5.0, "clock": clock} | overrides
    return CircuitBreaker("test", **settings)


def open_breaker(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.failure_threshold):
        breaker.record_failure()
    assert breaker.state is OPEN


async def answer(value: int) -> int:
    return value


async def fail_with(error: BaseException) -> None:
    raise error


def test_consecutive_failures_open_the_circuit_and_a_success_resets_the_count():
    breaker = make_breaker(FakeClock())
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # the count starts over: two more failures are not enough
    breaker.record_failure()
    breaker.record_failure()
    assert (breaker.state, breaker.allow()) == (CLOSED, True)
    breaker.record_failure()
    assert (breaker.state, breaker.allow()) == (OPEN, False)


def test_after_the_reset_timeout_exactly_one_trial_is_admitted_and_its_success_closes():
    clock = FakeClock()
    breaker = make_breaker(clock)
    open_breaker(breaker)
    clock.now_s += 4.9
    assert not breaker.allow()
    clock.now_s += 0.1
    assert breaker.allow()
    assert (breaker.state, breaker.allow()) == (HALF_OPEN, False)  # one trial at a time
    breaker.record_success()
    assert (breaker.state, breaker.allow()) == (CLOSED, True)


def test_a_failed_trial_reopens_for_another_full_timeout():
    clock = FakeClock()
    breaker = make_breaker(clock)
    open_breaker(breaker)
    clock.now_s += 5.0
    assert breaker.allow()
    clock.now_s += 1.0
    breaker.record_failure()
    assert breaker.state is OPEN
    clock.now_s += 4.9
    assert not breaker.allow()
    clock.now_s += 0.1
    assert breaker.allow()


def test_a_trial_that_never_reports_is_replaced_after_the_timeout():
    """A cancelled caller never records its trial's outcome; the circuit must not stay stuck."""
    clock = FakeClock()
    breaker = make_breaker(clock)
    open_breaker(breaker)
    clock.now_s += 5.0
    assert breaker.allow()
    clock.now_s += 4.9
    assert not breaker.allow()
    clock.now_s += 0.1
    assert breaker.allow()
    assert breaker.state is HALF_OPEN


def test_listeners_see_each_change_once_and_a_broken_listener_changes_nothing():
    clock = FakeClock()
    breaker = make_breaker(clock, failure_threshold=1)
    changes: list[tuple[BreakerState, BreakerState]] = []
    breaker.add_listener(lambda old, new: changes.append((old, new)))
    breaker.add_listener(lambda old, new: 1 / 0)
    breaker.record_failure()
    breaker.record_failure()  # already open: no change to report
    clock.now_s += 5.0
    breaker.allow()
    breaker.record_success()
    breaker.record_success()
    assert changes == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]


@pytest.mark.parametrize(
    "settings",
    [{"failure_threshold": 0}, {"reset_timeout_s": 0.0}, {"call_timeout_s": -1.0}],
)
def test_nonsense_settings_are_refused(settings):
    with pytest.raises(ValueError, match=next(iter(settings))):
        make_breaker(FakeClock(), **settings)


async def test_call_returns_the_result_while_closed():
    assert await make_breaker(FakeClock()).call(answer, 7) == 7


@pytest.mark.parametrize("error", [RedisConnectionError("refused"), OSError("reset")])
async def test_dependency_errors_become_dependency_unavailable_chained_to_the_cause(error):
    breaker = make_breaker(FakeClock(), failure_threshold=1)
    with pytest.raises(DependencyUnavailable) as raised:
        await breaker.call(fail_with, error)
    assert raised.value.__cause__ is error
    assert breaker.state is OPEN


async def test_an_open_circuit_refuses_without_calling():
    breaker = make_breaker(FakeClock())
    open_breaker(breaker)
    calls = []

    async def tracked() -> None:
        calls.append(1)

    with pytest.raises(DependencyUnavailable, match="circuit open"):
        await breaker.call(tracked)
    assert calls == []


async def test_a_stalled_call_gives_up_after_call_timeout_and_counts_as_a_failure():
    """A paused Redis never answers; the caller must get control back on time."""
    breaker = make_breaker(FakeClock(), failure_threshold=1, call_timeout_s=0.05)
    started_s = time.monotonic()
    with pytest.raises(DependencyUnavailable) as raised:
        await breaker.call(asyncio.Event().wait)
    assert time.monotonic() - started_s < 0.5
    assert isinstance(raised.value.__cause__, TimeoutError)
    assert breaker.state is OPEN


async def test_the_callers_own_errors_pass_through_and_count_as_an_answer():
    clock = FakeClock()
    breaker = make_breaker(clock)
    open_breaker(breaker)
    clock.now_s += 5.0
    with pytest.raises(KeyError):
        await breaker.call(fail_with, KeyError("no such worker"))
    assert breaker.state is CLOSED


def batch(worker_id: str, *hashes: bytes) -> EventBatch:
    events = tuple(IndexEvent(True, h, seq) for seq, h in enumerate(hashes, start=1))
    return EventBatch(worker_id, epoch=1, events=events, last_seq=len(hashes))


async def test_guarded_index_passes_every_method_through_to_the_inner_index():
    index = GuardedPrefixIndex(InMemoryPrefixIndex(ttl_s=30.0), make_breaker(FakeClock()))
    assert index.ttl_s == 30.0
    assert await index.apply(batch("p0", b"a", b"b")) == ApplyResult(2)
    await index.apply(batch("p1", b"a"))
    assert await index.lookup([b"a", b"b", b"c"]) == {"p0": 2, "p1": 1}
    await index.refresh(["p0"])
    await index.purge("p1")
    assert await index.lookup([b"a"]) == {"p0": 1}
    assert index.breaker.state is CLOSED


class FlakyIndex(PrefixIndex):
    """Fails every call with a Redis connection error while `down`; counts the calls."""

    def __init__(self) -> None:
        super().__init__(ttl_s=30.0)
        self.down = True
        self.num_calls = 0

    async def _answer(self) -> None:
        self.num_calls += 1
        if self.down:
            raise RedisConnectionError("Connection refused")

    async def apply(self, batch: EventBatch) -> ApplyResult:
        await self._answer()
        return ApplyResult(len(batch.events))

    async def lookup(self, page_hashes: Sequence[bytes]) -> dict[str, int]:
        await self._answer()
        return {"p0": len(page_hashes)}

    async def refresh(self, worker_ids: Iterable[str]) -> None:
        await self._answer()

    async def purge(self, worker_id: str) -> None:
        await self._answer()

    async def close(self) -> None:
        self.down = True


async def test_guarded_index_fails_fast_while_open_and_recovers_by_itself():
    clock = FakeClock()
    inner = FlakyIndex()
    index = GuardedPrefixIndex(inner, make_breaker(clock, failure_threshold=2))
    for call in (index.lookup([b"a"]), index.apply(batch("p0", b"a")), index.refresh(["p0"])):
        with pytest.raises(DependencyUnavailable):
            await call
    assert inner.num_calls == 2  # the third call never reached the index
    inner.down = False
    clock.now_s += 5.0
    assert await index.lookup([b"a", b"b"]) == {"p0": 2}
    await index.purge("p0")
    assert (index.breaker.state, inner.num_calls) == (CLOSED, 4)
