"""This router's own outstanding work per worker, known the moment it is sent.

Polled load (GetStats, once a period) lags: a burst of requests routed within one period would
all see the same idle worker, and work that finished since the report would still count. So
the router counts what it has sent and not yet seen finish — prompt tokens in prefill per
worker, streams per decode worker — and routing sees, for each worker, this router's count now
plus what the last report showed beyond this router's count when it arrived (other routers'
work, as of that report).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from router.registry import WorkerRecord


class InFlightLoad:
    """Owned by the orchestrator; used from one event loop."""

    def __init__(self) -> None:
        self._prefill_tokens: Counter[str] = Counter()
        self._streams: Counter[str] = Counter()
        self._at_report: dict[str, tuple[int, int]] = {}  # worker_id -> ours when it reported

    def note_report(self, worker_id: str) -> None:
        """A load report of the worker just arrived (called by the monitor)."""
        self._at_report[worker_id] = (self._prefill_tokens[worker_id], self._streams[worker_id])

    @contextmanager
    def prefilling(self, worker_id: str, num_tokens: int) -> Iterator[None]:
        """While `num_tokens` uncached prompt tokens are being computed on the worker."""
        self._prefill_tokens[worker_id] += num_tokens
        try:
            yield
        finally:
            self._prefill_tokens[worker_id] -= num_tokens
            if not self._prefill_tokens[worker_id]:
                del self._prefill_tokens[worker_id]

    @contextmanager
    def decoding(self, worker_id: str) -> Iterator[Callable[[str], None]]:
        """From a request's route to its end, on the worker that streams its tokens (its
        prefill leg included: the stream is on its way). Yields `move(worker_id)` for when
        the request is re-routed to another decode worker before its stream starts."""
        held = [worker_id]
        self._streams[worker_id] += 1

        def move(new_worker_id: str) -> None:
            self._release_stream(held[0])
            held[0] = new_worker_id
            self._streams[new_worker_id] += 1

        try:
            yield move
        finally:
            self._release_stream(held[0])

    def has_work(self, worker_id: str) -> bool:
        """Whether a request of this router is routed to or running on the worker."""
        return bool(self._streams[worker_id] or self._prefill_tokens[worker_id])

    def forget(self, worker_id: str) -> None:
        """Drops the last-report bookkeeping of a worker that left."""
        self._at_report.pop(worker_id, None)

    def _release_stream(self, worker_id: str) -> None:
        self._streams[worker_id] -= 1
        if not self._streams[worker_id]:
            del self._streams[worker_id]

    def overlay(self, workers: Sequence[WorkerRecord]) -> list[WorkerRecord]:
        """`workers` (the caller's copies, changed in place) with each load set to this router's
        outstanding work there plus the others' as of the last report."""
        for worker in workers:
            load, worker_id = worker.load, worker.worker_id
            ours_tokens, ours_streams = self._at_report.get(worker_id, (0, 0))
            others_tokens = max(0, load.queued_prefill_tokens - ours_tokens)
            load.queued_prefill_tokens = self._prefill_tokens[worker_id] + others_tokens
            load.running = self._streams[worker_id] + max(0, load.running - ours_streams)
        return list(workers)

    @property
    def is_idle(self) -> bool:
        return not (self._prefill_tokens or self._streams)
