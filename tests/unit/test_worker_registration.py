"""A `pdserve worker`'s own registration (pdserve/registration.py) against an in-memory registry
and a mock worker's real GetStats: the record routers adopt, its refreshes, its end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from kv_transfer.pages import Role, TransportBackend
from kv_transfer.topology import DeviceKind
from pdserve.registration import WorkerRegistration
from router.redis_registry import record_from_fields, record_to_fields
from router.registry import InMemoryRegistry
from router.worker_client import WorkerClients
from tests.doubles.mock_behavior import MockBehavior
from tests.doubles.mock_worker import SMALL_LAYOUT, MockWorker


@asynccontextmanager
async def registered_worker(
    worker: MockWorker, refresh_s: float = 60.0
) -> AsyncIterator[tuple[WorkerRegistration, InMemoryRegistry]]:
    """The worker serving, and a registration reading its stats as `pdserve worker` does."""
    registry = InMemoryRegistry()
    clients = WorkerClients(max_message_bytes=2**20, overload_retry_after_s=0.5)
    await worker.start()
    try:

        async def read_stats():
            return await clients.get_stats(worker.address, 1.0)

        yield WorkerRegistration(registry, read_stats, refresh_s), registry
    finally:
        await clients.close()
        await worker.stop()
        registry.check_integrity()


def decode_worker(**behavior) -> MockWorker:
    kv_backends = (TransportBackend.SHM, TransportBackend.GLOO)
    return MockWorker(
        "decode-pod-1", Role.DECODE, MockBehavior(kv_backends=kv_backends, **behavior), epoch=7
    )


async def test_the_record_is_the_workers_own_report():
    """What routers need before their first poll: identity, address, layout, backends."""
    worker = decode_worker(num_pages=64)
    async with registered_worker(worker) as (registration, registry):
        written = await registration.register()
        stored = await registry.get("decode-pod-1")
    assert stored == written == registration.record
    assert (stored.role, stored.address, stored.epoch) == (Role.DECODE, worker.address, 7)
    assert (stored.layout, stored.node, stored.pid) == (SMALL_LAYOUT, "mock-node", 1234)
    assert stored.kv_backends == {TransportBackend.SHM, TransportBackend.GLOO}
    assert (stored.load.pages_total, stored.alive) == (64, True)


async def test_the_record_survives_the_trip_through_redis_fields():
    """The same hash a router writes (record_to_fields), read back whole by other routers."""
    async with registered_worker(decode_worker()) as (registration, _):
        record = await registration.register()
    assert record_from_fields(record_to_fields(record)) == record


async def test_a_refresh_writes_the_load_now():
    worker = decode_worker()
    async with registered_worker(worker) as (registration, registry):
        first = await registration.register()
        worker.draining = True
        worker.leases["t1"] = [0, 1]
        await registration.refresh()
        stored = await registry.get("decode-pod-1")
    assert (stored.load.draining, stored.load.leases_outstanding) == (True, 1)
    assert stored.epoch == first.epoch and stored.last_seen_s >= first.last_seen_s


async def test_a_new_epoch_at_the_address_is_registered_afresh():
    worker = decode_worker()
    async with registered_worker(worker) as (registration, registry):
        await registration.register()
        worker.epoch = 8
        await registration.refresh()
        assert (await registry.get("decode-pod-1")).epoch == 8
        assert registration.record.epoch == 8


async def test_a_refresh_brings_back_a_record_a_router_removed():
    """The live worker is the authority on its liveness (a router may have lost sight of it)."""
    async with registered_worker(decode_worker()) as (registration, registry):
        await registration.register()
        await registry.deregister("decode-pod-1")  # a router that could not reach it
        await registration.refresh()
        assert (await registry.get("decode-pod-1")).epoch == 7


async def test_keep_alive_refreshes_on_its_period():
    worker = decode_worker()
    async with registered_worker(worker, refresh_s=0.02) as (registration, registry):
        await registration.register()
        refreshing = asyncio.create_task(registration.keep_alive(is_lost=_never_lost))
        worker.draining = True
        await asyncio.sleep(0.2)
        assert (await registry.get("decode-pod-1")).load.draining
        assert not refreshing.done()
        refreshing.cancel()
        await asyncio.gather(refreshing, return_exceptions=True)


async def test_keep_alive_ends_when_the_worker_is_lost_and_not_before():
    """A failed GetStats alone is not a loss (a busy worker); `is_lost` decides."""
    worker = decode_worker()
    verdicts = [False, True]
    asked: list[bool] = []

    async def is_lost() -> bool:
        asked.append(verdicts[len(asked)])
        return asked[-1]

    async with registered_worker(worker, refresh_s=0.02) as (registration, _):
        await registration.register()
        await worker.stop()  # GetStats fails from now on
        await asyncio.wait_for(registration.keep_alive(is_lost), timeout=5)
    assert asked == [False, True]


async def test_deregister_removes_the_record_once():
    async with registered_worker(decode_worker()) as (registration, registry):
        await registration.register()
        await registration.deregister()
        await registration.deregister()  # nothing left to retire: no error
        assert await registry.get("decode-pod-1") is None
        assert registration.record is None


async def _never_lost() -> bool:
    return False


async def test_a_record_naming_a_backend_this_router_does_not_know_still_reads():
    """A newer worker's record (rolling upgrade) pairs over the backends both know."""
    async with registered_worker(decode_worker()) as (registration, _):
        fields = record_to_fields(await registration.register())
    fields["kv_backends"] = "rdma-of-the-future,shm,tcp"
    assert record_from_fields(fields).kv_backends == {TransportBackend.SHM, TransportBackend.TCP}


async def test_a_worker_on_cuda_is_recorded_on_cuda_through_redis_fields_too():
    """Its device is what makes the router pair it over cuda_ipc with another on its node."""
    async with registered_worker(decode_worker(device="cuda")) as (registration, _):
        record = await registration.register()
    assert record.device is DeviceKind.CUDA
    assert record_from_fields(record_to_fields(record)).device is DeviceKind.CUDA


@pytest.mark.parametrize("device", ["", "tpu-of-the-future"])
async def test_a_worker_reporting_no_device_or_an_unknown_one_is_recorded_on_cpu(device):
    """A worker older than the field sends none, a newer one may name a device this router
    does not know: either still registers (rolling upgrade), as a CPU worker."""
    async with registered_worker(decode_worker(device=device)) as (registration, _):
        assert (await registration.register()).device is DeviceKind.CPU


@pytest.mark.parametrize("device", [None, "tpu-of-the-future"])
async def test_a_redis_record_without_a_known_device_reads_as_cpu(device):
    """Written by a replica older than the field (no device) or newer (one unknown here)."""
    async with registered_worker(decode_worker(device="cuda")) as (registration, _):
        fields = record_to_fields(await registration.register())
    fields.pop("device")
    if device is not None:
        fields["device"] = device
    assert record_from_fields(fields).device is DeviceKind.CPU
