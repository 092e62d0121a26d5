"""PagePool prefix cache: hash registration, match/peek, LRU eviction, reset, events."""

from __future__ import annotations

import pytest

from engine.page_pool import PageEvent, PagePoolStats
from tests.unit.page_pool_helpers import REMOVED, STORED, cache_new_pages, h, make_pool


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
