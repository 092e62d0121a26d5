"""S9 (shared/RELIABILITY.md): Redis is killed for 10 s under load, then restarted.

A real router (Redis registry and prefix index, each behind a circuit breaker) in front of 4
mock prefill workers holding real page pools (tests/doubles/mock_cache.py) and 2 mock decode
workers; ≥ 2,000 requests at concurrency 32, half of them from 8 shared-prefix groups: 500
before the outage, as many as run during it, then at least 500 after recovery. Must hold:
every request succeeds (the outage only degrades routing), the outage was seen (the breaker
opened, then closed), the restarted (empty) Redis index is rebuilt from the workers, the hit
ratio after recovery is ≥ 0.9 of its level before, the index credits no worker with pages it
does not hold, and nothing leaks.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import pytest

from kv_transfer.pages import Role, page_hashes
from pdserve.v1 import generation_pb2 as pb
from router.breaker import BreakerState
from tests.chaos.report import ScenarioResult, record
from tests.doubles.mock_worker import SMALL_LAYOUT, MockBehavior, MockWorker
from tests.doubles.router_cluster import router_cluster

MIN_REQUESTS = 2000
PHASE_REQUESTS = 500  # before the outage, and at least this many after recovery
CONCURRENCY = 32
OUTAGE_S = 10.0
GROUPS = 8
PREFIX_LEN = 64  # 16 pages of 4
PAGE_SIZE = SMALL_LAYOUT.page_size
CACHING = MockBehavior(cache_pages=256, prefill_s_per_token=0.0002)


@dataclass
class Tally:
    """Hit tokens over prompt tokens of the shared-prefix requests, per phase."""

    prompt: dict[str, int] = field(default_factory=dict)
    cached: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def add(self, phase: str, final: pb.Final, shared: bool) -> None:
        if shared:
            self.prompt[phase] = self.prompt.get(phase, 0) + final.usage.prompt_tokens
            self.cached[phase] = self.cached.get(phase, 0) + final.usage.cached_prompt_tokens

    def hit_ratio(self, phase: str) -> float:
        return self.cached.get(phase, 0) / max(self.prompt.get(phase, 0), 1)


def group_prompt(group: int) -> list[int]:
    return [1000 + 100 * group + i for i in range(PREFIX_LEN)]


def make_prompt(rng: random.Random, shared: bool) -> list[int]:
    suffix = [rng.randrange(3, 40000) for _ in range(8)]
    if shared:
        return group_prompt(rng.randrange(GROUPS)) + suffix
    return [rng.randrange(3, 40000) for _ in range(PREFIX_LEN)] + suffix


def outage_result(
    sent: int, tally: Tally, states: list[BreakerState], seconds: float
) -> ScenarioResult:
    """The table's row: the outage is verified once the breaker opened and closed again."""
    verified = BreakerState.OPEN in states and states[-1] is BreakerState.CLOSED
    result = ScenarioResult(
        "S9 Redis outage",
        requests=sent,
        ok=sent - len(tally.failures),
        faults_injected=1,
        faults_verified=int(verified),
        seconds=seconds,
    )
    result.failed_by_status.update(f"error {f.split(':')[0]}" for f in tally.failures)
    return result


async def until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.05)


def leading_held(worker: MockWorker, hashes: list[bytes]) -> int:
    """How many leading pages of `hashes` the worker's pool really holds."""
    held = set(worker.pool.snapshot()[0])
    return next((i for i, h in enumerate(hashes) if h not in held), len(hashes))


@pytest.mark.asyncio
async def test_redis_outage_fails_no_request_and_the_hit_ratio_recovers(
    smollm2_dir, redis_server, redis_url
):
    prefills = [MockWorker(f"p{i}", Role.PREFILL, CACHING) for i in range(4)]
    workers = [*prefills, MockWorker("d0", Role.DECODE), MockWorker("d1", Role.DECODE)]
    config = {"redis_url": redis_url, "redis_breaker_reset_s": 0.5, "registry_ttl_s": 30.0}
    async with router_cluster(smollm2_dir, workers, **config) as cluster:
        states: list[BreakerState] = []
        cluster.router.index.breaker.add_listener(lambda old, new: states.append(new))
        rng, tally, sent = random.Random(9), Tally(), 0
        phase, done = "before", asyncio.Event()

        async def client() -> None:
            nonlocal sent
            while not done.is_set():
                sent += 1
                shared = rng.random() < 0.5
                request = pb.GenerateRequest(
                    tokens=pb.TokenInput(token_ids=make_prompt(rng, shared)),
                    sampling=pb.SamplingParams(max_tokens=4),
                )
                current = phase
                try:
                    responses = await cluster.generate(request, timeout_s=30)
                except Exception as error:  # noqa: BLE001 - every failure is reported below
                    tally.failures.append(f"{current}: {error!r}")
                    continue
                tally.add(current, responses[-1].final, shared)

        async def fault() -> None:
            nonlocal phase
            await until(lambda: sent >= PHASE_REQUESTS)
            phase = "outage"
            redis_server.kill()
            await asyncio.sleep(OUTAGE_S)
            redis_server.restart()
            await asyncio.sleep(2.0)  # the breaker's trial closes it; the feed resyncs
            phase, recovered_at = "after", sent
            await until(lambda: sent >= max(MIN_REQUESTS, recovered_at + PHASE_REQUESTS))
            done.set()

        started = time.monotonic()
        await asyncio.gather(fault(), *(client() for _ in range(CONCURRENCY)))
        seconds = time.monotonic() - started
        assert seconds > OUTAGE_S
        record(outage_result(sent, tally, states, seconds))

        assert tally.failures == []
        assert BreakerState.OPEN in states and states[-1] is BreakerState.CLOSED
        assert tally.prompt.get("outage", 0) > 0, "no load ran during the outage"
        assert tally.hit_ratio("after") >= 0.9 * tally.hit_ratio("before") > 0.5

        for group in range(GROUPS):
            hashes = page_hashes(group_prompt(group), PAGE_SIZE)
            credited = await cluster.router.index.lookup(hashes)
            assert max(credited.values(), default=0) == len(hashes), "index not rebuilt"
            for worker in prefills:
                assert credited.get(worker.worker_id, 0) <= leading_held(worker, hashes)
        for worker in workers:
            worker.check_idle()
