"""PagePool: allocation order, ref counting, prefix matching, LRU eviction, events, integrity."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engine.page_pool import (
    PageEvent,
    PageEventKind,
    PagePool,
    PagePoolExhausted,
    PagePoolStats,
)

STORED, REMOVED = PageEventKind.STORED, PageEventKind.REMOVED


def h(i: int) -> bytes:
    return f"hash-{i}".encode()


def make_pool(num_pages: int = 4) -> tuple[PagePool, list[PageEvent]]:
    events: list[PageEvent] = []
    return PagePool(num_pages, page_size=16, on_event=events.append), events


def cache_new_pages(pool: PagePool, hashes: list[bytes]) -> list[int]:
    """Allocate one page per hash and register each (a request that computed its prompt)."""
    page_ids = pool.allocate(len(hashes))
    for page_id, page_hash in zip(page_ids, hashes, strict=True):
        assert pool.cache_page(page_id, page_hash)
    return page_ids


def test_fresh_pool_hands_out_ids_in_order_with_ref_one():
    pool, _ = make_pool(4)
    assert pool.allocate(3) == [0, 1, 2]
    assert pool.allocate(1) == [3]
    assert [pool.ref_count(p) for p in range(4)] == [1, 1, 1, 1]
    assert pool.stats() == PagePoolStats(4, 0, 0, 4, 0)


def test_most_recently_freed_page_is_reused_first():
    pool, _ = make_pool(4)
    pool.allocate(3)
    pool.free([0, 1])
    assert pool.allocate(3) == [1, 0, 3]


def test_unhashed_page_returns_to_free_not_to_cache():
    pool, events = make_pool(4)
    pool.free(pool.allocate(2))
    assert pool.stats() == PagePoolStats(4, 4, 0, 0, 4)
    assert events == []


def test_double_free_raises_and_changes_nothing():
    # The whole call is rejected: page 1 (still held) must not lose its reference either.
    pool, _ = make_pool(4)
    pool.allocate(2)
    pool.free([0])
    before = pool.stats()
    with pytest.raises(ValueError, match="page 0 has ref 0, needs 1"):
        pool.free([1, 0])
    assert pool.ref_count(1) == 1
    assert pool.stats() == before
    pool.check_integrity()


def test_page_listed_twice_in_one_free_is_a_double_free():
    pool, _ = make_pool(2)
    pool.allocate(1)
    with pytest.raises(ValueError, match="page 0 has ref 1, needs 2"):
        pool.free([0, 0])
    assert pool.ref_count(0) == 1


def test_out_of_range_page_id_is_rejected():
    # A negative id would otherwise silently index from the end of the ref list.
    pool, _ = make_pool(2)
    pool.allocate(2)
    with pytest.raises(ValueError, match="not in"):
        pool.free([-1])
    assert [pool.ref_count(p) for p in range(2)] == [1, 1]


def test_freed_hashed_page_stays_cached_and_is_matched_later():
    pool, _ = make_pool(4)
    cache_new_pages(pool, [h(0), h(1)])
    pool.free([1, 0])
    assert pool.stats() == PagePoolStats(4, 2, 2, 0, 4)
    assert pool.match_prefix([h(0), h(1)]) == [0, 1]
    assert [pool.ref_count(0), pool.ref_count(1)] == [1, 1]
    assert pool.stats() == PagePoolStats(4, 2, 0, 2, 2)


def test_allocate_prefers_never_used_pages_over_cached_ones():
    pool, events = make_pool(4)
    cache_new_pages(pool, [h(0), h(1)])
    pool.free([0, 1])
    assert pool.allocate(2) == [2, 3]
    assert [e.kind for e in events] == [STORED, STORED]
    assert pool.peek_prefix([h(0), h(1)]) == 2


def test_eviction_under_pressure_takes_least_recently_released_first():
    pool, events = make_pool(3)
    cache_new_pages(pool, [h(0), h(1), h(2)])
    pool.free([2])
    pool.free([0])
    pool.free([1])
    assert pool.allocate(2) == [2, 0]
    assert events[3:] == [PageEvent(REMOVED, h(2), 4), PageEvent(REMOVED, h(0), 5)]
    assert [pool.page_hash(2), pool.page_hash(0)] == [None, None]
    assert pool.match_prefix([h(1)]) == [1]


def test_matched_idle_page_leaves_lru_and_cannot_be_evicted():
    pool, _ = make_pool(2)
    cache_new_pages(pool, [h(0), h(1)])
    pool.free([0, 1])
    assert pool.match_prefix([h(0)]) == [0]
    assert pool.allocate(1) == [1]
    assert not pool.can_allocate(1)
    assert pool.page_hash(0) == h(0)


def test_match_stops_at_first_missing_hash():
    # h(3) is held but after a gap: a non-leading page is useless for a prefix hit.
    pool, _ = make_pool(4)
    cache_new_pages(pool, [h(0), h(1), h(3)])
    pool.free([2, 1, 0])
    assert pool.peek_prefix([h(0), h(1), h(2), h(3)]) == 2
    assert pool.match_prefix([h(0), h(1), h(2), h(3)]) == [0, 1]
    assert [pool.ref_count(p) for p in range(3)] == [1, 1, 0]


def test_match_miss_changes_nothing():
    pool, events = make_pool(4)
    cache_new_pages(pool, [h(0)])
    pool.free([0])
    before = pool.stats()
    assert pool.match_prefix([h(9), h(0)]) == []
    assert pool.stats() == before
    assert len(events) == 1


def test_duplicate_hash_keeps_first_mapping_and_second_page_stays_plain():
    # Two requests computed the same prefix concurrently: one copy is enough.
    pool, events = make_pool(4)
    first, second = pool.allocate(2)
    assert pool.cache_page(first, h(0))
    assert not pool.cache_page(second, h(0))
    assert pool.page_hash(second) is None
    pool.free([second])
    assert pool.stats().num_free == 3
    assert pool.match_prefix([h(0)]) == [first]
    assert events == [PageEvent(STORED, h(0), 1)]


def test_recaching_same_page_and_hash_is_a_silent_noop():
    pool, events = make_pool(2)
    [page] = cache_new_pages(pool, [h(0)])
    assert pool.cache_page(page, h(0))
    assert events == [PageEvent(STORED, h(0), 1)]


def test_rehashing_a_page_with_another_hash_raises():
    pool, _ = make_pool(2)
    [page] = cache_new_pages(pool, [h(0)])
    with pytest.raises(ValueError, match="already hashed"):
        pool.cache_page(page, h(1))
    assert pool.peek_prefix([h(1)]) == 0


def test_caching_an_unallocated_page_raises():
    pool, events = make_pool(2)
    with pytest.raises(ValueError, match="not allocated"):
        pool.cache_page(0, h(0))
    assert events == []


def test_exhaustion_raises_without_side_effects():
    pool, events = make_pool(3)
    cache_new_pages(pool, [h(0), h(1)])
    pool.free([0])  # 1 free + 1 idle-cached = 2 available
    before = pool.stats()
    assert pool.can_allocate(2) and not pool.can_allocate(3)
    with pytest.raises(PagePoolExhausted):
        pool.allocate(3)
    assert pool.stats() == before
    assert pool.page_hash(0) == h(0)
    assert len(events) == 2


def test_lease_pin_outlives_the_request_until_released():
    # Prefill hands off pages under a lease: the request's free must not release them.
    pool, _ = make_pool(1)
    [page] = cache_new_pages(pool, [h(0)])
    pool.incref([page])
    pool.free([page])  # request finished
    assert pool.ref_count(page) == 1
    assert not pool.can_allocate(1)
    pool.free([page])  # lease released
    assert pool.stats() == PagePoolStats(1, 0, 1, 0, 1)


def test_incref_on_unheld_page_raises_and_changes_nothing():
    pool, _ = make_pool(2)
    [page] = cache_new_pages(pool, [h(0)])
    pool.free([page])
    with pytest.raises(ValueError, match="page 0 has ref 0, needs 1"):
        pool.incref([page])
    assert pool.stats() == PagePoolStats(2, 1, 1, 0, 2)


def test_events_tell_a_store_evict_restore_story():
    pool, events = make_pool(1)
    cache_new_pages(pool, [h(0)])
    pool.free([0])
    cache_new_pages(pool, [h(1)])  # evicts h(0) to make room
    pool.free([0])
    assert pool.reset_prefix_cache() == 1
    cache_new_pages(pool, [h(0)])  # recomputed and stored again
    assert events == [
        PageEvent(STORED, h(0), 1),
        PageEvent(REMOVED, h(0), 2),
        PageEvent(STORED, h(1), 3),
        PageEvent(REMOVED, h(1), 4),
        PageEvent(STORED, h(0), 5),
    ]


def test_reset_prefix_cache_keeps_hashed_pages_still_in_use():
    pool, events = make_pool(3)
    cache_new_pages(pool, [h(0), h(1), h(2)])
    pool.free([2, 0])
    assert pool.reset_prefix_cache() == 2
    assert [e.page_hash for e in events if e.kind is REMOVED] == [h(2), h(0)]
    assert pool.peek_prefix([h(1)]) == 1
    assert pool.stats() == PagePoolStats(3, 2, 0, 1, 2)


@pytest.mark.parametrize(
    ("field", "key", "value", "message"),
    [
        ("_ref", 3, 1, "page 3 has ref 1 but is free or idle"),
        ("_ref", 0, 0, "page 0 has ref 0 but is neither free nor idle"),
        ("_hash_of", 3, h(7), "free page 3 is hashed"),
        ("_page_of_hash", h(0), 1, "page 0 has hash .* but the map disagrees"),
        ("_free", 0, 2, r"both free and idle-cached: \[2\]"),
    ],
)
def test_check_integrity_detects_corrupted_state(field, key, value, message):
    pool, _ = make_pool(4)
    cache_new_pages(pool, [h(0), h(1), h(2)])
    pool.free([2])  # pages: 0, 1 in use; 2 idle-cached; 3 free
    pool.check_integrity()
    getattr(pool, field)[key] = value
    with pytest.raises(AssertionError, match=message):
        pool.check_integrity()


HASHES = [bytes([i]) * 4 for i in range(6)]  # few values, so matches and duplicates happen


class PagePoolMachine(RuleBasedStateMachine):
    """Random operations against a model of who holds which reference."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[PageEvent] = []
        self.pool = PagePool(8, page_size=4, on_event=self.events.append)
        self.held: list[int] = []  # one entry per reference the test owns

    @rule(n=st.integers(0, 10))
    def allocate(self, n: int) -> None:
        if self.pool.can_allocate(n):
            self.held += self.pool.allocate(n)
            return
        before = self.pool.stats()
        with pytest.raises(PagePoolExhausted):
            self.pool.allocate(n)
        assert self.pool.stats() == before

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def free_some(self, data: st.DataObject) -> None:
        idx = data.draw(st.sets(st.integers(0, len(self.held) - 1), min_size=1))
        self.pool.free([self.held[i] for i in idx])
        self.held = [p for i, p in enumerate(self.held) if i not in idx]

    @rule(page_id=st.integers(0, 7))
    def double_free_is_rejected(self, page_id: int) -> None:
        extra = self.held.count(page_id) + 1
        with pytest.raises(ValueError):
            self.pool.free([page_id] * extra)

    @precondition(lambda self: self.held)
    @rule(data=st.data(), page_hash=st.sampled_from(HASHES))
    def cache(self, data: st.DataObject, page_hash: bytes) -> None:
        page_id = data.draw(st.sampled_from(self.held))
        if self.pool.page_hash(page_id) in (None, page_hash):
            self.pool.cache_page(page_id, page_hash)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def lease(self, data: st.DataObject) -> None:
        page_id = data.draw(st.sampled_from(self.held))
        self.pool.incref([page_id])
        self.held.append(page_id)

    @rule(hashes=st.lists(st.sampled_from(HASHES), max_size=4))
    def match(self, hashes: list[bytes]) -> None:
        expected_len = self.pool.peek_prefix(hashes)
        page_ids = self.pool.match_prefix(hashes)
        assert len(page_ids) == expected_len
        assert [self.pool.page_hash(p) for p in page_ids] == hashes[:expected_len]
        self.held += page_ids

    @rule()
    def reset(self) -> None:
        self.pool.reset_prefix_cache()

    @invariant()
    def integrity_and_model_agree(self) -> None:
        self.pool.check_integrity()
        assert [self.pool.ref_count(p) for p in range(8)] == [self.held.count(p) for p in range(8)]
        assert self.pool.num_request_pages() == len(set(self.held))

    @invariant()
    def events_replay_to_the_pools_hashes(self) -> None:
        # What the prefix index would hold after applying every event, in order.
        replayed: set[bytes] = set()
        for seq, event in enumerate(self.events, start=1):
            assert event.seq == seq
            if event.kind is STORED:
                replayed.add(event.page_hash)
            else:
                replayed.remove(event.page_hash)
        held_hashes = {self.pool.page_hash(p) for p in range(8)} - {None}
        assert replayed == held_hashes


PagePoolMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=50, deadline=None, database=None
)
test_page_pool_random_operations = PagePoolMachine.TestCase
