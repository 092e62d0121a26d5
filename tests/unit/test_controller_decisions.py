"""The stabilizer: hysteresis, cooldown, warm-up and pending pods between sizing and action."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kv_transfer.pages import Role
from pdserve.controller.decisions import Stabilizer, StabilizerPolicy
from pdserve.controller.pools import PoolStatus
from pdserve.controller.reasons import Action, Reason
from pdserve.controller.sizing import Desired, PoolDemand

POOL = Role.DECODE


def settled(replicas: int) -> PoolStatus:
    return PoolStatus(replicas, replicas, replicas, replicas, 0, 0, is_observed=True)


def want(replicas: int, reason: Reason = Reason.LOAD) -> Desired:
    return Desired(replicas, reason, PoolDemand(0.0, None), 500.0, replicas)


def make_stabilizer(
    cooldown_s: float = 60.0, scale_down_stable_s: float = 120.0, warmup_samples: int = 0
) -> Stabilizer:
    return Stabilizer(StabilizerPolicy(cooldown_s, scale_down_stable_s, warmup_samples))


def test_a_pool_below_its_desired_size_scales_up_at_once():
    decision = make_stabilizer().decide(want(5, Reason.TPOT_SLO), settled(3), POOL, now_s=0.0)
    assert (decision.action, decision.reason, decision.current, decision.target) == (
        Action.SCALE_UP,
        Reason.TPOT_SLO,
        3,
        5,
    )


def test_a_pool_at_its_desired_size_holds_with_the_sizings_reason():
    decision = make_stabilizer().decide(want(3, Reason.AT_MIN), settled(3), POOL, now_s=0.0)
    assert (decision.action, decision.reason, decision.target) == (Action.HOLD, Reason.AT_MIN, 3)


def test_scale_down_waits_until_desired_stayed_below_for_the_stable_window():
    # Desired 2, 3, 2 under a pool of 4 over 120 s: it shrinks to the largest, 3, at 120 s.
    stabilizer = make_stabilizer()
    steps = [(0.0, 2), (60.0, 3), (119.0, 2), (120.0, 2)]
    decisions = [stabilizer.decide(want(d), settled(4), POOL, now_s=t) for t, d in steps]
    assert [d.reason for d in decisions[:3]] == [Reason.STABILIZING] * 3
    assert (decisions[3].action, decisions[3].target) == (Action.SCALE_DOWN, 3)


def test_desired_back_at_current_restarts_the_stable_window():
    stabilizer = make_stabilizer()
    stabilizer.decide(want(2), settled(4), POOL, now_s=0.0)
    stabilizer.decide(want(4), settled(4), POOL, now_s=100.0)
    decision = stabilizer.decide(want(2), settled(4), POOL, now_s=130.0)
    assert decision.reason is Reason.STABILIZING
    assert stabilizer.decide(want(2), settled(4), POOL, now_s=250.0).action is Action.SCALE_DOWN


def test_a_signal_oscillating_around_a_boundary_changes_the_pool_once():
    # Desired flips 3 ↔ 4 every 30 s tick for an hour: one scale-up to 4, never back down.
    stabilizer, replicas, changes = make_stabilizer(), 3, []
    for tick in range(120):
        now_s = 30.0 * tick
        decision = stabilizer.decide(want(3 + tick % 2), settled(replicas), POOL, now_s)
        if decision.is_change:
            changes.append((decision.action, decision.target))
            replicas = decision.target
            stabilizer.record_change(POOL, now_s)
    assert changes == [(Action.SCALE_UP, 4)]
    stabilizer.check_integrity()


def test_no_change_within_the_cooldown_after_a_change():
    stabilizer = make_stabilizer(cooldown_s=60.0, scale_down_stable_s=0.0)
    stabilizer.record_change(POOL, now_s=0.0)
    assert stabilizer.decide(want(5), settled(4), POOL, now_s=59.0).reason is Reason.COOLDOWN
    assert stabilizer.decide(want(3), settled(4), POOL, now_s=59.0).reason is Reason.COOLDOWN
    assert stabilizer.decide(want(5), settled(4), POOL, now_s=60.0).action is Action.SCALE_UP


def test_cooldown_is_per_pool():
    stabilizer = make_stabilizer()
    stabilizer.record_change(Role.PREFILL, now_s=0.0)
    assert stabilizer.decide(want(5), settled(4), Role.DECODE, 1.0).action is Action.SCALE_UP


def test_the_first_samples_after_start_and_after_a_change_are_warmup():
    stabilizer = make_stabilizer(cooldown_s=0.0, warmup_samples=2)
    reasons = [stabilizer.decide(want(5), settled(4), POOL, t).reason for t in (0, 30)]
    assert reasons == [Reason.WARMUP, Reason.WARMUP]
    assert stabilizer.decide(want(5), settled(4), POOL, 60.0).action is Action.SCALE_UP
    stabilizer.record_change(POOL, now_s=60.0)
    reasons = [stabilizer.decide(want(6), settled(5), POOL, t).reason for t in (90, 120)]
    assert reasons == [Reason.WARMUP, Reason.WARMUP]
    assert stabilizer.decide(want(6), settled(5), POOL, 150.0).action is Action.SCALE_UP


def test_a_pending_pool_holds_and_its_warmup_waits_until_it_settles():
    # Pods still starting: hold; the warm-up sample is the first one once all are ready.
    stabilizer = make_stabilizer(cooldown_s=0.0, warmup_samples=1)
    starting = replace(settled(4), ready_replicas=2)
    assert stabilizer.decide(want(6), starting, POOL, 0.0).reason is Reason.PENDING_PODS
    assert stabilizer.decide(want(6), starting, POOL, 30.0).reason is Reason.PENDING_PODS
    assert stabilizer.decide(want(6), settled(4), POOL, 60.0).reason is Reason.WARMUP
    assert stabilizer.decide(want(6), settled(4), POOL, 90.0).action is Action.SCALE_UP


def test_pending_pods_restart_the_scale_down_window():
    stabilizer = make_stabilizer()
    stabilizer.decide(want(2), settled(4), POOL, 0.0)
    stabilizer.decide(want(2), replace(settled(4), terminating_replicas=1), POOL, 60.0)
    assert stabilizer.decide(want(2), settled(4), POOL, 120.0).reason is Reason.STABILIZING


@pytest.mark.parametrize(
    "change",
    [
        {"is_observed": False},  # the new spec not seen by the Deployment controller yet
        {"ready_replicas": 3},  # a pod starting
        {"updated_replicas": 3},  # a rollout replacing pods
        {"unavailable_replicas": 1},
        {"terminating_replicas": 1},  # a pod draining in preStop
        {"pod_replicas": 5},  # an old pod not gone yet
    ],
)
def test_a_deployment_is_pending_until_every_pod_is_ready_and_current(change):
    assert replace(settled(4), **change).is_pending
    assert not settled(4).is_pending


def test_dry_run_shows_a_change_as_a_recommendation_and_a_hold_as_it_is():
    stabilizer = make_stabilizer()
    change = stabilizer.decide(want(5), settled(4), POOL, 0.0).as_recommendation()
    assert (change.action, change.target) == (Action.RECOMMEND, 5)
    held = stabilizer.decide(want(4), settled(4), POOL, 1.0)
    assert held.as_recommendation() == held
