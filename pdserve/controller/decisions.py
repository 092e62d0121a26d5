"""From a desired size to an action, per pool: pending pods, warm-up, hysteresis, cooldown.

For each pool, every tick, the first rule that applies decides:
  1. pending_pods — its Deployment has not settled (pods starting, being replaced, draining):
     hold; what the pool measures now is not what it will measure
  2. warmup — the first `warmup_samples` samples of a settled pool after start and after each
     change are excluded: new workers' caches and queues are still filling
  3. desired > current — scale_up at once to desired, unless in cooldown
  4. desired < current — scale_down only once desired has stayed below current for
     `scale_down_stable_s`, to the largest desired seen meanwhile (a signal oscillating
     around a boundary keeps the larger size), and not in cooldown; until then hold
     (stabilizing)
  5. desired = current — hold, with the sizing's reason
A change starts the pool's cooldown (`cooldown_s`) and warm-up. Holds for no_signal and
kube_error are the loop's (`hold`); they leave every pool's history as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from kv_transfer.pages import Role
from pdserve.controller.pools import POOLS, PoolStatus
from pdserve.controller.reasons import Action, Reason
from pdserve.controller.sizing import Desired


@dataclass(frozen=True, slots=True)
class StabilizerPolicy:
    cooldown_s: float  # after a change of a pool, no other change of it for this long
    scale_down_stable_s: float  # desired below current this long before a scale_down
    warmup_samples: int  # samples excluded after start and after each change


@dataclass(frozen=True, slots=True)
class Decision:
    """What happens to one pool this tick; `target` = `current` for a hold."""

    pool: Role
    action: Action
    reason: Reason
    current: int | None  # the Deployment's spec.replicas; None: it could not be read
    target: int | None
    desired: Desired | None = None  # None where nothing was sized (no_signal, kube_error)

    @property
    def is_change(self) -> bool:
        return self.action in (Action.SCALE_UP, Action.SCALE_DOWN)

    def as_recommendation(self) -> Decision:
        """Dry-run: a change is shown as `recommend`, a hold stays a hold."""
        return replace(self, action=Action.RECOMMEND) if self.is_change else self


def is_settled_sample(decision: Decision) -> bool:
    """Whether a `Stabilizer.decide` decision's interval measured the pool as it is (for
    capacity learning): not pending, not warming up."""
    return decision.reason not in (Reason.PENDING_PODS, Reason.WARMUP)


def hold(
    pool: Role, reason: Reason, current: int | None, desired: Desired | None = None
) -> Decision:
    return Decision(pool, Action.HOLD, reason, current, current, desired)


@dataclass(slots=True)
class _PoolHistory:
    samples_to_skip: int  # warm-up samples still to exclude
    last_change_s: float | None = None
    below_since_s: float | None = None  # desired < current continuously since then
    below_peak: int = 0  # largest desired since below_since_s


class Stabilizer:
    """Owns each pool's history; `decide` reads and advances it, `record_change` marks a
    change applied. Times are monotonic seconds, passed in (no clock of its own)."""

    def __init__(self, policy: StabilizerPolicy) -> None:
        self._policy = policy
        self._history = {pool: _PoolHistory(policy.warmup_samples) for pool in POOLS}

    def decide(self, desired: Desired, status: PoolStatus, pool: Role, now_s: float) -> Decision:
        """The action for `pool`, which desires `desired` and whose Deployment is `status`."""
        history, current = self._history[pool], status.replicas
        if status.is_pending:
            history.below_since_s = None
            return hold(pool, Reason.PENDING_PODS, current, desired)
        if history.samples_to_skip > 0:
            history.samples_to_skip -= 1
            return hold(pool, Reason.WARMUP, current, desired)
        if desired.replicas < current:
            return self._below(history, pool, desired, current, now_s)
        history.below_since_s = None
        if desired.replicas == current:
            return hold(pool, desired.reason, current, desired)
        if self._in_cooldown(history, now_s):
            return hold(pool, Reason.COOLDOWN, current, desired)
        return Decision(pool, Action.SCALE_UP, desired.reason, current, desired.replicas, desired)

    def record_change(self, pool: Role, now_s: float) -> None:
        """`pool` was just resized: its cooldown and warm-up start over."""
        history = self._history[pool]
        history.last_change_s = now_s
        history.samples_to_skip = self._policy.warmup_samples
        history.below_since_s = None

    def check_integrity(self) -> None:
        for pool, history in self._history.items():
            assert history.samples_to_skip >= 0, pool
            assert history.below_since_s is None or history.below_peak >= 1, pool

    def _below(
        self, history: _PoolHistory, pool: Role, desired: Desired, current: int, now_s: float
    ) -> Decision:
        if history.below_since_s is None:
            history.below_since_s, history.below_peak = now_s, desired.replicas
        history.below_peak = max(history.below_peak, desired.replicas)
        if now_s - history.below_since_s < self._policy.scale_down_stable_s:
            return hold(pool, Reason.STABILIZING, current, desired)
        if self._in_cooldown(history, now_s):
            return hold(pool, Reason.COOLDOWN, current, desired)
        return Decision(
            pool, Action.SCALE_DOWN, desired.reason, current, history.below_peak, desired
        )

    def _in_cooldown(self, history: _PoolHistory, now_s: float) -> bool:
        last = history.last_change_s
        return last is not None and now_s - last < self._policy.cooldown_s
