"""Tokens/s one worker of each pool sustains: configured, then learned from busy intervals.

Prefill: uncached prompt tokens/s; decode: generated tokens/s at the TPOT objective.
A sample is the pool's token rate ÷ its ready workers, taken from a settled pool (no pods
pending, past warm-up) in an interval when either
  - it missed its SLO: it was busy, at or past the objective's knee, so its workers ran
    at what they sustain at the objective; or
  - it met its SLO at more tokens/s per worker than the estimate: the estimate is low.
Each sample is kept within [configured ÷ 4, configured × 4]: an SLO missed for another
reason (an objective no size meets, a slow network) must not drive the estimate, and with it
the pool, to an extreme. The estimate is an EWMA of the samples; alpha 0 keeps the configured
values.
"""

from __future__ import annotations

from kv_transfer.pages import Role
from pdserve.controller.pools import POOLS, ByPool
from pdserve.controller.sizing import PoolDemand

SAMPLE_RANGE = 4.0  # how far (×, ÷) a sample may stray from the configured capacity


def capacity_sample(
    demand: PoolDemand,
    ready_workers: int,
    estimate: float,
    configured: float,
    slo_attainment_target: float,
) -> float | None:
    """What one interval says one worker sustains, or None when it says nothing (idle, or
    within its SLO at no more than the estimate)."""
    if ready_workers < 1 or demand.tokens_per_s <= 0 or demand.attainment is None:
        return None
    per_worker = demand.tokens_per_s / ready_workers
    is_busy = demand.attainment < slo_attainment_target
    if not is_busy and per_worker <= estimate:
        return None
    return min(max(per_worker, configured / SAMPLE_RANGE), configured * SAMPLE_RANGE)


class CapacityEstimate:
    """Owns both pools' per-worker capacity estimates; only `observe` changes them."""

    def __init__(self, configured: ByPool[float], alpha: float, slo_attainment_target: float):
        self._configured = configured
        self._alpha = alpha
        self._slo_attainment_target = slo_attainment_target
        self._estimate = {pool: configured.of(pool) for pool in POOLS}

    @property
    def current(self) -> ByPool[float]:
        return ByPool(self._estimate[Role.PREFILL], self._estimate[Role.DECODE])

    def observe(self, pool: Role, demand: PoolDemand, ready_workers: int) -> None:
        """Folds one settled interval of `pool` into its estimate."""
        sample = capacity_sample(
            demand,
            ready_workers,
            self._estimate[pool],
            self._configured.of(pool),
            self._slo_attainment_target,
        )
        if sample is not None:
            self._estimate[pool] += self._alpha * (sample - self._estimate[pool])
