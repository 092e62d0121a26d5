"""The worker monitor over loopback gRPC against a mock worker: load, death, new epochs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from kv_transfer.pages import Role
from router.monitor import WorkerMonitor
from router.registry import InMemoryRegistry, WorkerRecord
from router.worker_client import WorkerClients
from tests.doubles.mock_worker import SMALL_LAYOUT, MockWorker


@asynccontextmanager
async def monitoring(
    registry: InMemoryRegistry,
    rounds: list[list[WorkerRecord]],
    drop_dead_after_s: float = float("inf"),
) -> AsyncIterator[WorkerMonitor]:
    """A monitor that never polls on its own (period 60 s); tests call poll_once."""

    async def on_round(snapshot: list[WorkerRecord]) -> None:
        rounds.append(snapshot)

    clients = WorkerClients(max_message_bytes=2**20, overload_retry_after_s=0.5)
    try:
        yield WorkerMonitor(
            registry,
            clients,
            period_s=60,
            dead_after_failures=2,
            rpc_timeout_s=1,
            on_round=on_round,
            drop_dead_after_s=drop_dead_after_s,
        )
    finally:
        await clients.close()


@asynccontextmanager
async def running(worker: MockWorker) -> AsyncIterator[MockWorker]:
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop()


async def test_discover_registers_the_identity_the_worker_reports():
    registry = InMemoryRegistry()
    async with running(MockWorker("d7", Role.DECODE, epoch=42)) as worker:
        async with monitoring(registry, []) as monitor:
            record = await monitor.discover(worker.address)
    assert (record.worker_id, record.role, record.epoch) == ("d7", Role.DECODE, 42)
    assert (record.address, record.layout, record.pid) == (worker.address, SMALL_LAYOUT, 1234)
    assert await registry.get("d7") == record


async def test_a_poll_updates_the_load_the_worker_reports():
    registry, rounds = InMemoryRegistry(), []
    async with running(MockWorker("p0", Role.PREFILL)) as worker:
        async with monitoring(registry, rounds) as monitor:
            await monitor.discover(worker.address)
            worker.leases["t1"] = worker.pool.allocate(3)
            (polled,) = await monitor.poll_once()
    assert (polled.load.pages_in_use, polled.load.leases_outstanding) == (3, 1)
    assert polled.load.pages_total == 256
    assert rounds == [[polled]]


async def test_a_silent_worker_is_marked_dead_after_consecutive_failures():
    registry = InMemoryRegistry()
    async with monitoring(registry, []) as monitor:
        async with running(MockWorker("p0", Role.PREFILL)) as worker:
            await monitor.discover(worker.address)
        (first,) = await monitor.poll_once()
        (second,) = await monitor.poll_once()
    assert (first.alive, second.alive) == (True, False)  # dead_after_failures=2


async def test_a_worker_dead_past_the_limit_is_dropped_and_reported_gone():
    registry, rounds = InMemoryRegistry(), []
    async with monitoring(registry, rounds, drop_dead_after_s=0.2) as monitor:
        async with running(MockWorker("p0", Role.PREFILL)) as worker:
            await monitor.discover(worker.address)
        assert [w.alive for w in await monitor.poll_once()] == [True]
        assert [w.alive for w in await monitor.poll_once()] == [False]  # seen < 0.2 s ago
        await asyncio.sleep(0.25)
        assert await monitor.poll_once() == []
    assert await registry.get("p0") is None and rounds[-1] == []


async def test_a_newer_epoch_at_the_same_address_is_re_registered():
    registry = InMemoryRegistry()
    async with running(MockWorker("p0", Role.PREFILL, epoch=1)) as worker:
        async with monitoring(registry, []) as monitor:
            await monitor.discover(worker.address)
            worker.epoch = 2  # the process restarted
            (polled,) = await monitor.poll_once()
    assert (polled.epoch, polled.alive) == (2, True)


async def test_a_draining_worker_that_goes_away_is_dropped_at_its_first_failed_poll():
    """A SIGTERM drains a worker and ends its process: no registry_ttl_s wait for it."""
    registry, rounds = InMemoryRegistry(), []
    async with monitoring(registry, rounds) as monitor:
        async with running(MockWorker("d0", Role.DECODE)) as worker:
            await monitor.discover(worker.address)
            worker.draining = True
            (polled,) = await monitor.poll_once()
            assert polled.load.draining and not polled.routable
        assert await monitor.poll_once() == []
    assert await registry.get("d0") is None and rounds[-1] == []


async def test_a_serving_worker_that_goes_away_is_only_counted_as_failed():
    registry = InMemoryRegistry()
    async with monitoring(registry, []) as monitor:
        async with running(MockWorker("d0", Role.DECODE)) as worker:
            await monitor.discover(worker.address)
        (polled,) = await monitor.poll_once()
    assert (polled.worker_id, polled.alive) == ("d0", True)  # dead_after_failures=2


async def test_stop_ends_a_monitor_whose_round_lost_the_cancel():
    """Python 3.11's asyncio.wait_for, which redis-py's writes go through, can lose a cancel
    that lands as its call returns: the round goes on, and one cancel left the monitor
    polling forever and `stop` (RouterServer.stop) waiting on it forever."""
    lost, in_round = [], asyncio.Event()

    async def on_round(snapshot: list[WorkerRecord]) -> None:
        if lost:
            return  # later rounds: quick, as rounds over no worker are
        in_round.set()
        try:
            await asyncio.Event().wait()  # the first round is mid-call when stop comes
        except asyncio.CancelledError:
            lost.append(True)  # ... and its cancel is lost

    clients = WorkerClients(max_message_bytes=2**20, overload_retry_after_s=0.5)
    monitor = WorkerMonitor(InMemoryRegistry(), clients, 0.01, 2, 1, on_round=on_round)
    monitor.start()
    await in_round.wait()
    async with asyncio.timeout(2):
        await monitor.stop()
    assert lost == [True]
    assert [t for t in asyncio.all_tasks() if t.get_name() == "worker-monitor"] == []
    await clients.close()
