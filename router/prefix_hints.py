"""What the prefix index says about one prompt, for routing; never a reason to fail it.

The prompt's page hashes (kv_transfer.pages.page_hashes, the function the workers' pools use)
are computed once per page size among the candidate workers — normally one — and looked up in
one index round trip each. Only workers of that page size are credited with its matches. When
the index is unavailable (its circuit breaker is open, Redis is down or slow) the answer is
"nothing cached anywhere": routing falls back to load only, and `on_unavailable` counts it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from kv_transfer.pages import page_hashes
from router.breaker import DependencyUnavailable
from router.prefix_index import PrefixIndex
from router.registry import WorkerRecord

log = logging.getLogger(__name__)


class PrefixHints:
    def __init__(self, index: PrefixIndex, on_unavailable: Callable[[], None]) -> None:
        self.index = index
        self._on_unavailable = on_unavailable  # counts lookups the index could not answer

    async def matched_pages(
        self, prompt: Sequence[int], workers: Sequence[WorkerRecord]
    ) -> dict[str, int]:
        """{worker_id: leading pages of `prompt` it holds}, for routable `workers` only."""
        routable = [w for w in workers if w.routable]
        matched: dict[str, int] = {}
        for page_size in sorted({w.layout.page_size for w in routable}):
            hashes = page_hashes(list(prompt), page_size)
            if not hashes:
                continue
            try:
                found = await self.index.lookup(hashes)
            except DependencyUnavailable:
                self._on_unavailable()
                return {}
            for worker in routable:
                if worker.layout.page_size == page_size and worker.worker_id in found:
                    matched[worker.worker_id] = found[worker.worker_id]
        return matched
