"""This router's own outstanding work per worker, known the moment it is sent.

Polled load (GetStats, once a period) lags: a burst of requests routed within one period would
all see the same idle worker. So the router counts what it has sent and not yet seen finish —
prompt tokens in prefill per worker, streams per decode worker — and routing sees, for each
worker, the larger of its last report and this count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from router.registry import WorkerRecord


class InFlightLoad:
    """Owned by the orchestrator; used from one event loop."""

    def __init__(self) -> None:
        self._prefill_tokens: Counter[str] = Counter()
        self._streams: Counter[str] = Counter()

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
    def streaming(self, worker_id: str) -> Iterator[None]:
        """While a Decode stream runs on the worker."""
        self._streams[worker_id] += 1
        try:
            yield
        finally:
            self._streams[worker_id] -= 1
            if not self._streams[worker_id]:
                del self._streams[worker_id]

    def overlay(self, workers: Sequence[WorkerRecord]) -> list[WorkerRecord]:
        """`workers` (the caller's copies, changed in place) with each load raised to at least
        this router's outstanding work there."""
        for worker in workers:
            load = worker.load
            load.queued_prefill_tokens = max(
                load.queued_prefill_tokens, self._prefill_tokens[worker.worker_id]
            )
            load.running = max(load.running, self._streams[worker.worker_id])
        return list(workers)

    @property
    def is_idle(self) -> bool:
        return not (self._prefill_tokens or self._streams)
