"""Route choice: exact picks for least-load and round-robin, layouts, the colocated rules."""

from __future__ import annotations

import pytest

from kv_transfer.pages import KVLayout, Role
from router.config import PolicyName
from router.errors import NoWorkers
from router.policy import (
    PolicyConfig,
    PolicyState,
    RouteInput,
    RouteReason,
    Toward,
    has_route,
    pick_recompute,
    pick_route,
)
from router.registry import WorkerLoad, WorkerRecord

LAYOUT_A = KVLayout(num_layers=2, num_kv_heads=1, head_dim=8, page_size=4, dtype="float32")
LAYOUT_B = KVLayout(num_layers=2, num_kv_heads=1, head_dim=8, page_size=16, dtype="float32")
LEAST_LOAD = PolicyConfig(PolicyName.LEAST_LOAD, colocate_threshold_tokens=8)
ROUND_ROBIN = PolicyConfig(PolicyName.ROUND_ROBIN, colocate_threshold_tokens=8)


def make_worker(
    worker_id: str, role: Role, layout: KVLayout = LAYOUT_A, alive: bool = True, **load
) -> WorkerRecord:
    load.setdefault("pages_total", 100)
    return WorkerRecord(
        worker_id,
        role,
        f"{worker_id}:1",
        epoch=1,
        layout=layout,
        load=WorkerLoad(**load),
        alive=alive,
    )


def picked(workers, prompt_len=100, config=LEAST_LOAD, turn=0) -> tuple[str | None, str]:
    decision = pick_route(workers, RouteInput(prompt_len), config, PolicyState(turn))
    prefill = decision.prefill.worker_id if decision.prefill else None
    return prefill, decision.decode.worker_id


def test_least_load_prefill_goes_by_queue_then_page_usage():
    workers = [
        make_worker("p-busy", Role.PREFILL, queue_len=3),
        make_worker("p-full", Role.PREFILL, queue_len=1, pages_in_use=90),
        make_worker("p-best", Role.PREFILL, queue_len=1, pages_in_use=10),
        make_worker("d0", Role.DECODE),
    ]
    assert picked(workers) == ("p-best", "d0")


def test_least_load_decode_goes_by_running_batch_then_free_pages():
    workers = [
        make_worker("p0", Role.PREFILL),
        make_worker("d-busy", Role.DECODE, running=8),
        make_worker("d-full", Role.DECODE, running=2, pages_in_use=80),
        make_worker("d-best", Role.DECODE, running=2, pages_in_use=20),
    ]
    assert picked(workers) == ("p0", "d-best")


def test_ties_break_by_worker_id():
    workers = [make_worker(i, Role.PREFILL) for i in ("p2", "p1")] + [
        make_worker(i, Role.DECODE) for i in ("d9", "d3")
    ]
    assert picked(workers) == ("p1", "d3")


def test_workers_with_different_layouts_are_never_paired():
    # The idle prefill has no decode with its layout; the busy one does.
    workers = [
        make_worker("p-idle-b", Role.PREFILL, layout=LAYOUT_B),
        make_worker("p-busy-a", Role.PREFILL, queue_len=5),
        make_worker("d-idle-b", Role.DECODE, layout=LAYOUT_B, running=9),
        make_worker("d-a", Role.DECODE, running=9),
    ]
    assert picked(workers[:2] + workers[3:]) == ("p-busy-a", "d-a")
    assert picked(workers) == ("p-idle-b", "d-idle-b")


def test_layout_mismatch_alone_means_no_route():
    workers = [make_worker("p0", Role.PREFILL), make_worker("d0", Role.DECODE, layout=LAYOUT_B)]
    assert not has_route(workers)
    with pytest.raises(NoWorkers):
        pick_route(workers, RouteInput(100), LEAST_LOAD)


def test_round_robin_cycles_each_pool_in_worker_id_order():
    workers = [
        make_worker("p1", Role.PREFILL, queue_len=9),
        make_worker("p0", Role.PREFILL),
        make_worker("d0", Role.DECODE),
        make_worker("d1", Role.DECODE),
        make_worker("d2", Role.DECODE),
    ]
    picks = [picked(workers, config=ROUND_ROBIN, turn=turn) for turn in range(4)]
    assert picks == [("p0", "d0"), ("p1", "d1"), ("p0", "d2"), ("p1", "d0")]


@pytest.mark.parametrize(
    "prompt_len, expected, reason",
    [
        (8, ("b0", "b0"), RouteReason.SHORT_PROMPT),
        (9, ("p0", "d0"), RouteReason.DISAGGREGATED),
    ],
)
def test_prompts_up_to_the_threshold_go_to_a_both_worker(prompt_len, expected, reason):
    workers = [make_worker("p0", Role.PREFILL), make_worker("d0", Role.DECODE)]
    workers.append(make_worker("b0", Role.BOTH))
    decision = pick_route(workers, RouteInput(prompt_len), LEAST_LOAD)
    prefill = decision.prefill or decision.decode
    assert (prefill.worker_id, decision.decode.worker_id) == expected
    assert decision.reason is reason
    assert decision.is_colocated is (reason is RouteReason.SHORT_PROMPT)


def test_short_prompt_without_a_both_worker_is_prefilled_by_the_decode_worker():
    workers = [make_worker("p0", Role.PREFILL), make_worker("d0", Role.DECODE)]
    assert picked(workers, prompt_len=8) == (None, "d0")
    assert picked(workers, prompt_len=9) == ("p0", "d0")


def test_without_conditional_disaggregation_short_prompts_use_the_pair():
    workers = [make_worker("p0", Role.PREFILL), make_worker("d0", Role.DECODE)]
    config = PolicyConfig(PolicyName.LEAST_LOAD, colocate_threshold_tokens=8, conditional=False)
    assert picked(workers, prompt_len=1, config=config) == ("p0", "d0")


def test_without_a_pair_a_both_worker_serves_long_prompts():
    workers = [make_worker("p0", Role.PREFILL), make_worker("b0", Role.BOTH)]
    decision = pick_route(workers, RouteInput(5000), LEAST_LOAD)
    assert (decision.reason, decision.decode.worker_id) == (RouteReason.NO_PAIR, "b0")
    assert decision.prefill is None


def test_least_loaded_both_worker_is_picked():
    workers = [
        make_worker("b0", Role.BOTH, queue_len=2, running=2),
        make_worker("b1", Role.BOTH, running=3),
    ]
    assert picked(workers, prompt_len=1) == (None, "b1")


def test_dead_workers_are_skipped():
    workers = [
        make_worker("p0", Role.PREFILL, alive=False),
        make_worker("p1", Role.PREFILL, queue_len=7),
        make_worker("d0", Role.DECODE),
    ]
    assert picked(workers) == ("p1", "d0")


def test_no_live_worker_raises_no_workers():
    workers = [make_worker("b0", Role.BOTH, alive=False), make_worker("d0", Role.DECODE)]
    assert not has_route(workers)
    with pytest.raises(NoWorkers):
        pick_route(workers, RouteInput(100), LEAST_LOAD)
    with pytest.raises(NoWorkers):
        pick_route([], RouteInput(1), LEAST_LOAD)


def test_a_recompute_goes_where_its_failure_allows():
    d0, d1 = make_worker("d0", Role.DECODE), make_worker("d1", Role.DECODE, running=5)
    workers = [make_worker("p0", Role.PREFILL), d0, d1]
    assert pick_recompute(workers, "d1", Toward.SAME).worker_id == "d1"  # only the pull failed
    assert pick_recompute(workers, "d1", Toward.ANY).worker_id == "d0"  # the least loaded
    assert pick_recompute(workers, "d0", Toward.OTHER).worker_id == "d1"
    assert pick_recompute([workers[0], d0], "d0", Toward.OTHER) is None
