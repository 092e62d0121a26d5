"""Per-worker capacity: configured, then learned from busy intervals of a settled pool."""

from __future__ import annotations

import pytest

from kv_transfer.pages import Role
from pdserve.controller.capacity import CapacityEstimate
from pdserve.controller.pools import ByPool
from pdserve.controller.sizing import PoolDemand

CONFIGURED = ByPool(prefill=2000.0, decode=500.0)


def make_estimate(alpha: float = 0.5) -> CapacityEstimate:
    return CapacityEstimate(CONFIGURED, alpha, slo_attainment_target=0.9)


def test_a_busy_interval_moves_the_estimate_toward_rate_per_ready_worker():
    # Prefill missed its TTFT objective at 3000 tok/s over 2 workers: 1500 each; alpha ½.
    estimate = make_estimate()
    estimate.observe(Role.PREFILL, PoolDemand(3000.0, attainment=0.7), ready_workers=2)
    assert estimate.current == ByPool(prefill=1750.0, decode=500.0)


def test_meeting_the_slo_below_the_estimate_teaches_nothing():
    estimate = make_estimate()
    estimate.observe(Role.DECODE, PoolDemand(600.0, attainment=0.99), ready_workers=2)
    assert estimate.current == CONFIGURED


def test_meeting_the_slo_above_the_estimate_raises_it():
    # 1400 generated tok/s on 2 decode workers within the TPOT objective: 700 each.
    estimate = make_estimate()
    estimate.observe(Role.DECODE, PoolDemand(1400.0, attainment=0.95), ready_workers=2)
    assert estimate.current.decode == 600.0


@pytest.mark.parametrize(
    ("tokens_per_s", "expected"),
    [(10.0, 0.5 * 2000 + 0.5 * 500), (1e6, 0.5 * 2000 + 0.5 * 8000)],
)
def test_a_sample_stays_within_four_times_the_configured_capacity(tokens_per_s, expected):
    # An SLO missed at almost no load (an objective no size meets) must not crash the estimate.
    estimate = make_estimate()
    estimate.observe(Role.PREFILL, PoolDemand(tokens_per_s, attainment=0.1), ready_workers=1)
    assert estimate.current.prefill == expected


@pytest.mark.parametrize(
    "demand",
    [PoolDemand(0.0, attainment=0.1), PoolDemand(3000.0, attainment=None)],
    ids=["idle", "no-latency-observed"],
)
def test_an_interval_without_load_or_latency_teaches_nothing(demand):
    estimate = make_estimate()
    estimate.observe(Role.PREFILL, demand, ready_workers=2)
    assert estimate.current == CONFIGURED


def test_alpha_zero_keeps_the_configured_capacities():
    estimate = make_estimate(alpha=0.0)
    estimate.observe(Role.PREFILL, PoolDemand(3000.0, attainment=0.1), ready_workers=2)
    assert estimate.current == CONFIGURED
