"""B4's pure parts: the seeded shared-prefix workload, the oracle bound, the figures of a run
and the routers each arm gets. The benchmark itself runs with `python -m bench --only B4`."""

from __future__ import annotations

import statistics

import pytest

from bench import b4_prefix_routing as b4
from bench.prefix_workload import (
    Outcome,
    RunFigures,
    Workload,
    WorkloadSpec,
    poisson_offsets_s,
)

SMALL = WorkloadSpec(num_groups=2, prompts_per_group=3, prefix_len=8, suffix_len=(3, 3))


def outcome(group: int, cached: int, sent_s: float, first_s: float, done_s: float, worker="p0"):
    return Outcome(group, 100, cached, sent_s, first_s, done_s, worker, is_ok=True)


def test_the_workload_is_seeded_and_each_prompt_is_its_groups_prefix_plus_its_own_suffix():
    workload = WorkloadSpec().draw()
    assert workload == WorkloadSpec().draw()
    assert len(workload.prompts) == 256
    for group in range(16):
        prompts = [p.token_ids for p in workload.prompts if p.group == group]
        assert len(prompts) == 16 and len({p[:1024] for p in prompts}) == 1
        assert all(32 <= len(p) - 1024 <= 64 for p in prompts)
        assert len({p[1024:] for p in prompts}) == 16  # every suffix its own
    assert len({p.token_ids[:1024] for p in workload.prompts}) == 16


def test_groups_arrive_interleaved():
    first = [p.group for p in WorkloadSpec().draw().prompts[:16]]
    assert len(set(first)) >= 8  # not group by group


def test_the_oracle_misses_only_each_groups_first_prompt():
    # 6 prompts of 11 tokens: 4 repeat a group, each reusing its 8-token prefix (2 pages of 4).
    workload = SMALL.draw()
    assert workload.num_prompt_tokens == 66
    assert workload.oracle_hit_rate(page_size=4) == 4 * 8 / 66


def test_the_oracle_reuses_only_the_prefixs_full_pages():
    # A 10-token prefix fills 2 pages of 4; its last 2 tokens share a page with the suffix.
    workload = WorkloadSpec(2, 3, prefix_len=10, suffix_len=(3, 3)).draw()
    assert workload.oracle_hit_rate(page_size=4) == 4 * 8 / 78


def test_the_static_partition_fits_when_each_workers_prefixes_and_one_prompt_do():
    workload = WorkloadSpec().draw()
    longest = max(len(p.token_ids) for p in workload.prompts)
    assert workload.fits_static_partition(4, cache_tokens=4 * 1024 + longest)
    assert not workload.fits_static_partition(4, cache_tokens=4 * 1024 + longest - 1)
    assert workload.prefix_tokens == 16 * 1024


def test_poisson_offsets_are_seeded_increasing_and_at_the_rate():
    offsets = poisson_offsets_s(100.0, 20_000)
    assert offsets == poisson_offsets_s(100.0, 20_000)
    assert all(a < b for a, b in zip(offsets, offsets[1:], strict=False))
    assert (
        abs(statistics.mean(b - a for a, b in zip(offsets, offsets[1:], strict=False)) - 0.01)
        < 0.0005
    )


def test_run_figures_weigh_hits_by_tokens_and_leave_failures_out():
    outcomes = [
        outcome(0, cached=0, sent_s=0.0, first_s=0.1, done_s=0.2),
        outcome(0, cached=80, sent_s=0.5, first_s=0.52, done_s=0.6, worker="p1"),
        outcome(1, cached=60, sent_s=1.0, first_s=1.3, done_s=2.0),
        Outcome(1, 100, 0, 1.5, None, 1.6, "", is_ok=False),
    ]
    figures = RunFigures.of(outcomes)
    assert (figures.num_ok, figures.num_errors) == (3, 1)
    assert figures.hit_rate == 140 / 300
    assert figures.throughput_per_s == 3 / 2.0
    assert (figures.ttft_p50_s, figures.ttft_p90_s) == (0.1, pytest.approx(0.3))
    assert figures.num_prefill_workers_per_group == (2 + 1) / 2


def test_the_oracle_gets_one_router_per_prefill_worker_and_the_others_one_for_all():
    addresses = [f"w{i}" for i in range(6)]  # 4 prefill, then 2 decode
    plans = b4.router_plans(b4.Arm.ORACLE, addresses)
    assert [plan.worker_addresses for plan in plans] == [(f"w{i}", "w4", "w5") for i in range(4)]
    (single,) = b4.router_plans(b4.Arm.ROUND_ROBIN, addresses)
    assert single.worker_addresses == tuple(addresses)
    assert single.config["routing_policy"] == "round_robin"
    for plan in [*plans, single]:
        assert plan.config["conditional_disaggregation"] is False
        assert plan.config["colocate_threshold_tokens"] == 0


def test_the_headline_is_the_median_of_the_rounds_paired_throughput_ratios():
    def run(throughput: float, hit: float = 0.5, p90: float = 0.1) -> b4.RunResult:
        figures = RunFigures(256, 0, hit, throughput, p90 / 2, p90, 1.0)
        return b4.RunResult(400.0, figures, {"client": 1.0})

    def round_(pa: float, rr: float) -> b4.Round:
        arms = {arm: run(rr) for arm in b4.Arm} | {b4.Arm.PREFIX_AWARE: run(pa, p90=0.01)}
        return {load: arms for load in b4.Load}

    value, details = b4.summarize([round_(200, 100), round_(300, 100), round_(90, 100)], _tiny())
    assert value == 2.0
    assert details["throughput_ratio_vs_round_robin"] == {"median": 2.0, "min": 0.9, "max": 3.0}
    assert details["p90_ttft_ratio_rr_over_prefix_aware"]["median"] == 10.0
    assert details["oracle_hit_rate_bound"] == round(32 / 70, 4)  # page 16: 2 prefix pages


def _tiny() -> Workload:
    return WorkloadSpec(num_groups=1, prompts_per_group=2, prefix_len=32, suffix_len=(3, 3)).draw()
