"""A worker's prefix-cache events, kept for the routers that watch them (WatchPageEvents).

Lifecycle: the engine's PagePool calls `PageEventLog.append` on the engine thread for every
STORED/REMOVED event (seq 1, 2, 3 …). The log keeps the last `capacity` events. Each watch
stream (one per router) runs on a gRPC thread:

    1. catch up    when the caller's epoch is this worker's and every event after its seq is
                   still kept, those events; otherwise a snapshot — every hash the pool holds,
                   read on the engine thread together with the pool's seq — marked `reset`
    2. follow      events as they are appended, in batches of at most `max_batch`; if the
                   stream falls behind further than the log keeps, a new snapshot
    3. end         when the caller goes away or the log is closed (the worker stops)
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable, Iterator

from engine.page_pool import PageEvent, PageEventKind
from pdserve.v1 import worker_pb2

Snapshot = Callable[[], tuple[list[bytes], int]]  # (held hashes, pool seq), engine thread


class PageEventLog:
    """The last `capacity` page events; thread-safe (appended by one engine thread)."""

    def __init__(self, capacity: int = 65536) -> None:
        self._events: deque[PageEvent] = deque(maxlen=capacity)
        self._changed = threading.Condition()
        self._closed = False

    def append(self, event: PageEvent) -> None:
        with self._changed:
            self._events.append(event)
            self._changed.notify_all()

    def close(self) -> None:
        """Ends every watch stream."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def read_after(self, seq: int, timeout_s: float, max_events: int) -> list[PageEvent] | None:
        """Up to `max_events` events after `seq`, waiting up to `timeout_s` for the first.
        None when events after `seq` are no longer kept (the reader must resynchronise)."""
        with self._changed:
            self._changed.wait_for(lambda: self._closed or self._newest() > seq, timeout_s)
            return events_after(self._events, seq, max_events)

    @property
    def closed(self) -> bool:
        return self._closed

    def _newest(self) -> int:
        return self._events[-1].seq if self._events else 0


def watch(
    log: PageEventLog,
    snapshot: Snapshot,
    epoch: int,
    request: worker_pb2.WatchPageEventsRequest,
    is_active: Callable[[], bool],
    poll_s: float = 0.5,
    max_batch: int = 1024,
) -> Iterator[worker_pb2.PageEventBatch]:
    """The WatchPageEvents stream for one caller (steps in the module docstring)."""
    seq = request.after_seq if request.epoch == epoch else -1
    while is_active() and not log.closed:
        events = log.read_after(seq, poll_s, max_batch) if seq >= 0 else None
        if events is None:
            hashes, seq = snapshot()
            yield snapshot_batch(epoch, hashes, seq)
        elif events:
            seq = events[-1].seq
            yield events_batch(epoch, events)


def events_after(events: deque[PageEvent], seq: int, max_events: int) -> list[PageEvent] | None:
    """Up to `max_events` of the kept `events` after `seq`; None when some of those are no
    longer kept (the reader needs a snapshot)."""
    if not events or events[-1].seq <= seq:
        return []
    oldest = events[0].seq
    if oldest > seq + 1:
        return None
    start = seq + 1 - oldest
    return list(itertools.islice(events, start, start + max_events))


def snapshot_batch(epoch: int, hashes: list[bytes], seq: int) -> worker_pb2.PageEventBatch:
    events = [worker_pb2.PageEvent(stored=True, page_hash=h, seq=seq) for h in hashes]
    return worker_pb2.PageEventBatch(epoch=epoch, reset=True, events=events, last_seq=seq)


def events_batch(epoch: int, events: list[PageEvent]) -> worker_pb2.PageEventBatch:
    protos = [
        worker_pb2.PageEvent(
            stored=event.kind is PageEventKind.STORED, page_hash=event.page_hash, seq=event.seq
        )
        for event in events
    ]
    return worker_pb2.PageEventBatch(epoch=epoch, events=protos, last_seq=events[-1].seq)
