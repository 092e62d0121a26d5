"""PagePool: allocation order, ref counting, free, leases, exhaustion, integrity checks."""

from __future__ import annotations

import pytest

from engine.page_pool import PagePoolExhausted, PagePoolStats
from tests.unit.page_pool_helpers import cache_new_pages, h, make_pool


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
