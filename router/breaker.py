"""A circuit breaker in front of an optional dependency (Redis), so its outage never fails a
request: the caller gets DependencyUnavailable at once and falls back (load-only routing,
the local registry).

States, in the order an outage passes through them:
    CLOSED     calls run; `failure_threshold` consecutive failures open the circuit.
    OPEN       calls are refused without touching the dependency, for `reset_timeout_s`.
    HALF_OPEN  the first `allow()` after that admits one trial call; its success closes the
               circuit, its failure opens it again for another `reset_timeout_s`. A trial
               that never reports (its caller was cancelled) is replaced by another one
               after `reset_timeout_s`.
Any answer from the dependency is a success: it proves the dependency is up, so a straggler
call that succeeds while the circuit is open closes it too. Failures are RedisError, OSError
and timeouts (`call_timeout_s` bounds each call, so a paused Redis stalls nobody longer).
Listeners see every state change as (old, new), synchronously, on the event loop.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import ParamSpec, TypeVar

from redis.exceptions import RedisError

from router.prefix_index import ApplyResult, EventBatch, PrefixIndex

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
StateListener = Callable[["BreakerState", "BreakerState"], None]

# TimeoutError is an OSError too; named for the reader (asyncio.timeout raises it).
_DEPENDENCY_FAILURES = (RedisError, OSError, TimeoutError)


class DependencyUnavailable(RuntimeError):
    """The dependency is down (or the circuit is open): fall back, do not fail the request."""


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Owns one dependency's failure count and circuit state. Used from one event loop."""

    def __init__(
        self,
        name: str,
        failure_threshold: int = 3,
        reset_timeout_s: float = 2.0,
        call_timeout_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold: must be >= 1, got {failure_threshold}")
        if reset_timeout_s <= 0:
            raise ValueError(f"reset_timeout_s: must be > 0, got {reset_timeout_s}")
        if call_timeout_s is not None and call_timeout_s <= 0:
            raise ValueError(f"call_timeout_s: must be > 0 or None, got {call_timeout_s}")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self.call_timeout_s = call_timeout_s
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._num_failures = 0  # consecutive, while CLOSED
        self._changed_s = clock()  # when OPEN or HALF_OPEN began
        self._listeners: list[StateListener] = []

    @property
    def state(self) -> BreakerState:
        """The stored state; OPEN turns HALF_OPEN on the first `allow()` after the timeout."""
        return self._state

    def add_listener(self, on_state_change: StateListener) -> None:
        """Calls `on_state_change(old, new)` after every change; its errors are logged."""
        self._listeners.append(on_state_change)

    def allow(self) -> bool:
        """Whether a call may go to the dependency now. Admits the HALF_OPEN trial."""
        if self._state is BreakerState.CLOSED:
            return True
        if self._clock() - self._changed_s < self.reset_timeout_s:
            return False
        self._set_state(BreakerState.HALF_OPEN)  # also restarts the trial's timer
        return True

    def record_success(self) -> None:
        self._num_failures = 0
        self._set_state(BreakerState.CLOSED)

    def record_failure(self) -> None:
        if self._state is BreakerState.HALF_OPEN:
            self._set_state(BreakerState.OPEN)
        elif self._state is BreakerState.CLOSED:
            self._num_failures += 1
            if self._num_failures >= self.failure_threshold:
                self._set_state(BreakerState.OPEN)

    async def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Runs `fn(*args, **kwargs)` under the breaker and `call_timeout_s`.

        Raises DependencyUnavailable (chained to the cause) when the circuit is open, on a
        dependency failure, or on timeout. Any other exception is the caller's own: the
        dependency answered, so it counts as a success and propagates unchanged.
        """
        if not self.allow():
            raise DependencyUnavailable(f"{self.name}: circuit open")
        try:
            async with asyncio.timeout(self.call_timeout_s):
                result = await fn(*args, **kwargs)
        except _DEPENDENCY_FAILURES as error:
            self.record_failure()
            raise DependencyUnavailable(f"{self.name}: {error!r}") from error
        except Exception:
            self.record_success()
            raise
        self.record_success()
        return result

    def _set_state(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        if new is not BreakerState.CLOSED:
            self._changed_s = self._clock()
        if old is new:
            return
        for listener in self._listeners:
            try:
                listener(old, new)
            except Exception:  # a broken listener must not break the breaker
                log.exception("breaker %s: state listener failed", self.name)


class GuardedPrefixIndex(PrefixIndex):
    """Any PrefixIndex behind a CircuitBreaker: every method may raise DependencyUnavailable,
    on which the caller routes load-only (lookup) or asks for a snapshot later (apply).

    Lookups sit on the request path: `lookup_timeout_s` bounds them tighter than the
    breaker's `call_timeout_s`, which bounds the writes (a worker's snapshot may hold tens of
    thousands of hashes). The inner index is owned by this object; `close` always reaches it.
    """

    def __init__(
        self, inner: PrefixIndex, breaker: CircuitBreaker, lookup_timeout_s: float | None = None
    ) -> None:
        super().__init__(inner.ttl_s)
        self._inner = inner
        self.breaker = breaker
        self._lookup_timeout_s = lookup_timeout_s

    async def apply(self, batch: EventBatch) -> ApplyResult:
        return await self.breaker.call(self._inner.apply, batch)

    async def lookup(self, page_hashes: Sequence[bytes]) -> dict[str, int]:
        return await self.breaker.call(self._bounded_lookup, page_hashes)

    async def _bounded_lookup(self, page_hashes: Sequence[bytes]) -> dict[str, int]:
        async with asyncio.timeout(self._lookup_timeout_s):
            return await self._inner.lookup(page_hashes)

    async def refresh(self, worker_ids: Iterable[str]) -> None:
        await self.breaker.call(self._inner.refresh, list(worker_ids))

    async def purge(self, worker_id: str) -> None:
        await self.breaker.call(self._inner.purge, worker_id)

    async def close(self) -> None:
        await self._inner.close()
