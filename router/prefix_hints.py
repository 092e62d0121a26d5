"""What is known about one prompt's cached prefix, for routing; never a reason to fail it.

The prompt's page hashes (kv_transfer.pages.page_hashes, the function the workers' pools use)
are computed once per page size among the candidate workers — normally one — and looked up in
one index round trip each. Each worker is credited with the larger of the index's count and
what this router routed there moments ago (recent_routes.py: pages still being computed).
Only workers of that page size are credited with its matches. When the index is unavailable
(its circuit breaker is open, Redis is down or slow) only the recent routes count: routing
falls back to load, and `on_unavailable` counts it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kv_transfer.pages import page_hashes
from router.breaker import DependencyUnavailable
from router.prefix_index import PrefixIndex
from router.recent_routes import RecentRoutes
from router.registry import WorkerRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PromptPages:
    """A prompt's full-page chain hashes per page size, and who holds how many of them."""

    hashes: dict[int, list[bytes]] = field(default_factory=dict)
    matched: dict[str, int] = field(default_factory=dict)  # worker_id -> leading pages

    @property
    def affinity(self) -> bytes | None:
        """The first page's hash (smallest page size): the same for every prompt of a prefix."""
        return self.hashes[min(self.hashes)][0] if self.hashes else None


class PrefixHints:
    def __init__(self, index: PrefixIndex, on_unavailable: Callable[[], None]) -> None:
        self.index = index
        self._on_unavailable = on_unavailable  # counts lookups the index could not answer
        self._recent = RecentRoutes()

    async def lookup(self, prompt: Sequence[int], workers: Sequence[WorkerRecord]) -> PromptPages:
        """The prompt's pages and what routable `workers` hold of them."""
        routable = [w for w in workers if w.routable]
        pages = PromptPages()
        for page_size in sorted({w.layout.page_size for w in routable}):
            hashes = page_hashes(list(prompt), page_size)
            if not hashes:
                continue
            pages.hashes[page_size] = hashes
            found = self._recent.matched(hashes)
            for worker_id, count in (await self._indexed(hashes)).items():
                found[worker_id] = max(count, found.get(worker_id, 0))
            for worker in routable:
                if worker.layout.page_size == page_size and found.get(worker.worker_id):
                    pages.matched[worker.worker_id] = found[worker.worker_id]
        return pages

    def record(self, worker: WorkerRecord, pages: PromptPages) -> None:
        """`worker` is about to compute (or reuse) the prompt's pages."""
        hashes = pages.hashes.get(worker.layout.page_size)
        if hashes:
            self._recent.record(worker.worker_id, hashes)

    async def _indexed(self, hashes: list[bytes]) -> dict[str, int]:
        try:
            return await self.index.lookup(hashes)
        except DependencyUnavailable:
            self._on_unavailable()
            return {}
