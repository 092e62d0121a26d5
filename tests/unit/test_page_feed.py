"""The router's page-event feed (fake worker streams, real in-memory index) and in-flight load."""

from __future__ import annotations

import asyncio

import pytest

from kv_transfer.pages import KVLayout, Role
from router.errors import WorkerUnavailable
from router.inflight import InFlightLoad
from router.page_feed import PageEventFeed
from router.prefix_index import EventBatch, IndexEvent, InMemoryPrefixIndex
from router.registry import WorkerLoad, WorkerRecord

LAYOUT = KVLayout(num_layers=2, num_kv_heads=1, head_dim=8, page_size=4, dtype="float32")


def worker(worker_id: str, epoch: int = 1, alive: bool = True) -> WorkerRecord:
    return WorkerRecord(worker_id, Role.PREFILL, f"{worker_id}:1", epoch, LAYOUT, alive=alive)


class FakeStreams:
    """Each watch call gets the next scripted list of batches, then hangs (a live stream)."""

    def __init__(self, scripts: dict[str, list[list[EventBatch] | Exception]]) -> None:
        self.scripts = scripts
        self.calls: list[tuple[str, int, int]] = []

    async def watch_page_events(self, worker_id, address, epoch, after_seq):
        self.calls.append((worker_id, epoch, after_seq))
        script = self.scripts[worker_id]
        step = script.pop(0) if script else []
        if isinstance(step, Exception):
            raise step
        for batch in step:
            yield batch
        await asyncio.Event().wait()


def batch(worker_id, epoch, seqs, reset=False, hashes=None) -> EventBatch:
    hashes = hashes or [bytes([s]) for s in seqs]
    events = tuple(IndexEvent(True, h, s) for h, s in zip(hashes, seqs, strict=True))
    return EventBatch(worker_id, epoch, events, seqs[-1] if seqs else 0, reset)


async def settle(condition, timeout_s: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_feed_applies_a_snapshot_then_live_events_and_purges_removed_workers():
    index = InMemoryPrefixIndex(ttl_s=60)
    streams = FakeStreams(
        {"w": [[batch("w", 1, [5], reset=True, hashes=[b"a"]), batch("w", 1, [6])]]}
    )
    feed = PageEventFeed(index, streams, retry_s=0.01)
    await feed.sync([worker("w")])
    await settle(lambda: streams.calls)
    assert streams.calls[0] == ("w", 0, 0)  # no cursor yet: asks for a snapshot
    await asyncio.sleep(0.05)
    assert await index.lookup([b"a"]) == {"w": 1}
    assert await index.lookup([b"\x06"]) == {"w": 1}
    await feed.sync([])
    assert feed.followed == []
    assert await index.lookup([b"a"]) == {}


@pytest.mark.asyncio
async def test_a_gap_or_a_failed_stream_reconnects_and_resyncs():
    index = InMemoryPrefixIndex(ttl_s=60)
    script = [
        [batch("w", 1, [1], reset=True), batch("w", 1, [4])],  # 2 and 3 missing: a gap
        WorkerUnavailable("restarting"),
        [batch("w", 1, [4], reset=True, hashes=[b"z"])],
    ]
    streams = FakeStreams({"w": script})
    feed = PageEventFeed(index, streams, retry_s=0.01)
    await feed.sync([worker("w")])
    await settle(lambda: len(streams.calls) >= 3)
    assert [call[1:] for call in streams.calls[:3]] == [(0, 0), (0, 0), (0, 0)]
    await settle(lambda: not script)
    await asyncio.sleep(0.05)
    assert await index.lookup([b"z"]) == {"w": 1}
    await feed.stop()


@pytest.mark.asyncio
async def test_a_restarted_worker_is_followed_under_its_new_epoch():
    index = InMemoryPrefixIndex(ttl_s=60)
    streams = FakeStreams(
        {"w": [[batch("w", 1, [1], reset=True)], [batch("w", 2, [1], reset=True, hashes=[b"n"])]]}
    )
    feed = PageEventFeed(index, streams, retry_s=0.01)
    await feed.sync([worker("w", epoch=1)])
    await settle(lambda: len(streams.calls) == 1)
    await feed.sync([worker("w", epoch=2)])
    await settle(lambda: len(streams.calls) == 2)
    await asyncio.sleep(0.05)
    assert await index.lookup([b"\x01"]) == {}  # the old epoch's entries were replaced
    assert await index.lookup([b"n"]) == {"w": 1}
    await feed.stop()


def polled(queued: int, running: int) -> list[WorkerRecord]:
    record = worker("p1")
    record.load = WorkerLoad(queued_prefill_tokens=queued, running=running)
    return [record]


def loads(records: list[WorkerRecord]) -> list[tuple[int, int]]:
    return [(w.load.queued_prefill_tokens, w.load.running) for w in records]


def test_in_flight_load_counts_ours_now_plus_the_others_as_last_reported():
    inflight = InFlightLoad()
    with inflight.prefilling("p1", 20), inflight.decoding("p1"):
        assert loads(inflight.overlay(polled(50, 1))) == [(70, 2)]  # no report noted yet
        inflight.note_report("p1")  # the report (50, 1) included our 20 tokens and 1 stream
        assert loads(inflight.overlay(polled(50, 1))) == [(50, 1)]
        assert not inflight.is_idle
    assert loads(inflight.overlay(polled(50, 1))) == [(30, 0)]  # ours finished since
    assert inflight.is_idle


def test_a_request_moved_to_another_decode_worker_counts_there():
    inflight = InFlightLoad()
    with inflight.decoding("d0") as move:
        assert inflight.has_work("d0") and not inflight.has_work("d1")
        move("d1")
        assert inflight.has_work("d1") and not inflight.has_work("d0")
    assert inflight.is_idle
