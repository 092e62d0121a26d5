"""The prefix-cache index: which worker holds which leading pages of a prompt. A hint only.

Workers are the truth (each matches its own PagePool); a stale entry here can cost a cache
hit, never change an answer. Every backend follows the same rules, checked by one behaviour
suite against each (tests/integration/test_prefix_index.py):

    events     a worker's pool numbers its events 1, 2, 3 …; one feed delivers them in order
               as EventBatches. An event at or below the worker's applied seq is a duplicate
               (a replay, or another router feeding the same worker) and is skipped; a first
               event beyond applied seq + 1 means events were missed: the rest is applied and
               the result says `gap`, so the feed asks the worker for a snapshot.
    snapshot   a `reset` batch replaces the worker's whole set at its `last_seq` (ignored when
               older than what is applied).
    epochs     a batch from a newer epoch purges the old incarnation's entries first; a batch
               from an older epoch changes nothing.
    expiry     a worker's entries live `ttl_s` after its last `apply` or `refresh` (the
               registry's heartbeat), then vanish as if purged.
    lookup     one round trip: for page hashes h_0..h_n-1 (a chain, kv_transfer.pages), the
               number of leading hashes each worker holds; workers holding none are left out.

Backends: `InMemoryPrefixIndex` (the embedded default, one router) here and
`RedisPrefixIndex` (router/redis_index.py, shared by router replicas).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class IndexEvent:
    stored: bool  # True: the hash became matchable on the worker; False: it was evicted
    page_hash: bytes
    seq: int


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Events of one worker incarnation, in seq order; a `reset` batch holds every hash the
    worker has (all `stored`) as of `last_seq`."""

    worker_id: str
    epoch: int
    events: tuple[IndexEvent, ...]
    last_seq: int
    reset: bool = False


@dataclass(frozen=True, slots=True)
class ApplyResult:
    applied: int  # events applied, not skipped as duplicates (for a reset: hashes now held)
    gap: bool = False  # events before this batch were never applied: ask for a snapshot
    stale: bool = False  # an older epoch or an older snapshot: nothing was changed


class PrefixIndex(ABC):
    """Where page hashes are cached. Implementations are used from one event loop."""

    def __init__(self, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s: must be > 0, got {ttl_s}")
        self.ttl_s = ttl_s

    @abstractmethod
    async def apply(self, batch: EventBatch) -> ApplyResult:
        """Applies one batch under the rules above; refreshes the worker's expiry."""

    @abstractmethod
    async def lookup(self, page_hashes: Sequence[bytes]) -> dict[str, int]:
        """{worker_id: leading pages held} for workers holding at least the first page."""

    @abstractmethod
    async def refresh(self, worker_ids: Iterable[str]) -> None:
        """Extends the entries of these (live) workers by `ttl_s` from now."""

    @abstractmethod
    async def purge(self, worker_id: str) -> None:
        """Forgets every entry of the worker, whatever its epoch. Idempotent."""

    @abstractmethod
    async def close(self) -> None:
        """Releases connections; the index is not used afterwards."""


@dataclass(slots=True)
class _WorkerPages:
    epoch: int
    applied_seq: int = 0
    hashes: set[bytes] = field(default_factory=set)
    expires_s: float = 0.0


class InMemoryPrefixIndex(PrefixIndex):
    """The embedded index: one dict of per-worker hash sets, owned by this object."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(ttl_s)
        self._clock = clock
        self._workers: dict[str, _WorkerPages] = {}

    async def apply(self, batch: EventBatch) -> ApplyResult:
        worker = self._live(batch.worker_id)
        if worker is not None and batch.epoch < worker.epoch:
            return ApplyResult(0, stale=True)
        if worker is None or batch.epoch > worker.epoch:
            worker = self._workers[batch.worker_id] = _WorkerPages(batch.epoch)
        worker.expires_s = self._clock() + self.ttl_s
        if batch.reset:
            if batch.last_seq < worker.applied_seq:
                return ApplyResult(0, stale=True)
            worker.hashes = {event.page_hash for event in batch.events}
            worker.applied_seq = batch.last_seq
            return ApplyResult(len(worker.hashes))
        fresh = [event for event in batch.events if event.seq > worker.applied_seq]
        gap = bool(fresh) and fresh[0].seq > worker.applied_seq + 1
        for event in fresh:
            if event.stored:
                worker.hashes.add(event.page_hash)
            else:
                worker.hashes.discard(event.page_hash)
        worker.applied_seq = max(worker.applied_seq, batch.last_seq)
        return ApplyResult(len(fresh), gap=gap)

    async def lookup(self, page_hashes: Sequence[bytes]) -> dict[str, int]:
        matched = {}
        for worker_id in list(self._workers):
            worker = self._live(worker_id)
            if worker is None:
                continue
            count = _leading(worker.hashes, page_hashes)
            if count:
                matched[worker_id] = count
        return matched

    async def refresh(self, worker_ids: Iterable[str]) -> None:
        expires_s = self._clock() + self.ttl_s
        for worker_id in worker_ids:
            worker = self._live(worker_id)
            if worker is not None:
                worker.expires_s = expires_s

    async def purge(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)

    async def close(self) -> None:
        self._workers.clear()

    def _live(self, worker_id: str) -> _WorkerPages | None:
        """The worker's entry, or None (dropping it) once expired."""
        worker = self._workers.get(worker_id)
        if worker is not None and worker.expires_s <= self._clock():
            del self._workers[worker_id]
            return None
        return worker


def _leading(held: set[bytes], page_hashes: Sequence[bytes]) -> int:
    for count, page_hash in enumerate(page_hashes):
        if page_hash not in held:
            return count
    return len(page_hashes)
