"""Prefix-aware routing end to end: a real router (its page-event feed, prefix index and
policy) in front of mock prefill workers that hold a real PagePool (tests/doubles/mock_cache.py).

Prompts of one group share a 32-token prefix (8 pages of 4); each adds its own 6 tokens. On
idle workers a prefix that nobody holds goes to its rendezvous-hash choice, which may be the
same worker for both groups; `spread_two_groups` therefore routes with no balance slack
(`prefix_balance_tokens=0`) and sends group 1 while group 0's prefill runs, so the cheaper,
idle worker takes it. After that only the index explains where each group goes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import grpc

from kv_transfer.pages import Role, page_hashes
from pdserve.v1 import generation_pb2 as pb
from pdserve.v1 import generation_pb2_grpc
from router.server import RouterServer
from tests.doubles.mock_worker import SMALL_LAYOUT, MockBehavior, MockWorker, WorkerMethod
from tests.doubles.router_cluster import RouterCluster, router_cluster

PAGE_SIZE = SMALL_LAYOUT.page_size
PREFIX_LEN = 32
PREFIX_PAGES = PREFIX_LEN // PAGE_SIZE
SUFFIX_LEN = 6
SLOW_PREFILL = MockBehavior(cache_pages=64, prefill_s_per_token=0.004)  # ~150 ms a prompt


def prompt(group: int, variant: int, suffix_len: int = SUFFIX_LEN) -> list[int]:
    prefix = [1000 + 100 * group + i for i in range(PREFIX_LEN)]
    return prefix + [5000 + 10 * variant + i for i in range(suffix_len)]


def request(token_ids: Sequence[int]) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        tokens=pb.TokenInput(token_ids=token_ids), sampling=pb.SamplingParams(max_tokens=2)
    )


def workers(behavior: MockBehavior = SLOW_PREFILL, num_prefill: int = 2) -> list[MockWorker]:
    prefills = [MockWorker(f"p{i}", Role.PREFILL, behavior) for i in range(num_prefill)]
    return [*prefills, MockWorker("d0", Role.DECODE)]


async def final(stub: generation_pb2_grpc.GenerationStub, token_ids: Sequence[int]) -> pb.Final:
    responses = [r async for r in stub.Generate(request(token_ids), timeout=20)]
    return responses[-1].final


async def credited(router: RouterServer, token_ids: Sequence[int]) -> dict[str, int]:
    """{worker_id: leading pages of the prompt} as the router's prefix index has it now."""
    return await router.index.lookup(page_hashes(list(token_ids), PAGE_SIZE))


async def until_credited(
    router: RouterServer, token_ids: Sequence[int], expected: dict[str, int], timeout_s: float = 5
) -> None:
    """Waits until the index says `expected` for the prompt (page events arrive async)."""
    deadline = time.monotonic() + timeout_s
    while (found := await credited(router, token_ids)) != expected:
        assert time.monotonic() < deadline, f"index has {found}, expected {expected}"
        await asyncio.sleep(0.01)


async def until_idle(router: RouterServer, timeout_s: float = 5) -> None:
    """Waits until the router's last reports show no queued prefill anywhere: a report taken
    while a prefill ran would otherwise outweigh a short prompt's hit for one poll period."""
    deadline = time.monotonic() + timeout_s
    while any(w.load.queued_prefill_tokens for w in await router.registry.list_workers()):
        assert time.monotonic() < deadline, "workers still report queued prefill tokens"
        await asyncio.sleep(0.01)


NO_SLACK = {"prefix_balance_tokens": 0}


async def spread_two_groups(cluster: RouterCluster) -> dict[int, str]:
    """Group 0's first prompt, then group 1's while group 0's prefill runs; waits until the
    index credits each group's prefix to the worker that computed it. Returns the owners."""
    first = asyncio.create_task(final(cluster.stub, prompt(0, 0)))
    prefills = [w for w in cluster.workers.values() if w.role is Role.PREFILL]
    while not any(w.calls_of(WorkerMethod.PREFILL) for w in prefills):
        await asyncio.sleep(0.005)
    second = await final(cluster.stub, prompt(1, 0))
    owners = {0: (await first).prefill_worker_id, 1: second.prefill_worker_id}
    assert owners[0] != owners[1], owners
    for group, owner in owners.items():
        await until_credited(cluster.router, prompt(group, 1), {owner: PREFIX_PAGES})
    await until_idle(cluster.router)
    return owners


async def test_a_shared_prefix_goes_where_it_is_cached(smollm2_dir: Path):
    async with router_cluster(smollm2_dir, workers(), **NO_SLACK) as cluster:
        owners = await spread_two_groups(cluster)
        for group, owner in ((1, owners[1]), (0, owners[0])):
            await until_idle(cluster.router)
            result = await final(cluster.stub, prompt(group, 1))
            assert result.prefill_worker_id == owner
            assert result.usage.cached_prompt_tokens == PREFIX_LEN
        for worker in cluster.workers.values():
            worker.check_idle()


async def test_round_robin_ignores_where_a_prefix_is_cached(smollm2_dir: Path):
    async with router_cluster(smollm2_dir, workers(), routing_policy="round_robin") as cluster:
        for group, owner in ((0, "p0"), (1, "p1")):  # turns 0 and 1
            assert (await final(cluster.stub, prompt(group, 0))).prefill_worker_id == owner
            await until_credited(cluster.router, prompt(group, 1), {owner: PREFIX_PAGES})
        # Turns 2 and 3 swap them although the index knows better.
        for group, other in ((1, "p0"), (0, "p1")):
            result = await final(cluster.stub, prompt(group, 1))
            assert (result.prefill_worker_id, result.usage.cached_prompt_tokens) == (other, 0)


@asynccontextmanager
async def another_router(cluster: RouterCluster, **config: object) -> AsyncIterator[RouterServer]:
    """A second router in front of the same workers, serving on its own port."""
    base = cluster.router.config
    router = RouterServer(base.model_copy(update={"port": 0, **config}))
    for worker in cluster.workers.values():
        await router.add_worker(worker.address)
    await router.start()
    try:
        yield router
    finally:
        await router.stop(0)


async def test_two_routers_sharing_redis_make_one_choice(smollm2_dir: Path, redis_url: str):
    async with router_cluster(smollm2_dir, workers(), redis_url=redis_url, **NO_SLACK) as cluster:
        owners = await spread_two_groups(cluster)
        async with another_router(cluster) as second:
            # The shared index already holds what the first router's feed applied.
            assert await credited(second, prompt(1, 1)) == {owners[1]: PREFIX_PAGES}
            async with grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
                stub = generation_pb2_grpc.GenerationStub(channel)
                for group, owner in ((1, owners[1]), (0, owners[0])):
                    await until_idle(second)
                    via_second = await final(stub, prompt(group, 2))
                    await until_idle(cluster.router)
                    via_first = await final(cluster.stub, prompt(group, 2))
                    assert via_second.prefill_worker_id == via_first.prefill_worker_id == owner
                    assert via_second.usage.cached_prompt_tokens == PREFIX_LEN


async def test_an_evicted_prefix_is_no_longer_credited(smollm2_dir: Path):
    # 10 pages: one 9-page prompt fits, a second one (10 pages) evicts all of it.
    tiny_cache = MockBehavior(cache_pages=10)
    async with router_cluster(smollm2_dir, workers(tiny_cache, num_prefill=1)) as cluster:
        first = prompt(0, 0, suffix_len=4)
        assert (await final(cluster.stub, first)).usage.cached_prompt_tokens == 0
        await until_credited(cluster.router, first, {"p0": 9})
        other = prompt(1, 0, suffix_len=8)
        assert (await final(cluster.stub, other)).usage.cached_prompt_tokens == 0
        await until_credited(cluster.router, first, {})
        assert (await final(cluster.stub, first)).usage.cached_prompt_tokens == 0
        cluster.workers["p0"].check_idle()
