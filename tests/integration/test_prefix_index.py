"""One behaviour suite for every PrefixIndex backend (the rules: router/prefix_index.py).

Each test runs against InMemoryPrefixIndex and against RedisPrefixIndex on a real
redis-server (tests/redis_server.py, flushed per test). Page hashes are real chain hashes
(kv_transfer.pages) of a 16-token-page prompt; `PAGE[i]` is page i. A property test feeds
the same random event streams to both backends and expects the same answers; the Redis
faults (AUTH, restart, kill, pause) are in test_redis_index.py.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kv_transfer.pages import page_hashes
from router.prefix_index import ApplyResult, EventBatch, IndexEvent, InMemoryPrefixIndex
from router.redis_index import RedisPrefixIndex

PAGE = page_hashes(list(range(8 * 16)), page_size=16)
EPOCH = 1_700_000_000_000_000_000  # a time_ns epoch: beyond a float's exact integers


def stored(first_seq: int, *pages: int) -> list[IndexEvent]:
    """Pages stored as events first_seq, first_seq + 1, …"""
    return [IndexEvent(True, PAGE[p], first_seq + i) for i, p in enumerate(pages)]


def removed(first_seq: int, *pages: int) -> list[IndexEvent]:
    return [IndexEvent(False, PAGE[p], first_seq + i) for i, p in enumerate(pages)]


def batch(events: list[IndexEvent], worker: str = "w0", epoch: int = EPOCH) -> EventBatch:
    return EventBatch(worker, epoch, tuple(events), last_seq=events[-1].seq)


def snapshot(last_seq: int, *pages: int, worker: str = "w0", epoch: int = EPOCH) -> EventBatch:
    events = tuple(IndexEvent(True, PAGE[p], last_seq) for p in pages)
    return EventBatch(worker, epoch, events, last_seq, reset=True)


@pytest_asyncio.fixture(params=["memory", "redis"], loop_scope="function")
async def make_index(request):
    """Makes indexes of the test's backend (Redis on the flushed session server)."""
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    made = []

    def make(ttl_s: float = 60.0):
        made.append(InMemoryPrefixIndex(ttl_s) if url is None else RedisPrefixIndex(url, ttl_s))
        return made[-1]

    yield make
    for index in made:
        await index.close()


@pytest.fixture
def index(make_index):
    return make_index()


async def test_an_empty_index_matches_nothing(index):
    assert await index.lookup(PAGE) == {}
    assert await index.lookup([]) == {}


async def test_lookup_counts_the_leading_pages_each_worker_holds(index):
    await index.apply(batch(stored(1, 0, 1, 2, 4)))  # page 3 missing: the match ends there
    await index.apply(batch(stored(1, 0, 1, 2, 3, 4, 5, 6, 7), worker="w1"))
    await index.apply(batch(stored(1, 1, 2, 3), worker="w2"))  # no page 0: never a match
    assert await index.lookup(PAGE) == {"w0": 3, "w1": 8}
    assert await index.lookup(PAGE[:2]) == {"w0": 2, "w1": 2}
    assert await index.lookup(PAGE[1:]) == {"w0": 2, "w1": 7, "w2": 3}


async def test_removed_pages_end_the_match(index):
    await index.apply(batch(stored(1, 0, 1, 2, 3)))
    assert await index.apply(batch(removed(5, 2))) == ApplyResult(1)
    assert await index.lookup(PAGE) == {"w0": 2}
    await index.apply(batch(removed(6, 0)))
    assert await index.lookup(PAGE) == {}


async def test_replayed_events_are_skipped(index):
    """A reconnecting feed, or a second router, delivers events the index already has."""
    assert await index.apply(batch(stored(1, 0, 1))) == ApplyResult(2)
    assert await index.apply(batch(stored(1, 0, 1))) == ApplyResult(0)
    assert await index.apply(batch(stored(2, 1, 2))) == ApplyResult(1)  # seq 2 skipped, 3 new
    assert await index.lookup(PAGE) == {"w0": 3}


async def test_an_older_batch_arriving_late_changes_nothing(index):
    await index.apply(batch(stored(1, 0, 1, 2, 3)))
    assert await index.apply(batch(removed(2, 0))) == ApplyResult(0)
    assert await index.lookup(PAGE) == {"w0": 4}


async def test_a_gap_is_reported_and_the_batch_still_applied(index):
    await index.apply(batch(stored(1, 0)))
    assert await index.apply(batch(stored(3, 1, 2))) == ApplyResult(2, gap=True)  # 2 missed
    assert await index.lookup(PAGE) == {"w0": 3}
    assert await index.apply(batch(stored(5, 3))) == ApplyResult(1)


async def test_a_snapshot_replaces_the_whole_set(index):
    await index.apply(batch(stored(1, 0, 1, 2, 3)))
    assert await index.apply(snapshot(10, 0, 5)) == ApplyResult(2)
    assert await index.lookup(PAGE) == {"w0": 1}
    assert await index.apply(batch(stored(11, 1))) == ApplyResult(1)  # events go on from 10
    assert await index.lookup(PAGE) == {"w0": 2}


async def test_an_older_snapshot_is_stale(index):
    await index.apply(batch(stored(1, 0, 1, 2, 3, 4)))
    assert await index.apply(snapshot(3, 7)) == ApplyResult(0, stale=True)
    assert await index.lookup(PAGE) == {"w0": 5}


async def test_a_newer_epoch_purges_the_old_incarnation(index):
    await index.apply(batch(stored(1, 0, 1, 2)))
    restarted = batch(stored(1, 0, 3), epoch=EPOCH + 1)  # seqs restart at 1: no gap
    assert await index.apply(restarted) == ApplyResult(2)
    assert await index.lookup(PAGE) == {"w0": 1}


@pytest.mark.parametrize(("old", "new"), [(9, 10), (99, 100), (999_999_999, 10**18)])
async def test_epochs_compare_as_numbers_whatever_their_digit_counts(index, old, new):
    await index.apply(batch(stored(1, 0, 1), epoch=old))
    assert await index.apply(batch(stored(1, 2), epoch=new)) == ApplyResult(1)
    assert await index.apply(batch(stored(2, 0), epoch=old)) == ApplyResult(0, stale=True)
    assert await index.lookup([PAGE[2]]) == {"w0": 1}
    assert await index.lookup(PAGE) == {}


async def test_an_older_epoch_is_stale(index):
    await index.apply(batch(stored(1, 0), epoch=EPOCH + 1))
    assert await index.apply(batch(stored(7, 0, 1, 2))) == ApplyResult(0, stale=True)
    assert await index.apply(snapshot(9, 0, 1)) == ApplyResult(0, stale=True)
    assert await index.lookup(PAGE) == {"w0": 1}


async def test_entries_vanish_after_ttl_as_if_purged(make_index):
    index = make_index(ttl_s=0.3)
    await index.apply(batch(stored(1, 0, 1), epoch=EPOCH + 1))
    await asyncio.sleep(0.4)
    assert await index.lookup(PAGE) == {}
    # nothing remembers the newer epoch either
    assert await index.apply(batch(stored(1, 0))) == ApplyResult(1)


async def test_refresh_extends_live_workers_only(make_index):
    index = make_index(ttl_s=0.4)
    await index.apply(batch(stored(1, 0)))
    await index.apply(batch(stored(1, 0, 1), worker="w1"))
    await asyncio.sleep(0.25)
    await index.refresh(["w0"])
    await asyncio.sleep(0.25)  # w1's ttl is over, w0's refreshed one is not
    assert await index.lookup(PAGE) == {"w0": 1}
    await index.refresh(["w0", "w1"])  # an expired worker stays expired
    await asyncio.sleep(0.25)
    assert await index.lookup(PAGE) == {"w0": 1}
    await asyncio.sleep(0.25)
    assert await index.lookup(PAGE) == {}


async def test_one_workers_expiry_leaves_the_others(make_index):
    index = make_index(ttl_s=0.3)
    await index.apply(batch(stored(1, 0)))
    await asyncio.sleep(0.2)
    await index.apply(batch(stored(1, 0, 1), worker="w1"))
    await asyncio.sleep(0.2)
    assert await index.lookup(PAGE) == {"w1": 2}


async def test_purge_forgets_one_worker_and_its_epoch(index):
    await index.apply(batch(stored(1, 0, 1), epoch=EPOCH + 1))
    await index.apply(batch(stored(1, 0), worker="w1"))
    await index.purge("w0")
    await index.purge("w0")
    assert await index.lookup(PAGE) == {"w1": 1}
    assert await index.apply(batch(stored(1, 0))) == ApplyResult(1)  # older epoch: accepted
    assert await index.lookup(PAGE) == {"w0": 1, "w1": 1}


@st.composite
def batches(draw) -> EventBatch:
    """A batch for worker a or b with seqs around the applied one: replays, gaps, epochs."""
    changes = draw(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), max_size=4))
    first_seq, reset = draw(st.integers(1, 8)), draw(st.booleans())
    if reset:
        events = [IndexEvent(True, PAGE[p], first_seq) for _, p in changes]
    else:
        events = [IndexEvent(s, PAGE[p], first_seq + i) for i, (s, p) in enumerate(changes)]
    worker, epoch = draw(st.sampled_from("ab")), EPOCH + draw(st.integers(0, 2))
    last_seq = events[-1].seq if events else first_seq
    return EventBatch(worker, epoch, tuple(events), last_seq, reset)


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=st.lists(st.one_of(batches(), st.sampled_from("ab")), max_size=12))
async def test_both_backends_agree_on_random_streams(redis_url, steps):
    """Replays, gaps, epochs, snapshots and purges in any order: same results, same lookups.

    Each example gets its own key prefix: the per-test flush runs once, not per example."""
    memory = InMemoryPrefixIndex(60.0)
    redis = RedisPrefixIndex(redis_url, 60.0, key_prefix=f"prop-{uuid.uuid4().hex}")
    try:
        for step in steps:
            if isinstance(step, str):  # a worker id: purge it
                await asyncio.gather(memory.purge(step), redis.purge(step))
            else:
                assert await redis.apply(step) == await memory.apply(step)
            for chain in (PAGE[:6], PAGE[3:6] + PAGE[:3]):
                assert await redis.lookup(chain) == await memory.lookup(chain)
    finally:
        await redis.close()
