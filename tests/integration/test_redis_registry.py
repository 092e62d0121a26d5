"""The Redis-shared worker registry: two router replicas on one real redis-server.

Each test plays replicas `a` and `b` (RedisRegistry instances on one URL) and drives them as
the router's monitor would: `register` on discovery, `update_load` after each good poll (the
heartbeat), `sync` once per round. Redis outages are real: the server is killed or paused.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from redis.asyncio import Redis

from kv_transfer.pages import KVLayout, Role, TransportBackend
from kv_transfer.topology import DeviceKind
from router.breaker import BreakerState, CircuitBreaker
from router.redis_registry import RedisRegistry
from router.registry import StaleEpoch, WorkerLoad, WorkerRecord
from tests.redis_server import RedisServer

LAYOUT = KVLayout(num_layers=2, num_kv_heads=1, head_dim=8, page_size=4, dtype="float32")
EPOCH = 1_700_000_000_000_000_000  # a time_ns epoch: beyond a float's exact integers
TTL_S = 0.5


def make_record(
    worker_id: str = "p0", epoch: int = EPOCH, role: Role = Role.PREFILL, **overrides
) -> WorkerRecord:
    return WorkerRecord(worker_id, role, "127.0.0.1:7001", epoch, LAYOUT, **overrides)


def make_breaker() -> CircuitBreaker:
    return CircuitBreaker("redis", failure_threshold=2, reset_timeout_s=0.2, call_timeout_s=0.2)


@asynccontextmanager
async def replicas(redis_url: str, ttl_s: float = 30.0) -> AsyncIterator[list[RedisRegistry]]:
    """Two router replicas sharing one Redis, each with its own breaker."""
    registries = [RedisRegistry(redis_url, ttl_s, breaker=make_breaker()) for _ in range(2)]
    try:
        yield registries
    finally:
        for registry in registries:
            registry.check_integrity()
            await registry.close()


async def stored_epoch(redis_url: str, worker_id: str) -> str | None:
    async with Redis.from_url(redis_url, decode_responses=True) as client:
        return await client.hget(f"pdserve:worker:{worker_id}", "epoch")


async def test_a_worker_registered_through_one_replica_appears_in_the_other(redis_url):
    """Every field survives the trip through Redis, down to the flags, backends and device."""
    record = make_record(
        node="n1",
        pid=4242,
        transport=TransportBackend.GLOO,
        kv_backends=frozenset(
            {TransportBackend.SHM, TransportBackend.CUDA_IPC, TransportBackend.GLOO}
        ),
        device=DeviceKind.CUDA,
        load=WorkerLoad(queue_len=3, pages_in_use=5, pages_total=64, draining=True),
    )
    async with replicas(redis_url) as (a, b):
        await a.register(record)
        assert await b.list_workers() == []
        assert await b.sync() == []
        assert await b.list_workers() == [record]
        assert await b.sync() == []  # a second round changes nothing
        assert await b.list_workers() == [record]


async def test_heartbeats_keep_a_record_past_its_ttl(redis_url):
    async with replicas(redis_url, ttl_s=TTL_S) as (a, b):
        await a.register(make_record())
        for queue_len in range(4):  # 0.8 s of heartbeats every 0.2 s: longer than the TTL
            await asyncio.sleep(0.2)
            assert await a.update_load("p0", EPOCH, WorkerLoad(queue_len=queue_len))
        assert await b.sync() == []
        assert [w.worker_id for w in await b.list_workers()] == ["p0"]


async def test_without_heartbeats_the_record_expires_and_sync_drops_the_worker(redis_url):
    async with replicas(redis_url, ttl_s=TTL_S) as (a, b):
        await a.register(make_record())
        await b.sync()
        await asyncio.sleep(TTL_S + 0.1)
        assert await b.sync() == ["p0"]
        assert await a.sync() == ["p0"]
        assert await a.list_workers() == await b.list_workers() == []


async def test_a_worker_heard_from_lately_survives_its_record_vanishing(redis_url, redis_server):
    """Redis may lose records (a restart, a flush); the next heartbeat writes them back."""
    async with replicas(redis_url) as (a, b):
        await a.register(make_record())
        redis_server.flush()
        assert await a.sync() == []
        assert await b.sync() == []
        assert await b.list_workers() == []
        assert await a.update_load("p0", EPOCH, WorkerLoad(queue_len=1))
        await b.sync()
        assert (await b.get("p0")).load == WorkerLoad(queue_len=1)


async def test_deregistration_propagates_and_heartbeats_do_not_revive_it(redis_url):
    async with replicas(redis_url) as (a, b):
        await a.register(make_record())
        await b.sync()
        assert await b.update_load("p0", EPOCH, WorkerLoad())  # b heard from it just now
        assert await a.deregister("p0", EPOCH)
        assert not await a.deregister("p0", EPOCH)  # idempotent
        assert await b.sync() == ["p0"]
        assert await b.list_workers() == []
        await a.register(make_record(epoch=EPOCH + 1))  # the worker's next incarnation
        await b.sync()
        assert [w.epoch for w in await b.list_workers()] == [EPOCH + 1]


async def test_a_heartbeat_of_a_retired_incarnation_is_refused(redis_url):
    async with replicas(redis_url) as (a, b):
        await a.register(make_record())
        await b.sync()
        await a.deregister("p0")
        assert await b.update_load("p0", EPOCH, WorkerLoad())  # b has not synced yet
        assert await a.sync() == []
        assert await a.list_workers() == []
        assert await b.sync() == ["p0"]


@pytest.mark.parametrize("old, new", [(EPOCH, EPOCH + 1), (9, 10)])  # 9 < 10, yet "9" > "10"
async def test_epochs_never_go_backwards_in_redis_or_locally(redis_url, old, new):
    async with replicas(redis_url) as (a, b):
        await a.register(make_record(epoch=new))
        with pytest.raises(StaleEpoch):
            await a.register(make_record(epoch=old))
        await b.register(make_record(epoch=old))  # b never heard of the newer one
        assert await stored_epoch(redis_url, "p0") == str(new)
        await b.sync()
        assert (await b.get("p0")).epoch == new
        assert not await b.update_load("p0", old, WorkerLoad())
        assert await stored_epoch(redis_url, "p0") == str(new)


async def test_an_older_record_in_redis_does_not_replace_a_newer_local_one(redis_url):
    async with replicas(redis_url) as (a, b):
        await a.register(make_record(epoch=EPOCH))
        for _ in range(b.breaker.failure_threshold):  # b cannot reach Redis for a while
            b.breaker.record_failure()
        await b.register(make_record(epoch=EPOCH + 1))
        b.breaker.record_success()
        assert await b.sync() == []
        assert (await b.get("p0")).epoch == EPOCH + 1
        assert await b.update_load("p0", EPOCH + 1, WorkerLoad())
        await a.sync()
        assert (await a.get("p0")).epoch == EPOCH + 1


async def test_a_killed_redis_changes_nothing_locally_and_recovery_needs_no_help(
    redis_url, redis_server: RedisServer, caplog
):
    async with replicas(redis_url) as (a, b):
        await a.register(make_record("p0"))
        redis_server.kill()
        with caplog.at_level(logging.WARNING, logger="router.redis_registry"):
            started_s = time.monotonic()
            await a.register(make_record("d0", role=Role.DECODE))
            for queue_len in range(5):
                assert await a.update_load("p0", EPOCH, WorkerLoad(queue_len=queue_len))
            assert await a.sync() == []
            assert time.monotonic() - started_s < 1.0
        assert a.breaker.state is BreakerState.OPEN
        assert [w.worker_id for w in await a.list_workers()] == ["d0", "p0"]
        assert len(caplog.records) == 1  # one line per outage, not one per call

        redis_server.restart()  # an empty Redis on the same port
        await asyncio.sleep(a.breaker.reset_timeout_s)
        for worker_id in ("p0", "d0"):  # one heartbeat each writes the whole record back
            assert await a.update_load(worker_id, EPOCH, WorkerLoad(queue_len=7))
        assert a.breaker.state is BreakerState.CLOSED
        assert await b.sync() == []
        assert [(w.worker_id, w.load.queue_len) for w in await b.list_workers()] == [
            ("d0", 7),
            ("p0", 7),
        ]


async def test_a_paused_redis_stalls_no_call_longer_than_the_call_timeout(
    redis_url, redis_server: RedisServer
):
    async with replicas(redis_url) as (a, _):
        await a.register(make_record())
        redis_server.pause()
        try:
            for _ in range(3):
                started_s = time.monotonic()
                assert await a.update_load("p0", EPOCH, WorkerLoad())
                assert time.monotonic() - started_s < a.breaker.call_timeout_s + 0.1
        finally:
            redis_server.resume()
        assert a.breaker.state is BreakerState.OPEN
