"""Prefix-aware routing and conditional disaggregation: exact picks from index hints and load."""

from __future__ import annotations

from kv_transfer.pages import KVLayout, Role
from router.config import PolicyName
from router.policy import PolicyConfig, PolicyState, RouteInput, RouteReason, pick_route
from router.registry import WorkerLoad, WorkerRecord

LAYOUT = KVLayout(num_layers=2, num_kv_heads=1, head_dim=8, page_size=16, dtype="float32")
PREFIX_AWARE = PolicyConfig(PolicyName.PREFIX_AWARE, colocate_threshold_tokens=32)


def make_worker(worker_id: str, role: Role, **load) -> WorkerRecord:
    load.setdefault("pages_total", 1000)
    return WorkerRecord(worker_id, role, f"{worker_id}:1", 1, LAYOUT, load=WorkerLoad(**load))


def route(workers, prompt_len, matched=None, config=PREFIX_AWARE, turn=0):
    return pick_route(workers, RouteInput(prompt_len, matched or {}), config, PolicyState(turn))


def pair(decision) -> tuple[str | None, str]:
    return (decision.prefill.worker_id if decision.prefill else None), decision.decode.worker_id


def test_prefill_worker_holding_the_prefix_is_chosen():
    workers = [make_worker(w, Role.PREFILL) for w in ("p0", "p1", "p2")]
    workers.append(make_worker("d0", Role.DECODE))
    decision = route(workers, 1024, {"p1": 60, "p2": 10})
    assert pair(decision) == ("p1", "d0")
    assert (decision.reason, decision.expected_hit_pages) == (RouteReason.PREFIX_HIT, 60)


def test_a_prefix_holder_keeps_its_prefix_until_its_cost_exceeds_the_balance():
    # p1 holds 10 pages (160 tokens): its cost is 864 + queued; p0's is 1,024.
    def holder_with_queue(queued: int) -> list[WorkerRecord]:
        return [
            make_worker("p0", Role.PREFILL),
            make_worker("p1", Role.PREFILL, queued_prefill_tokens=queued),
            make_worker("d0", Role.DECODE),
        ]

    assert pair(route(holder_with_queue(2000), 1024, {"p1": 10})) == ("p1", "d0")
    assert pair(route(holder_with_queue(2300), 1024, {"p1": 10})) == ("p0", "d0")
    no_slack = PolicyConfig(PolicyName.PREFIX_AWARE, balance_tokens=0)
    decision = route(holder_with_queue(200), 1024, {"p1": 10}, no_slack)
    assert pair(decision) == ("p0", "d0")
    assert decision.reason is RouteReason.DISAGGREGATED


def test_prefixes_nobody_holds_spread_evenly_and_stick_to_one_worker():
    workers = [make_worker(f"p{i}", Role.PREFILL) for i in range(4)]
    workers.append(make_worker("d0", Role.DECODE))

    def chosen(affinity: bytes, order) -> str:
        decision = pick_route(order, RouteInput(512, {}, affinity), PREFIX_AWARE)
        return decision.prefill.worker_id

    picks = [chosen(bytes([i, 7]), workers) for i in range(64)]
    assert {p: picks.count(p) for p in set(picks)}.keys() == {"p0", "p1", "p2", "p3"}
    assert min(picks.count(p) for p in set(picks)) >= 8
    assert picks == [chosen(bytes([i, 7]), list(reversed(workers))) for i in range(64)]


def test_a_large_hit_is_worth_a_short_queue():
    workers = [
        make_worker("p0", Role.PREFILL),
        make_worker("p1", Role.PREFILL, queued_prefill_tokens=300),
        make_worker("d0", Role.DECODE),
    ]
    assert pair(route(workers, 1024, {"p1": 60})) == ("p1", "d0")


def test_equal_scores_break_ties_by_worker_id_for_every_replica():
    workers = [make_worker(w, Role.PREFILL) for w in ("p2", "p0", "p1")]
    workers.append(make_worker("d0", Role.DECODE))
    assert pair(route(workers, 512)) == ("p0", "d0")
    assert pair(route(list(reversed(workers)), 512)) == ("p0", "d0")


def test_decode_worker_prefills_a_short_cached_remainder_itself():
    workers = [make_worker("p0", Role.PREFILL), make_worker("d0", Role.DECODE)]
    decision = route(workers, 1024, {"d0": 63})  # 1,008 cached, 16 left
    assert pair(decision) == (None, "d0")
    assert (decision.reason, decision.expected_hit_pages) == (RouteReason.CACHED_REMAINDER, 63)


def test_a_long_remainder_pays_the_handoff():
    workers = [make_worker("p0", Role.PREFILL), make_worker("d0", Role.DECODE)]
    assert pair(route(workers, 1024, {"d0": 60})) == ("p0", "d0")  # 64 tokens left > 32


def test_conditional_disaggregation_off_keeps_decode_workers_decoding():
    workers = [make_worker("p0", Role.PREFILL), make_worker("d0", Role.DECODE)]
    config = PolicyConfig(PolicyName.PREFIX_AWARE, colocate_threshold_tokens=32, conditional=False)
    assert pair(route(workers, 1024, {"d0": 63}, config)) == ("p0", "d0")
    assert pair(route(workers, 10, {}, config)) == ("p0", "d0")


def test_a_decode_worker_without_room_does_not_prefill():
    workers = [
        make_worker("p0", Role.PREFILL),
        make_worker("d0", Role.DECODE, pages_total=100, request_pages=95),
    ]
    assert pair(route(workers, 160, {"d0": 9})) == ("p0", "d0")  # needs 10 pages, 5 available


def test_cached_idle_pages_count_as_room():
    workers = [
        make_worker("p0", Role.PREFILL),
        make_worker("d0", Role.DECODE, pages_total=100, pages_in_use=100, request_pages=10),
    ]
    assert pair(route(workers, 160, {"d0": 9})) == (None, "d0")


def test_draining_workers_take_no_routes():
    workers = [
        make_worker("p0", Role.PREFILL, draining=True),
        make_worker("p1", Role.PREFILL, queued_prefill_tokens=5000),
        make_worker("d0", Role.DECODE, draining=True),
        make_worker("d1", Role.DECODE, running=30),
    ]
    assert pair(route(workers, 1024, {"p0": 64, "d0": 64})) == ("p1", "d1")


def test_round_robin_ignores_the_hint_but_least_load_and_prefix_aware_differ():
    workers = [
        make_worker("p0", Role.PREFILL),
        make_worker("p1", Role.PREFILL, queued_prefill_tokens=100),
        make_worker("d0", Role.DECODE),
    ]
    matched = {"p1": 60}
    least_load = PolicyConfig(PolicyName.LEAST_LOAD)
    round_robin = PolicyConfig(PolicyName.ROUND_ROBIN)
    assert pair(route(workers, 1024, matched)) == ("p1", "d0")
    assert pair(route(workers, 1024, matched, least_load)) == ("p0", "d0")
    assert [pair(route(workers, 1024, matched, round_robin, t))[0] for t in range(3)] == [
        "p0",
        "p1",
        "p0",
    ]
