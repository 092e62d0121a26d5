"""A worker's page-event log and its WatchPageEvents stream: catch-up, follow, resync."""

from __future__ import annotations

import threading

from engine.page_pool import PageEvent, PageEventKind, PagePool
from pdserve.page_events import PageEventLog, watch
from pdserve.v1 import worker_pb2

EPOCH = 7


def stored(seq: int, page_hash: bytes = b"") -> PageEvent:
    return PageEvent(PageEventKind.STORED, page_hash or bytes([seq]), seq)


def request(epoch: int = EPOCH, after_seq: int = 0) -> worker_pb2.WatchPageEventsRequest:
    return worker_pb2.WatchPageEventsRequest(epoch=epoch, after_seq=after_seq)


def first_batches(log, snapshot, req, count):
    """The first `count` batches of a watch stream, then the stream is abandoned."""
    batches = []
    stream = watch(log, snapshot, EPOCH, req, lambda: len(batches) < count, poll_s=0.01)
    for batch in stream:
        batches.append(batch)
    return batches


def never_snapshot():
    raise AssertionError("no snapshot expected")


def test_read_after_returns_kept_events_and_none_once_they_are_gone():
    log = PageEventLog(capacity=3)
    for seq in range(1, 6):
        log.append(stored(seq))
    assert [e.seq for e in log.read_after(2, 0, 10)] == [3, 4, 5]
    assert [e.seq for e in log.read_after(3, 0, 1)] == [4]
    assert log.read_after(1, 0, 10) is None  # event 2 fell out of the log
    assert log.read_after(5, 0.01, 10) == []


def test_same_epoch_caller_catches_up_from_its_cursor():
    log = PageEventLog()
    for seq in range(1, 4):
        log.append(stored(seq))
    (batch,) = first_batches(log, never_snapshot, request(after_seq=1), 1)
    assert (batch.reset, batch.last_seq, [e.seq for e in batch.events]) == (False, 3, [2, 3])


def test_a_new_caller_or_another_epoch_gets_a_snapshot_then_live_events():
    log = PageEventLog()
    log.append(stored(1))
    timer = threading.Timer(0.05, lambda: log.append(stored(2, b"live")))
    timer.start()
    batches = first_batches(log, lambda: ([b"a", b"b"], 1), request(epoch=0), 2)
    timer.join()
    snapshot, live = batches
    assert snapshot.reset and snapshot.last_seq == 1
    assert sorted(e.page_hash for e in snapshot.events) == [b"a", b"b"]
    assert all(e.stored for e in snapshot.events)
    assert (live.reset, [e.page_hash for e in live.events]) == (False, [b"live"])


def test_a_cursor_older_than_the_log_gets_a_snapshot():
    log = PageEventLog(capacity=2)
    for seq in range(1, 5):
        log.append(stored(seq))
    (batch,) = first_batches(log, lambda: ([b"x"], 4), request(after_seq=1), 1)
    assert batch.reset and batch.last_seq == 4


def test_closing_the_log_ends_the_stream():
    log = PageEventLog()
    log.close()
    assert list(watch(log, never_snapshot, EPOCH, request(), lambda: True, poll_s=0.01)) == []


def test_pool_events_and_its_snapshot_agree():
    log = PageEventLog()
    pool = PagePool(2, page_size=4, on_event=log.append)
    pages = pool.allocate(2)
    pool.cache_page(pages[0], b"h0")
    pool.cache_page(pages[1], b"h1")
    pool.free(pages)
    pool.allocate(1)  # evicts the least recently released cached page
    held = set(pool.held_hashes())
    replayed: set[bytes] = set()
    for event in log.read_after(0, 0, 100):
        if event.kind is PageEventKind.STORED:
            replayed.add(event.page_hash)
        else:
            replayed.discard(event.page_hash)
    assert replayed == held and len(held) == 1
    assert pool.last_seq == 3
