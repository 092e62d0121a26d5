"""The mock worker's optional prefix cache: a real `engine.page_pool.PagePool`, a modelled
prefill cost, and the page-event log its WatchPageEvents streams (pdserve/page_events.py's
semantics and batch builders, asyncio-native so that a watch never blocks the event loop or
holds a thread).

A prompt's prefill, like a compute-bound worker's scheduler (engine/scheduler.py):

    1. waiting   queued behind the prefill running now (one at a time, FIFO); its uncached
                 tokens, estimated with `peek_prefix`, count in `queued_prefill_tokens`
    2. computing takes the prefill lock; reuses the cached leading pages (`match_prefix`,
                 leaving at least one token to compute), allocates the rest (evicting idle
                 cached pages, LRU, REMOVED events) — if they do not fit, waits up to
                 `page_wait_s` for refs to be dropped, then fails with PagePoolExhausted; sleeps
                 `s_per_token` x uncached tokens; registers every full prompt page under its
                 chain hash (`cache_page`, STORED events)
    3. held      the caller owns the page refs (a request or a lease) until `free`: the pages
                 then stay cached, idle and evictable
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar

from engine.page_pool import PageEvent, PagePool, PagePoolExhausted
from kv_transfer.pages import page_hashes
from pdserve.page_events import events_after, events_batch, snapshot_batch
from pdserve.v1 import worker_pb2

T = TypeVar("T")


class PageEventLog:
    """The last `capacity` events of one pool, for the watch streams; one event loop."""

    def __init__(self, capacity: int = 65536) -> None:
        self._events: deque[PageEvent] = deque(maxlen=capacity)
        self._changed = asyncio.Event()
        self._closed = False

    def append(self, event: PageEvent) -> None:
        self._events.append(event)
        self._wake()

    def close(self) -> None:
        """Ends every watch stream (the worker stops); `open` serves new ones again."""
        self._closed = True
        self._wake()

    def open(self) -> None:
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def read_after(self, seq: int, max_events: int) -> list[PageEvent] | None:
        """Up to `max_events` events after `seq`, without waiting (see `events_after`)."""
        return events_after(self._events, seq, max_events)

    async def wait_after(self, seq: int) -> None:
        """Returns once an event after `seq` is kept or the log is closed."""
        while not self._closed and (not self._events or self._events[-1].seq <= seq):
            await self._changed.wait()

    def _wake(self) -> None:
        # Waiters hold the old event, which stays set; new waiters get a fresh one.
        self._changed.set()
        self._changed = asyncio.Event()


class EventSource(Protocol):
    events: PageEventLog

    def snapshot(self) -> tuple[list[bytes], int]:
        """Every hash held now and the seq of the last event describing it."""


async def watch_page_events(
    source: EventSource,
    epoch: int,
    request: worker_pb2.WatchPageEventsRequest,
    max_batch: int = 1024,
) -> AsyncIterator[worker_pb2.PageEventBatch]:
    """One caller's stream: catch up from its cursor, or a `reset` snapshot when its epoch is
    not this one or events after its seq are gone; then follow until the log closes."""
    log = source.events
    seq = request.after_seq if request.epoch == epoch else -1
    while not log.closed:
        events = log.read_after(seq, max_batch) if seq >= 0 else None
        if events is None:
            hashes, seq = source.snapshot()
            yield snapshot_batch(epoch, hashes, seq)
        elif events:
            seq = events[-1].seq
            yield events_batch(epoch, events)
        else:
            await log.wait_after(seq)


class Aborted(Exception):
    """The request was aborted while `unless_set` waited on its work."""


async def unless_set(work: Awaitable[T], aborted: asyncio.Event) -> T:
    """`work`'s result; if `aborted` is set first, `work` is cancelled and Aborted raised."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(aborted.wait())
    try:
        await asyncio.wait((task, waiter), return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise Aborted
    return task.result()


@dataclass(frozen=True, slots=True)
class CachedPrefill:
    """A computed prompt: its pages (one ref each, the caller's) and what was reused."""

    page_ids: list[int]
    num_cached_tokens: int  # matched pages x page size
    queue_s: float  # waiting for the prefill before it
    prefill_s: float  # the modelled compute


class SimplePagePool:
    """The default mock pool: page ids 0..num_pages-1 and no prefix cache, so no events; the
    only owner of which ids are free. A prompt's "cached" tokens are its leading full pages
    this pool has seen before (nothing is reused or evicted); its prefill costs nothing."""

    def __init__(self, num_pages: int, page_size: int) -> None:
        self.num_pages, self.page_size = num_pages, page_size
        self.free_ids = list(range(num_pages))
        self.events = PageEventLog()  # stays empty
        self.num_waiting = self.queued_prefill_tokens = 0  # prefill takes no time
        self._seen_pages: set[bytes] = set()

    @property
    def num_in_use(self) -> int:
        return self.num_pages - len(self.free_ids)

    @property
    def num_cached_idle(self) -> int:
        return 0

    def snapshot(self) -> tuple[list[bytes], int]:
        return [], 0

    def allocate(self, count: int) -> list[int] | None:
        if count > len(self.free_ids):
            return None
        taken, self.free_ids = self.free_ids[:count], self.free_ids[count:]
        return taken

    def free(self, page_ids: Sequence[int]) -> None:
        self.free_ids.extend(page_ids)

    async def prefill(
        self, prompt: Sequence[int], num_extra_tokens: int, aborted: asyncio.Event
    ) -> CachedPrefill:
        """Pages for the prompt and `num_extra_tokens` more; raises PagePoolExhausted. Never
        waits, so never sees `aborted`."""
        page_ids = self.allocate(-(-(len(prompt) + num_extra_tokens) // self.page_size))
        if page_ids is None:
            raise PagePoolExhausted("mock page pool full")
        hashes = page_hashes(list(prompt), self.page_size)
        num_seen = next((i for i, h in enumerate(hashes) if h not in self._seen_pages), len(hashes))
        self._seen_pages.update(hashes)
        return CachedPrefill(page_ids, num_seen * self.page_size, queue_s=0.0, prefill_s=0.003)

    def check_integrity(self) -> None:
        assert len(set(self.free_ids)) == len(self.free_ids), "a page was freed twice"


class MockPrefixCache:
    """One mock worker's pages and prefill compute; the single owner of its PagePool.

    Offers the simple mock pool's interface (`allocate` → ids or None, `free`, `num_in_use`,
    `check_integrity`), so the worker's leases and decode pages go through the same pool.
    """

    def __init__(
        self, num_pages: int, page_size: int, s_per_token: float, page_wait_s: float = 0.0
    ) -> None:
        self.events = PageEventLog()
        self._pool = PagePool(num_pages, page_size, on_event=self.events.append)
        self._s_per_token = s_per_token
        self._page_wait_s = page_wait_s
        self._freed = asyncio.Event()  # set (and replaced) whenever refs are dropped
        self._prefill_lock = asyncio.Lock()
        self.num_waiting = 0  # prefills queued behind the running one
        self.queued_prefill_tokens = 0  # uncached prompt tokens waiting or computing

    @property
    def num_pages(self) -> int:
        return self._pool.num_pages

    @property
    def num_in_use(self) -> int:
        """Pages referenced by requests or leases (0 once idle; cached idle pages excluded)."""
        return self._pool.num_request_pages()

    @property
    def num_cached_idle(self) -> int:
        return self._pool.stats().num_cached_idle

    def snapshot(self) -> tuple[list[bytes], int]:
        """Every matchable hash and the seq it is current at (a watch snapshot)."""
        return self._pool.held_hashes(), self._pool.last_seq

    def allocate(self, count: int) -> list[int] | None:
        """`count` fresh pages (evicting idle cached ones if needed), or None if they do not
        fit; nothing changes then."""
        if not self._pool.can_allocate(count):
            return None
        return self._pool.allocate(count)

    def free(self, page_ids: Sequence[int]) -> None:
        """Drops the caller's refs, tail first, so a chain's head stays cached longest."""
        self._pool.free(reversed(page_ids))
        self._freed.set()
        self._freed = asyncio.Event()

    def check_integrity(self) -> None:
        self._pool.check_integrity()
        assert self.queued_prefill_tokens >= 0 and self.num_waiting >= 0

    async def prefill(
        self, prompt: Sequence[int], num_extra_tokens: int, aborted: asyncio.Event
    ) -> CachedPrefill:
        """Computes `prompt` (steps 1–2 above), with pages for `num_extra_tokens` more.

        Raises PagePoolExhausted when its pages do not fit, Aborted when `aborted` is set
        first; either way, and when cancelled, it holds no pages and has left the queue.
        """
        return await unless_set(self._prefill(prompt, num_extra_tokens), aborted)

    async def _prefill(self, prompt: Sequence[int], num_extra_tokens: int) -> CachedPrefill:
        page_size = self._pool.page_size
        hashes = page_hashes(list(prompt), page_size)
        matchable = hashes[: (len(prompt) - 1) // page_size]
        estimate = len(prompt) - self._pool.peek_prefix(matchable) * page_size
        self.queued_prefill_tokens += estimate
        try:
            async with self._turn() as queue_s:
                page_ids, num_matched = await self._claim(matchable, len(prompt) + num_extra_tokens)
                uncached = len(prompt) - num_matched * page_size
                self.queued_prefill_tokens += uncached - estimate
                estimate = uncached
                prefill_s = await self._compute(page_ids, uncached)
                for index in range(num_matched, len(hashes)):
                    self._pool.cache_page(page_ids[index], hashes[index])
                return CachedPrefill(page_ids, num_matched * page_size, queue_s, prefill_s)
        finally:
            self.queued_prefill_tokens -= estimate

    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[float]:
        """Holds the prefill lock (FIFO); yields how long this prefill waited for it."""
        waited_since_s = time.monotonic()
        self.num_waiting += 1
        try:
            await self._prefill_lock.acquire()
        finally:
            self.num_waiting -= 1
        try:
            yield time.monotonic() - waited_since_s
        finally:
            self._prefill_lock.release()

    async def _claim(self, matchable: Sequence[bytes], num_tokens: int) -> tuple[list[int], int]:
        """The cached leading pages (new refs) plus fresh ones up to `num_tokens`, and how many
        were matched. When the fresh ones do not fit, waits up to `page_wait_s` for pages to be
        freed (holding the queue, like a real scheduler's head), then raises
        PagePoolExhausted, holding nothing."""
        deadline_s = time.monotonic() + self._page_wait_s
        while True:
            matched = self._pool.match_prefix(matchable)
            num_fresh = -(-num_tokens // self._pool.page_size) - len(matched)
            if self._pool.can_allocate(num_fresh):
                return matched + self._pool.allocate(num_fresh), len(matched)
            self.free(matched)
            freed = self._freed  # after our own free: only another holder's wakes us
            try:
                await asyncio.wait_for(freed.wait(), max(0.0, deadline_s - time.monotonic()))
            except TimeoutError:
                raise PagePoolExhausted(f"{num_fresh} pages do not fit") from None

    async def _compute(self, page_ids: list[int], num_tokens: int) -> float:
        """Sleeps the modelled cost of `num_tokens`; frees `page_ids` if cancelled."""
        started_s = time.monotonic()
        try:
            await asyncio.sleep(self._s_per_token * num_tokens)
        except BaseException:
            self.free(page_ids)
            raise
        return time.monotonic() - started_s
