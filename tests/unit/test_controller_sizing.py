"""The ratio controller's sizing (pure): load, request mix, SLO feedback, bounds, budget."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pdserve.controller.pools import ByPool
from pdserve.controller.reasons import Reason
from pdserve.controller.signals import Signals
from pdserve.controller.sizing import PoolBounds, SizingPolicy, desired_sizes

# One prefill worker plans for 2000 × 0.8 = 1600 uncached prompt tokens/s, one decode worker
# for 500 × 0.8 = 400 generated tokens/s.
CAPACITY = ByPool(prefill=2000.0, decode=500.0)
CURRENT = ByPool(prefill=2, decode=2)


def make_policy(
    min_prefill: int = 1,
    max_prefill: int = 16,
    min_decode: int = 1,
    max_decode: int = 16,
    max_total_workers: int | None = None,
) -> SizingPolicy:
    return SizingPolicy(
        target_utilization=0.8,
        slo_attainment_target=0.9,
        bounds=ByPool(PoolBounds(min_prefill, max_prefill), PoolBounds(min_decode, max_decode)),
        max_total_workers=max_total_workers,
    )


def make_signals(
    request_rate: float = 10.0,
    input_len: float = 500,
    output_len: float = 100,
    hit_ratio: float = 0.0,
    ttft_attainment: float | None = 1.0,
    tpot_attainment: float | None = 1.0,
) -> Signals:
    prompt_tokens_per_s = request_rate * input_len
    return Signals(
        interval_s=30.0,
        request_rate=request_rate,
        prompt_tokens_per_s=prompt_tokens_per_s,
        uncached_prompt_tokens_per_s=prompt_tokens_per_s * (1 - hit_ratio),
        generation_tokens_per_s=request_rate * output_len,
        ttft_attainment=ttft_attainment,
        tpot_attainment=tpot_attainment,
        mean_queue_s=0.01,
    )


def sizes(signals: Signals, policy: SizingPolicy | None = None, current=CURRENT) -> tuple:
    desired = desired_sizes(signals, current, CAPACITY, policy or make_policy())
    return (desired.prefill.replicas, desired.decode.replicas)


def test_each_pool_is_its_token_rate_over_planned_capacity():
    # 10 req/s × 500 prompt tokens = 5000 tok/s ÷ 1600 = 3.1 → 4; × 100 out = 1000 ÷ 400 → 3.
    desired = desired_sizes(make_signals(), CURRENT, CAPACITY, make_policy())
    assert (desired.prefill.replicas, desired.prefill.reason) == (4, Reason.LOAD)
    assert (desired.decode.replicas, desired.decode.reason) == (3, Reason.LOAD)
    assert (desired.prefill.load_replicas, desired.decode.load_replicas) == (4, 3)


def test_a_demand_of_exactly_n_workers_is_n_workers():
    # 8 × 400 = 3200 tok/s = 2 × 1600, 8 × 100 = 800 = 2 × 400: no extra worker from rounding.
    assert sizes(make_signals(request_rate=8, input_len=400, output_len=100)) == (2, 2)


def test_longer_prompts_need_more_prefill_and_the_same_decode():
    # At one request rate, 1000-token prompts are 10000 tok/s ÷ 1600 → 7.
    assert sizes(make_signals(input_len=500)) == (4, 3)
    assert sizes(make_signals(input_len=1000)) == (7, 3)


def test_longer_outputs_need_more_decode_and_the_same_prefill():
    # 300-token outputs: 3000 tok/s ÷ 400 → 8.
    assert sizes(make_signals(output_len=300)) == (4, 8)


def test_prefix_cache_hits_lower_prefill_only():
    # Half the prompt served from cache: 2500 uncached tok/s ÷ 1600 → 2.
    assert sizes(make_signals(hit_ratio=0.5)) == (2, 3)


def test_missed_ttft_gives_prefill_one_worker_more_than_it_has():
    # Load asks for 2 prefill workers (3200 tok/s), but 80% of TTFTs met the objective.
    desired = desired_sizes(
        make_signals(request_rate=8, input_len=400, ttft_attainment=0.8),
        CURRENT,
        CAPACITY,
        make_policy(),
    )
    assert (desired.prefill.replicas, desired.prefill.reason) == (3, Reason.TTFT_SLO)
    assert (desired.decode.replicas, desired.decode.reason) == (2, Reason.LOAD)


def test_missed_tpot_gives_decode_one_worker_more_than_it_has():
    desired = desired_sizes(
        make_signals(request_rate=8, input_len=400, tpot_attainment=0.5),
        CURRENT,
        CAPACITY,
        make_policy(),
    )
    assert (desired.prefill.replicas, desired.prefill.reason) == (2, Reason.LOAD)
    assert (desired.decode.replicas, desired.decode.reason) == (3, Reason.TPOT_SLO)


def test_a_missed_slo_does_not_lower_what_load_asks_for():
    # Load asks 4 prefill workers; the SLO miss alone would ask 2 + 1.
    desired = desired_sizes(make_signals(ttft_attainment=0.5), CURRENT, CAPACITY, make_policy())
    assert (desired.prefill.replicas, desired.prefill.reason) == (4, Reason.LOAD)


def test_no_latency_observed_means_no_slo_feedback():
    signals = make_signals(request_rate=8, input_len=400, ttft_attainment=None)
    assert sizes(signals) == (2, 2)


def test_an_idle_cluster_keeps_each_pool_at_its_minimum_never_zero():
    desired = desired_sizes(make_signals(request_rate=0), CURRENT, CAPACITY, make_policy())
    assert (desired.prefill.replicas, desired.prefill.reason) == (1, Reason.AT_MIN)
    assert (desired.decode.replicas, desired.decode.reason) == (1, Reason.AT_MIN)
    assert sizes(make_signals(request_rate=0), make_policy(min_prefill=2, min_decode=3)) == (2, 3)


def test_each_pool_is_capped_at_its_maximum_even_missing_its_slo():
    policy = make_policy(max_prefill=4, max_decode=2)
    current = ByPool(prefill=4, decode=2)
    desired = desired_sizes(
        make_signals(input_len=5000, ttft_attainment=0.1, tpot_attainment=0.1),
        current,
        CAPACITY,
        policy,
    )
    assert (desired.prefill.replicas, desired.prefill.reason) == (4, Reason.AT_MAX)
    assert (desired.decode.replicas, desired.decode.reason) == (2, Reason.AT_MAX)


def test_over_budget_the_pools_split_it_by_their_desired_ratio():
    # Desired 4 prefill : 12 decode (output 480 tok → 4800 ÷ 400); a budget of 8 → 2 + 6.
    desired = desired_sizes(
        make_signals(output_len=480), CURRENT, CAPACITY, make_policy(max_total_workers=8)
    )
    assert (desired.prefill.replicas, desired.decode.replicas) == (2, 6)
    assert desired.prefill.reason == desired.decode.reason == Reason.BUDGET


def test_a_budget_split_keeps_each_pool_at_its_minimum():
    # 1 prefill : 15 decode of 4 would round prefill to 0 → its minimum 2, decode the rest.
    policy = make_policy(min_prefill=2, max_total_workers=4)
    assert sizes(make_signals(request_rate=1, output_len=6000), policy) == (2, 2)


def test_within_budget_nothing_changes():
    assert sizes(make_signals(), make_policy(max_total_workers=7)) == (4, 3)


@given(
    request_rate=st.floats(0, 1000),
    input_len=st.floats(0, 8000),
    output_len=st.floats(0, 2000),
    ttft=st.none() | st.floats(0, 1),
    tpot=st.none() | st.floats(0, 1),
    current=st.tuples(st.integers(1, 20), st.integers(1, 20)),
    budget=st.none() | st.integers(2, 24),
)
def test_desired_sizes_always_lie_within_bounds_and_budget(
    request_rate, input_len, output_len, ttft, tpot, current, budget
):
    policy = make_policy(max_prefill=12, max_decode=10, max_total_workers=budget)
    signals = make_signals(request_rate, input_len, output_len, 0.0, ttft, tpot)
    prefill, decode = sizes(signals, policy, ByPool(*current))
    assert 1 <= prefill <= 12 and 1 <= decode <= 10
    assert budget is None or prefill + decode <= budget
