"""B3's pure plumbing: the seeded open-loop schedule, when a window counts as sustained, how
added TTFT is paired round by round, and the routing decision it times. The benchmark itself
(servers, seconds of load) runs with `python -m bench --only B3`."""

from __future__ import annotations

import os
from itertools import pairwise

from bench import b3_router_latency as b3
from bench.router_latency_load import Schedule, Target, Window, process_cpu_s
from kv_transfer.pages import Role, TransportBackend


def make_window(
    target: Target,
    ttft_ms: list[float],
    num_errors: int = 0,
    last_done_s: float = 1.0,
    rate_per_s: float = 100,
) -> Window:
    num_requests = len(ttft_ms) + num_errors
    return Window(
        target=target,
        rate_per_s=rate_per_s,
        ttft_s=[t / 1e3 for t in ttft_ms],
        lag_s=[0.0] * num_requests,
        num_requests=num_requests,
        errors={"UNAVAILABLE": num_errors} if num_errors else {},
        last_due_s=1.0,
        last_sent_s=1.0,
        last_done_s=last_done_s,
        cpu_s={"client": 0.1, "router": 0.2, "worker": 0.1},
    )


def test_schedule_is_seeded_increasing_and_near_its_rate():
    schedule = Schedule(rate_per_s=500, num_requests=4000, seed=7)
    offsets = schedule.offsets_s()
    assert offsets == Schedule(500, 4000, seed=7).offsets_s()
    assert offsets != Schedule(500, 4000, seed=8).offsets_s()
    assert len(offsets) == 4000 and all(b > a for a, b in pairwise(offsets))
    # 4000 exponential gaps of mean 2 ms: the total is within a few percent of 8 s
    assert 7.5 < offsets[-1] < 8.5


def test_a_window_is_sustained_only_without_errors_and_within_5_percent_of_offered():
    # 100 requests offered over 1 s: done by 1.05 s keeps up, by 1.1 s falls behind
    assert make_window(Target.ROUTER, [1.0] * 100, last_done_s=1.05).is_sustained
    assert not make_window(Target.ROUTER, [1.0] * 100, last_done_s=1.1).is_sustained
    assert not make_window(Target.ROUTER, [1.0] * 99, num_errors=1).is_sustained


def test_added_ttft_is_router_minus_direct_per_round_then_the_median():
    # rounds add 1, 3 and 2 ms at p50 (nearest rank of 3 samples is the middle one)
    windows = {
        Target.DIRECT: [make_window(Target.DIRECT, [1, 2, 3]) for _ in range(3)],
        Target.ROUTER: [
            make_window(Target.ROUTER, [2, 3, 4]),
            make_window(Target.ROUTER, [4, 5, 6]),
            make_window(Target.ROUTER, [3, 4, 5]),
        ],
    }
    row = b3.rate_row(100, windows)
    assert row["added_ttft_ms"]["p50"] == {"median": 2.0, "min": 1.0, "max": 3.0}
    assert row["arms"][Target.ROUTER]["cpu_us_per_request"]["router"]["median"] == 0.2 / 3 * 1e6


def test_throughput_is_the_highest_rate_every_round_sustained():
    def row(rate: int, router_ok: bool) -> dict:
        arms = {Target.ROUTER: {"is_sustained": router_ok}, Target.DIRECT: {"is_sustained": True}}
        return {"rate_per_s": rate, "arms": arms}

    rows = [row(100, True), row(500, True), row(1000, False), row(2000, True)]
    assert b3.throughput_row(rows) == {"router_per_s": 2000, "direct_per_s": 2000}
    assert b3.throughput_row(rows[:3]) == {"router_per_s": 500, "direct_per_s": 1000}


async def test_the_timed_decision_routes_a_2k_prompt_to_the_prefill_worker_holding_its_prefix():
    workers = b3.decision_snapshot()
    assert [w.role for w in workers] == [Role.PREFILL] * 4 + [Role.DECODE] * 4
    prompt = list(range(2048))
    index = await b3.decision_index(workers, prompt)
    config = b3.PolicyConfig(b3.PolicyName.PREFIX_AWARE, colocate_threshold_tokens=32)
    decision = await b3.route_decision(workers, prompt, index, config)
    # prefill-1 holds the first 1,024 tokens: 64 pages of 16
    assert decision.prefill is not None and decision.prefill.worker_id == "prefill-1"
    assert decision.expected_hit_pages == 64
    assert decision.decode.role is Role.DECODE
    assert decision.kv_backend is TransportBackend.SHM  # one node, CPU caches


def test_process_cpu_reads_this_process_cpu_time():
    before = process_cpu_s(os.getpid())
    sum(i * i for i in range(2_000_000))  # ~0.1 s of CPU, ten clock ticks
    assert process_cpu_s(os.getpid()) > before > 0
