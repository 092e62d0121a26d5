"""The in-memory worker registry: epochs, load reports, liveness, copies."""

from __future__ import annotations

import pytest

from kv_transfer.pages import KVLayout, Role
from router.registry import InMemoryRegistry, StaleEpoch, WorkerLoad, WorkerRecord

LAYOUT = KVLayout(num_layers=2, num_kv_heads=1, head_dim=8, page_size=4, dtype="float32")


def make_record(worker_id: str = "p0", epoch: int = 5, address: str = "h:1") -> WorkerRecord:
    return WorkerRecord(worker_id, Role.PREFILL, address, epoch=epoch, layout=LAYOUT)


async def test_newer_epoch_replaces_and_older_epoch_is_refused():
    registry = InMemoryRegistry()
    await registry.register(make_record(epoch=5))
    await registry.register(make_record(epoch=6, address="h:2"))
    with pytest.raises(StaleEpoch):
        await registry.register(make_record(epoch=4))
    known = await registry.get("p0")
    assert (known.epoch, known.address) == (6, "h:2")
    registry.check_integrity()


async def test_load_reports_of_another_epoch_are_ignored():
    registry = InMemoryRegistry()
    await registry.register(make_record(epoch=5))
    assert not await registry.update_load("p0", 4, WorkerLoad(queue_len=9))
    assert await registry.update_load("p0", 5, WorkerLoad(queue_len=2, pages_total=10))
    assert (await registry.get("p0")).load == WorkerLoad(queue_len=2, pages_total=10)
    assert not await registry.update_load("ghost", 5, WorkerLoad())


async def test_dead_worker_is_revived_by_its_next_report():
    registry = InMemoryRegistry()
    await registry.register(make_record())
    assert await registry.mark_dead("p0", 5)
    assert not (await registry.get("p0")).alive
    await registry.update_load("p0", 5, WorkerLoad())
    assert (await registry.get("p0")).alive


async def test_records_handed_out_are_copies():
    registry = InMemoryRegistry()
    await registry.register(make_record())
    (listed,) = await registry.list_workers()
    listed.load.queue_len = 99
    listed.alive = False
    known = await registry.get("p0")
    assert (known.load.queue_len, known.alive) == (0, True)


async def test_deregister_is_idempotent_and_epoch_guarded():
    registry = InMemoryRegistry()
    await registry.register(make_record("b", epoch=2))
    await registry.register(make_record("a", epoch=1))
    assert [w.worker_id for w in await registry.list_workers()] == ["a", "b"]
    assert not await registry.deregister("b", epoch=1)
    assert await registry.deregister("b")
    assert not await registry.deregister("b")
    assert [w.worker_id for w in await registry.list_workers()] == ["a"]
