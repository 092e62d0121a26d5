"""PagePool under random operations, checked against a model of who holds which reference."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engine.page_pool import PageEvent, PagePool, PagePoolExhausted
from tests.unit.page_pool_helpers import STORED

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
