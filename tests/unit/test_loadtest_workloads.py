"""loadtest/workloads.py and the open loop's arrival gaps: seeded, reproducible, in bounds."""

from __future__ import annotations

import statistics

import pytest

from loadtest.runner import LoadPlan, arrival_gaps_s
from loadtest.workloads import (
    LengthDist,
    MultiTurnShape,
    RandomShape,
    SharedPrefixShape,
    VocabRange,
    make_requests,
)

RANDOM = RandomShape(200, LengthDist.uniform(10, 20), LengthDist.fixed(7))


def test_the_same_seed_draws_the_same_workload_and_another_seed_does_not():
    assert make_requests(RANDOM, seed=3) == make_requests(RANDOM, seed=3)
    assert make_requests(RANDOM, seed=3) != make_requests(RANDOM, seed=4)


def test_random_lengths_and_token_ids_stay_within_their_bounds():
    vocab = VocabRange(300, 310)
    requests = make_requests(RANDOM, seed=0, vocab=vocab)
    assert [r.index for r in requests] == list(range(200))
    assert {r.max_tokens for r in requests} == {7}
    assert min(r.prompt_len for r in requests) == 10 and max(r.prompt_len for r in requests) == 20
    assert {t for r in requests for t in r.prompt_token_ids} <= set(range(300, 310))


def test_shared_prefix_groups_share_exactly_their_prefix_and_interleave():
    shape = SharedPrefixShape(3, 4, 16, LengthDist.fixed(5), LengthDist.fixed(2))
    requests = make_requests(shape, seed=1)
    assert len(requests) == 12 and all(r.prompt_len == 21 for r in requests)
    for group in range(3):
        members = [r for r in requests if r.group == group]
        assert len(members) == 4
        assert len({r.prompt_token_ids[:16] for r in members}) == 1
    assert len({r.prompt_token_ids[:16] for r in requests}) == 3
    assert [r.group for r in requests] != sorted(r.group for r in requests)  # shuffled


def test_each_turn_extends_the_previous_prompt_by_its_answer_and_a_new_question():
    shape = MultiTurnShape(2, 3, LengthDist.fixed(4), LengthDist.fixed(6))
    requests = make_requests(shape, seed=2)
    assert [(r.turn, r.group) for r in requests] == [(t, c) for t in range(3) for c in range(2)]
    for conversation in range(2):
        turns = [r for r in requests if r.group == conversation]
        assert [r.prompt_len for r in turns] == [4, 14, 24]
        for earlier, later in zip(turns, turns[1:], strict=False):
            assert later.prompt_token_ids[: earlier.prompt_len] == earlier.prompt_token_ids


@pytest.mark.parametrize("text, low, high", [("128", 128, 128), ("64:256", 64, 256)])
def test_length_flags_parse_as_fixed_or_uniform(text, low, high):
    dist = LengthDist.parse(text)
    assert (dist.low, dist.high) == (low, high)


@pytest.mark.parametrize("text", ["0", "20:10", "ten", "5:"])
def test_bad_lengths_are_refused_naming_the_text(text):
    with pytest.raises(ValueError, match=repr(text)):
        LengthDist.parse(text)


def test_gaps_average_one_over_rate_and_burstiness_widens_their_spread():
    poisson = arrival_gaps_s(LoadPlan(rate=10, seed=0), 20_000)
    bursty = arrival_gaps_s(LoadPlan(rate=10, burstiness=4, seed=0), 20_000)
    assert statistics.fmean(poisson) == pytest.approx(0.1, rel=0.03)
    assert statistics.fmean(bursty) == pytest.approx(0.1, rel=0.06)
    # gamma(shape k): coefficient of variation 1/sqrt(k): 1 for Poisson, 2 at burstiness 4.
    assert statistics.stdev(poisson) / 0.1 == pytest.approx(1, rel=0.05)
    assert statistics.stdev(bursty) / 0.1 == pytest.approx(2, rel=0.1)
    assert arrival_gaps_s(LoadPlan(rate=10, seed=0), 5) == poisson[:5]


def test_an_infinite_rate_sends_everything_at_once():
    assert arrival_gaps_s(LoadPlan(rate=float("inf")), 3) == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "kwargs, fault",
    [
        ({}, "exactly one"),
        ({"rate": 1, "concurrency": 2}, "exactly one"),
        ({"rate": 0}, "rate"),
        ({"concurrency": 0}, "concurrency"),
        ({"rate": 1, "burstiness": 0}, "burstiness"),
    ],
)
def test_a_plan_names_what_is_wrong_with_it(kwargs, fault):
    with pytest.raises(ValueError, match=fault):
        LoadPlan(**kwargs)
