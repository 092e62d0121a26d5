"""Discovery through the shared registry, as on Kubernetes: a router started with no workers
finds the ones that registered themselves (pdserve/registration.py, what `pdserve worker` runs),
polls them, follows their page events and routes to them; a retired or expired record takes
the worker out. Real redis-server, mock workers over loopback gRPC, a real RouterServer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from kv_transfer.pages import Role
from pdserve.channels import open_aio_channel
from pdserve.registration import WorkerRegistration
from pdserve.v1 import generation_pb2 as pb
from pdserve.v1 import generation_pb2_grpc
from router.config import RouterConfig
from router.redis_registry import RedisRegistry
from router.server import RouterServer
from router.tokenizer import Tokenizer
from router.worker_client import WorkerClients
from tests.doubles.mock_worker import MockBehavior, MockWorker, WorkerMethod, mock_token

TTL_S = 1.0
PROMPT = "Tell me a story about a llama who learned to serve language models."


@dataclass(slots=True)
class SelfRegistered:
    """A mock worker and the registration its `pdserve worker` process would hold (registered
    once; these tests refresh nothing themselves, so every later GetStats is a router's)."""

    worker: MockWorker
    registration: WorkerRegistration
    registry: RedisRegistry


@asynccontextmanager
async def self_registered(
    redis_url: str, workers: list[MockWorker]
) -> AsyncIterator[list[SelfRegistered]]:
    clients = WorkerClients(max_message_bytes=2**20, overload_retry_after_s=0.5)
    entries = []
    try:
        for worker in workers:
            await worker.start()
            registry = RedisRegistry(redis_url, TTL_S)
            reader = _stats_reader(clients, worker)
            entries.append(
                SelfRegistered(worker, WorkerRegistration(registry, reader, 0.2), registry)
            )
            await entries[-1].registration.register()
        yield entries
    finally:
        for entry in entries:
            await entry.registry.close()
            await entry.worker.stop()
        await clients.close()


def _stats_reader(clients: WorkerClients, worker: MockWorker):
    return lambda: clients.get_stats(worker.address, 1.0)


@asynccontextmanager
async def empty_router(model_dir: Path, redis_url: str) -> AsyncIterator[RouterServer]:
    """A router as `pdserve router` starts one: no worker added, Redis its only source."""
    config = RouterConfig(
        model_dir=model_dir,
        port=0,
        redis_url=redis_url,
        registry_ttl_s=TTL_S,
        stats_poll_period_s=0.05,
        colocate_threshold_tokens=0,
    )
    router = RouterServer(config)
    await router.start()
    try:
        yield router
    finally:
        await router.stop(0)


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def listed(router: RouterServer) -> list[str]:
    return [worker.worker_id for worker in await router.registry.list_workers()]


async def server_info(router: RouterServer) -> list[str]:
    channel = open_aio_channel(f"127.0.0.1:{router.port}", None, None, 2**20)
    async with channel:
        info = await generation_pb2_grpc.GenerationStub(channel).GetServerInfo(
            pb.GetServerInfoRequest(), timeout=5
        )
    return sorted(worker.worker_id for worker in info.workers)


async def generate(router: RouterServer, max_tokens: int) -> list[int]:
    channel = open_aio_channel(f"127.0.0.1:{router.port}", None, None, 2**20)
    request = pb.GenerateRequest(prompt=PROMPT, sampling=pb.SamplingParams(max_tokens=max_tokens))
    async with channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        responses = [r async for r in stub.Generate(request, timeout=10)]
    assert responses[-1].final.finish_reason == pb.FINISH_REASON_LENGTH
    return [t for r in responses[:-1] for t in r.chunk.token_ids]


def pair() -> list[MockWorker]:
    return [
        MockWorker("prefill-pod-a", Role.PREFILL, MockBehavior(cache_pages=64)),
        MockWorker("decode-pod-b", Role.DECODE),
    ]


async def test_a_router_with_no_workers_adopts_polls_follows_and_routes(smollm2_dir, redis_url):
    async with empty_router(smollm2_dir, redis_url) as router:
        assert await listed(router) == []
        async with self_registered(redis_url, pair()) as entries:
            prefill, decode = (entry.worker for entry in entries)

            async def followed() -> bool:
                return router.feed.followed == ["decode-pod-b", "prefill-pod-a"]

            await eventually(followed)
            assert await server_info(router) == ["decode-pod-b", "prefill-pod-a"]
            prompt_ids = Tokenizer.from_dir(smollm2_dir).encode(PROMPT)
            tokens = await generate(router, max_tokens=6)
            assert tokens == [mock_token(prompt_ids, i, 49152, (2,)) for i in range(6)]
            assert prefill.calls_of(WorkerMethod.PREFILL) and decode.calls_of(WorkerMethod.DECODE)

            async def polled() -> bool:  # by the router: the registrations read stats once
                return len(decode.calls_of(WorkerMethod.GET_STATS)) > 3

            await eventually(polled)
            assert prefill.calls_of(WorkerMethod.WATCH_PAGE_EVENTS)


async def test_a_retired_record_takes_a_live_worker_out_for_good(smollm2_dir, redis_url):
    """What SIGTERM on `pdserve worker` does after the drain: the router drops it at its next
    sync, and its own polls of the still-reachable worker do not bring it back."""
    async with empty_router(smollm2_dir, redis_url) as router:
        async with self_registered(redis_url, pair()) as entries:
            await eventually(lambda: _has(router, 2))
            await entries[1].registration.deregister()
            await eventually(lambda: _has(router, 1))
            await asyncio.sleep(5 * 0.05)  # several more rounds
            assert await server_info(router) == ["prefill-pod-a"]
            assert "decode-pod-b" not in router.feed.followed


async def test_a_worker_gone_without_deregistering_is_dropped_after_the_ttl(smollm2_dir, redis_url):
    async with empty_router(smollm2_dir, redis_url) as router:
        async with self_registered(redis_url, pair()) as entries:
            await eventually(lambda: _has(router, 2))
            killed_s = time.monotonic()
            await entries[1].worker.stop()  # its process died: no refresh, no deregister
            await eventually(lambda: _has(router, 1), timeout_s=TTL_S + 4)
            assert time.monotonic() - killed_s >= TTL_S * 0.9
            assert await server_info(router) == ["prefill-pod-a"]


async def _has(router: RouterServer, count: int) -> bool:
    return len(await listed(router)) == count


async def test_a_live_worker_retired_by_a_router_is_revived_by_its_next_refresh(
    smollm2_dir, redis_url
):
    """A router that could not reach a worker for a TTL (a partition) retires its record;
    the worker, still alive and refreshing, is the authority: every router lists it again."""
    async with empty_router(smollm2_dir, redis_url) as router:
        async with self_registered(redis_url, pair()) as entries:
            await eventually(lambda: _has(router, 2))
            partitioned = RedisRegistry(redis_url, TTL_S)
            try:
                await partitioned.sync()
                await partitioned.deregister("decode-pod-b")  # as its monitor would
                await eventually(lambda: _has(router, 1))
                refreshing = asyncio.create_task(entries[1].registration.keep_alive(_never_lost))
                await eventually(lambda: _has(router, 2))  # its next refresh (0.2 s)
                refreshing.cancel()
                await asyncio.gather(refreshing, return_exceptions=True)
            finally:
                await partitioned.close()


async def _never_lost() -> bool:
    return False
