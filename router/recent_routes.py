"""Prefixes this router has just sent to a prefill worker, credited before the index knows.

A worker's STORED events for a prompt's pages arrive only once its prefill has computed them;
prompts of the same prefix routed meanwhile would look like misses everywhere and scatter.
So each route records the prompt's page hashes against the worker that will compute them, for
`ttl_s` (longer than a prefill plus the event's trip). Lookups take, per worker, the larger of
the index's count and this one. Like the index it is only a hint: the worker matches its own
pool, so a wrong credit costs a miss, never an answer. Bounded: the oldest hashes go first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence


class RecentRoutes:
    """Owned by one router's PrefixHints; used from one event loop."""

    def __init__(
        self,
        ttl_s: float = 5.0,
        capacity: int = 1 << 16,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl_s = ttl_s
        self._capacity = capacity
        self._clock = clock
        self._routes: OrderedDict[bytes, dict[str, float]] = OrderedDict()  # hash -> expiries

    def record(self, worker_id: str, page_hashes: Sequence[bytes]) -> None:
        expiry = self._clock() + self._ttl_s
        for page_hash in page_hashes:
            workers = self._routes.pop(page_hash, {})
            workers[worker_id] = expiry
            self._routes[page_hash] = workers  # now the newest
        while len(self._routes) > self._capacity:
            self._routes.popitem(last=False)

    def matched(self, page_hashes: Sequence[bytes]) -> dict[str, int]:
        """{worker_id: leading pages recently routed there} (unexpired only)."""
        if not page_hashes:
            return {}
        now = self._clock()
        counts = {}
        for worker_id, expiry in self._routes.get(page_hashes[0], {}).items():
            if expiry > now:
                counts[worker_id] = self._leading(worker_id, page_hashes, now)
        return counts

    def _leading(self, worker_id: str, page_hashes: Sequence[bytes], now: float) -> int:
        for count, page_hash in enumerate(page_hashes):
            if self._routes.get(page_hash, {}).get(worker_id, 0.0) <= now:
                return count
        return len(page_hashes)
