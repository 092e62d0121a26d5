"""Desired pool sizes from one interval's rates. Pure: no I/O, no clock, no state.

    desired prefill = ceil(uncached prompt tokens/s ÷ (prefill tokens/s per worker × utilization))
    desired decode  = ceil(generated tokens/s ÷ (decode tokens/s per worker × utilization))

Token rates carry the request mix: at one request rate, longer prompts raise prefill's
demand and longer outputs decode's; prefix-cache hits lower prefill's (only uncached tokens
are computed). Then, in order:
  1. SLO feedback: a pool whose objective's attainment is under target gets one worker more
     than it has now (TTFT → prefill, reason ttft_slo; TPOT → decode, reason tpot_slo),
     unless its load already asks for more
  2. bounds: each pool within its [min, max] (min ≥ 1: a pool is never sized to 0)
  3. budget: both pools over the total-workers budget are split by their desired ratio
     (`split_ratio`), each still within its bounds
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from kv_transfer.pages import Role
from pdserve.controller.pools import POOLS, ByPool
from pdserve.controller.reasons import Reason
from pdserve.controller.signals import Signals
from pdserve.ratio import split_ratio

_SLO_REASONS = ByPool(prefill=Reason.TTFT_SLO, decode=Reason.TPOT_SLO)
# A demand of exactly n workers' capacity is n workers, not n + 1 from float rounding.
_CEIL_SLACK = 1e-9


@dataclass(frozen=True, slots=True)
class PoolBounds:
    min_replicas: int  # ≥ 1
    max_replicas: int  # ≥ min_replicas


@dataclass(frozen=True, slots=True)
class SizingPolicy:
    target_utilization: float  # fraction of a worker's capacity to plan for, in (0, 1]
    slo_attainment_target: float  # a pool whose SLO attainment is under this gets a worker
    bounds: ByPool[PoolBounds]
    max_total_workers: int | None = None  # ≥ both minimums together; None: no budget


@dataclass(frozen=True, slots=True)
class PoolDemand:
    """What one pool had to serve over the interval."""

    tokens_per_s: float  # prefill: uncached prompt tokens; decode: generated tokens
    attainment: float | None  # its objective's attainment (TTFT / TPOT); None: unknown


@dataclass(frozen=True, slots=True)
class Desired:
    """The size one pool should have, why, and the numbers it came from."""

    replicas: int
    reason: Reason
    demand: PoolDemand
    capacity_tokens_per_s: float  # one worker's, as sized with
    load_replicas: int  # from the load alone, before SLO feedback, bounds and budget


def pool_demands(signals: Signals) -> ByPool[PoolDemand]:
    return ByPool(
        prefill=PoolDemand(signals.uncached_prompt_tokens_per_s, signals.ttft_attainment),
        decode=PoolDemand(signals.generation_tokens_per_s, signals.tpot_attainment),
    )


def desired_sizes(
    signals: Signals, current: ByPool[int], capacity: ByPool[float], policy: SizingPolicy
) -> ByPool[Desired]:
    """Both pools' desired sizes; `current`: their replicas now, `capacity`: tokens/s one
    worker of each sustains (at the TPOT objective for decode)."""
    demands = pool_demands(signals)
    sizes = [
        pool_size(pool, demands.of(pool), current.of(pool), capacity.of(pool), policy)
        for pool in POOLS
    ]
    return within_budget(ByPool(*sizes), policy)


def pool_size(
    pool: Role, demand: PoolDemand, current: int, capacity: float, policy: SizingPolicy
) -> Desired:
    """One pool's size from its load and SLO attainment, within its bounds."""
    load = math.ceil(demand.tokens_per_s / (capacity * policy.target_utilization) - _CEIL_SLACK)
    replicas, reason = load, Reason.LOAD
    missed = demand.attainment is not None and demand.attainment < policy.slo_attainment_target
    if missed and current + 1 > load:
        replicas, reason = current + 1, _SLO_REASONS.of(pool)
    bounds = policy.bounds.of(pool)
    if replicas < bounds.min_replicas:
        replicas, reason = bounds.min_replicas, Reason.AT_MIN
    elif replicas > bounds.max_replicas:
        replicas, reason = bounds.max_replicas, Reason.AT_MAX
    return Desired(replicas, reason, demand, capacity, max(load, 0))


def within_budget(sizes: ByPool[Desired], policy: SizingPolicy) -> ByPool[Desired]:
    """`sizes`, or over `max_total_workers`, the budget split by their ratio, each pool at
    least its minimum (the split never exceeds a pool's desired size, so nor its maximum)."""
    budget = policy.max_total_workers
    if budget is None or sizes.prefill.replicas + sizes.decode.replicas <= budget:
        return sizes
    num_prefill, _ = split_ratio((sizes.prefill.replicas, sizes.decode.replicas), budget)
    bounds = policy.bounds
    num_prefill = min(
        max(num_prefill, bounds.prefill.min_replicas), budget - bounds.decode.min_replicas
    )
    return ByPool(
        prefill=replace(sizes.prefill, replicas=num_prefill, reason=Reason.BUDGET),
        decode=replace(sizes.decode, replicas=budget - num_prefill, reason=Reason.BUDGET),
    )
