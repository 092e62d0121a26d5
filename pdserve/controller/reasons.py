"""What the controller does with a pool each tick (`Action`) and why (`Reason`): the labels
of pdserve_controller_decisions_total and of the decision log."""

from __future__ import annotations

import enum


class Action(enum.StrEnum):
    HOLD = "hold"
    SCALE_UP = "scale_up"
    SCALE_DOWN = "scale_down"
    RECOMMEND = "recommend"  # dry-run: a scale_up or scale_down shown, not applied


class Reason(enum.StrEnum):
    # Why the desired size is what it is (sizing.py).
    LOAD = "load"  # token rate ÷ (per-worker capacity × target utilization)
    TTFT_SLO = "ttft_slo"  # TTFT attainment under target: prefill gets one more worker
    TPOT_SLO = "tpot_slo"  # TPOT attainment under target: decode gets one more worker
    AT_MIN = "at_min"  # raised to the pool's minimum
    AT_MAX = "at_max"  # capped at the pool's maximum
    BUDGET = "budget"  # both pools over the total-workers budget: split by their ratio
    # Why a pool holds whatever it desires (decisions.py, loop.py).
    NO_SIGNAL = "no_signal"  # a router's metrics (or the Service listing them) unreadable
    KUBE_ERROR = "kube_error"  # the Deployments could not be read, or the patch failed
    WARMUP = "warmup"  # a sample after start or after a change, excluded
    PENDING_PODS = "pending_pods"  # a rollout or scale of the pool still running
    COOLDOWN = "cooldown"  # the pool changed less than --cooldown ago
    STABILIZING = "stabilizing"  # below current, not yet for --scale-down-stable
