"""The single owner of one worker's KV page bookkeeping: ref counts, prefix hashes, LRU.

Page ids index the KV cache tensor owned by the model runner; this module never touches
tensors. Every page is in exactly one of three states:

    state        ref  hashed  held in           leaves by                       to
    -----------  ---  ------  ----------------  ------------------------------  -----------
    FREE         0    no      _free (LIFO)      allocate                        IN_USE
    IN_USE       >0   maybe   _ref only         free() to 0, hashed             CACHED_IDLE
                                                free() to 0, unhashed           FREE
    CACHED_IDLE  0    yes     _lru (oldest      match_prefix                    IN_USE
                              release first)    allocate (evicts: REMOVED)      IN_USE
                                                reset_prefix_cache (REMOVED)    FREE

A page gets its hash only while IN_USE (`cache_page`, emits STORED) and loses it only by
eviction. `allocate` prefers FREE pages so that cached prefixes live as long as possible.

Why `match_prefix` increments refs: a matched CACHED_IDLE page is otherwise the first thing
the next `allocate` evicts, possibly in the same scheduling step, before the request that
matched it has read it. Taking a reference moves the page to IN_USE, so the hit is safe
to use until the caller frees it. `peek_prefix` is the non-mutating variant for estimates.

Events (STORED, REMOVED) feed the prefix-cache index; `seq` lets it detect gaps.
"""

from __future__ import annotations

import enum
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass


class PageEventKind(enum.Enum):
    STORED = "stored"  # a hash became matchable on this worker
    REMOVED = "removed"  # a hash was evicted and is no longer matchable


@dataclass(frozen=True, slots=True)
class PageEvent:
    """One change to the set of hashes a pool holds; `seq` is 1 for a pool's first event
    and increases by exactly 1 per event, so a consumer can detect a missed event."""

    kind: PageEventKind
    page_hash: bytes
    seq: int


class PagePoolExhausted(RuntimeError):
    """More pages were asked for than are FREE plus CACHED_IDLE; nothing was changed."""


@dataclass(frozen=True, slots=True)
class PagePoolStats:
    num_total: int
    num_free: int  # never used or evicted: allocatable without evicting anything
    num_cached_idle: int  # ref 0, still hashed: matchable, evictable in LRU order
    num_in_use: int  # ref > 0: held by requests or leases
    num_available: int  # free + cached_idle: what allocate() can hand out


class PagePool:
    """Allocates page ids, counts references and keeps the hash -> page prefix map.

    Not thread-safe: one scheduler thread owns the pool. `on_event` is called synchronously
    inside the mutating call that caused the event.
    """

    def __init__(
        self,
        num_pages: int,
        page_size: int,
        on_event: Callable[[PageEvent], None] | None = None,
    ) -> None:
        if num_pages < 1 or page_size < 1:
            raise ValueError(f"PagePool: num_pages={num_pages}, page_size={page_size}; need >= 1")
        self._num_pages = num_pages
        self._page_size = page_size
        self._on_event = on_event
        self._ref = [0] * num_pages
        self._hash_of: list[bytes | None] = [None] * num_pages
        self._page_of_hash: dict[bytes, int] = {}
        # Reversed so that a fresh pool hands out 0, 1, 2, ...; LIFO afterwards.
        self._free = list(reversed(range(num_pages)))
        self._lru: OrderedDict[int, None] = OrderedDict()  # oldest release first
        self._last_seq = 0

    @property
    def num_pages(self) -> int:
        return self._num_pages

    @property
    def page_size(self) -> int:
        return self._page_size

    @property
    def last_seq(self) -> int:
        """The seq of the last event emitted (0 before the first)."""
        return self._last_seq

    def held_hashes(self) -> list[bytes]:
        """Every hash matchable now: the state that events up to `last_seq` describe."""
        return list(self._page_of_hash)

    def can_allocate(self, n: int) -> bool:
        return 0 <= n <= len(self._free) + len(self._lru)

    def allocate(self, n: int) -> list[int]:
        """Return `n` distinct page ids, each with ref 1 and no hash; the caller owns the refs.

        Takes FREE pages first (most recently freed first), then evicts CACHED_IDLE pages
        oldest-released first, emitting REMOVED for each. Raises PagePoolExhausted, changing
        nothing, when fewer than `n` pages are available.
        """
        if n < 0:
            raise ValueError(f"allocate: n={n} must be >= 0")
        if not self.can_allocate(n):
            raise PagePoolExhausted(f"allocate({n}): only {self.stats().num_available} available")
        page_ids = [self._take_one() for _ in range(n)]
        for page_id in page_ids:
            self._ref[page_id] = 1
        return page_ids

    def _take_one(self) -> int:
        if self._free:
            return self._free.pop()
        page_id, _ = self._lru.popitem(last=False)
        self._unhash(page_id)
        return page_id

    def free(self, page_ids: Iterable[int]) -> None:
        """Drop one reference per listed id (an id listed twice drops two).

        A page reaching ref 0 becomes CACHED_IDLE at the most-recent end of the LRU if it is
        hashed, else FREE. Pages are released in the order given, so pass a request's pages
        tail-first: a chain's tail is then evicted before its head, which keeps the leading
        run that `match_prefix` needs. Raises ValueError, changing nothing, if any reference
        would go below zero (a double free) or an id is out of range.
        """
        page_ids = list(page_ids)
        self._check_refs_at_least(Counter(page_ids), "free")
        for page_id in page_ids:
            self._ref[page_id] -= 1
            if self._ref[page_id] == 0:
                self._release(page_id)

    def _release(self, page_id: int) -> None:
        if self._hash_of[page_id] is None:
            self._free.append(page_id)
        else:
            self._lru[page_id] = None

    def incref(self, page_ids: Iterable[int]) -> None:
        """Add one reference per listed id (leases pin pages this way; pair with free()).

        Only pages already IN_USE may be pinned: a ref-0 page might be handed out by the
        next allocate. Raises ValueError, changing nothing, otherwise.
        """
        page_ids = list(page_ids)
        self._check_refs_at_least(dict.fromkeys(page_ids, 1), "incref")
        for page_id in page_ids:
            self._ref[page_id] += 1

    def _check_refs_at_least(self, min_refs: Mapping[int, int], op: str) -> None:
        for page_id, need in min_refs.items():
            self._check_id(page_id, op)
            if self._ref[page_id] < need:
                raise ValueError(f"{op}: page {page_id} has ref {self._ref[page_id]}, needs {need}")

    def _check_id(self, page_id: int, op: str) -> None:
        if not 0 <= page_id < self._num_pages:
            raise ValueError(f"{op}: page id {page_id} not in [0, {self._num_pages})")

    def match_prefix(self, page_hashes: Sequence[bytes]) -> list[int]:
        """Pages of the longest leading run of `page_hashes` this pool holds, with a new ref.

        Mutates: each returned page gains one reference (CACHED_IDLE ones become IN_USE), so
        none can be evicted before the caller uses it. The caller owns those references and
        must free() them. Nothing else changes; a miss returns [].
        """
        page_ids = self._leading_pages(page_hashes)
        for page_id in page_ids:
            if self._ref[page_id] == 0:
                del self._lru[page_id]
            self._ref[page_id] += 1
        return page_ids

    def peek_prefix(self, page_hashes: Sequence[bytes]) -> int:
        """How many pages match_prefix would return now. Pure; the answer is only a hint,
        since a later allocate may evict CACHED_IDLE pages of the run."""
        return len(self._leading_pages(page_hashes))

    def _leading_pages(self, page_hashes: Sequence[bytes]) -> list[int]:
        page_ids: list[int] = []
        for page_hash in page_hashes:
            page_id = self._page_of_hash.get(page_hash)
            if page_id is None:
                break
            page_ids.append(page_id)
        return page_ids

    def cache_page(self, page_id: int, page_hash: bytes) -> bool:
        """Make an IN_USE page, full and computed, matchable under its chain hash.

        Emits STORED and returns True. If the hash already names another page (two requests
        computed the same prefix concurrently) the first mapping wins: returns False and the
        page stays unhashed, going back to FREE when released. Registering the same page and
        hash again is a no-op returning True. Raises ValueError for a ref-0 page or for a
        page that already carries a different hash (its contents cannot have changed).
        """
        self._check_id(page_id, "cache_page")
        if self._ref[page_id] == 0:
            raise ValueError(f"cache_page: page {page_id} is not allocated (ref 0)")
        current = self._hash_of[page_id]
        if current is not None and current != page_hash:
            raise ValueError(f"cache_page: page {page_id} already hashed as {current.hex()}")
        if current == page_hash:
            return True
        if page_hash in self._page_of_hash:
            return False
        self._hash_of[page_id] = page_hash
        self._page_of_hash[page_hash] = page_id
        self._emit(PageEventKind.STORED, page_hash)
        return True

    def reset_prefix_cache(self) -> int:
        """Evict every CACHED_IDLE page (oldest first, one REMOVED each) to FREE; return how
        many. Hashed IN_USE pages stay matchable: their holders still rely on them."""
        num_evicted = len(self._lru)
        while self._lru:
            page_id, _ = self._lru.popitem(last=False)
            self._unhash(page_id)
            self._free.append(page_id)
        return num_evicted

    def _unhash(self, page_id: int) -> None:
        page_hash = self._hash_of[page_id]
        assert page_hash is not None, "only hashed pages are evicted"
        self._hash_of[page_id] = None
        del self._page_of_hash[page_hash]
        self._emit(PageEventKind.REMOVED, page_hash)

    def _emit(self, kind: PageEventKind, page_hash: bytes) -> None:
        self._last_seq += 1
        if self._on_event is not None:
            self._on_event(PageEvent(kind, page_hash, self._last_seq))

    def ref_count(self, page_id: int) -> int:
        self._check_id(page_id, "ref_count")
        return self._ref[page_id]

    def page_hash(self, page_id: int) -> bytes | None:
        self._check_id(page_id, "page_hash")
        return self._hash_of[page_id]

    def num_request_pages(self) -> int:
        """Pages with ref > 0; zero after quiesce, or something leaked."""
        return self._num_pages - len(self._free) - len(self._lru)

    def stats(self) -> PagePoolStats:
        num_free, num_idle = len(self._free), len(self._lru)
        return PagePoolStats(
            num_total=self._num_pages,
            num_free=num_free,
            num_cached_idle=num_idle,
            num_in_use=self.num_request_pages(),
            num_available=num_free + num_idle,
        )

    def check_integrity(self) -> None:
        """Raise AssertionError naming the first broken invariant. O(num_pages): for tests
        and debug endpoints, not the hot path."""
        free, idle = set(self._free), set(self._lru)
        _require(len(free) == len(self._free), f"free stack has duplicates: {self._free}")
        _require(not free & idle, f"pages both free and idle-cached: {sorted(free & idle)}")
        for page_id in range(self._num_pages):
            self._check_page(page_id, page_id in free, page_id in idle)
        for page_hash, page_id in self._page_of_hash.items():
            _require(
                self._hash_of[page_id] == page_hash,
                f"hash {page_hash.hex()} maps to page {page_id}, which has another hash",
            )
        stats = self.stats()
        in_use = sum(1 for ref in self._ref if ref > 0)
        _require(stats.num_in_use == in_use, f"in-use count {stats.num_in_use} != {in_use}")

    def _check_page(self, page_id: int, is_free: bool, is_idle: bool) -> None:
        ref, page_hash = self._ref[page_id], self._hash_of[page_id]
        _require(ref >= 0, f"page {page_id} has negative ref {ref}")
        listed = is_free or is_idle
        _require(not (ref > 0 and listed), f"page {page_id} has ref {ref} but is free or idle")
        _require(ref > 0 or listed, f"page {page_id} has ref 0 but is neither free nor idle")
        _require(not (is_free and page_hash is not None), f"free page {page_id} is hashed")
        _require(not (is_idle and page_hash is None), f"idle-cached page {page_id} is unhashed")
        if page_hash is not None:
            _require(
                self._page_of_hash.get(page_hash) == page_id,
                f"page {page_id} has hash {page_hash.hex()} but the map disagrees",
            )


def _require(condition: bool, message: str) -> None:
    # Explicit raise, not `assert`: integrity checks must survive `python -O`.
    if not condition:
        raise AssertionError(message)
