"""Rates between two reads of the routers: what the pools served over one interval.

Token counters move when a request completes, so a rate is what completed in the interval
(a period well above a request's e2e latency keeps that close to the offered load). SLO
attainment is the fraction of the interval's observations at or under the objective, read
from the histogram's bucket deltas at the largest bucket bound ≤ the objective (a bound
between two buckets counts only the lower one: attainment errs low, the pool errs big).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

from pdserve.controller.scrape import NO_TOTALS, HistogramTotals, RouterTotals


@dataclass(frozen=True, slots=True)
class SloBounds:
    ttft_s: float
    tpot_s: float


@dataclass(frozen=True, slots=True)
class Signals:
    """What the routers (summed) completed over `interval_s`, as per-second rates."""

    interval_s: float
    request_rate: float  # requests completed per second
    prompt_tokens_per_s: float
    uncached_prompt_tokens_per_s: float  # prompt tokens a prefill worker had to compute
    generation_tokens_per_s: float
    ttft_attainment: float | None  # fraction of TTFTs ≤ the objective; None: none observed
    tpot_attainment: float | None
    mean_queue_s: float | None  # None: no request completed

    @property
    def mean_input_len(self) -> float:
        return self.prompt_tokens_per_s / self.request_rate if self.request_rate else 0.0

    @property
    def mean_output_len(self) -> float:
        return self.generation_tokens_per_s / self.request_rate if self.request_rate else 0.0

    @property
    def prefix_hit_ratio(self) -> float:
        """Token-weighted, as vLLM's: cached prompt tokens ÷ prompt tokens."""
        if not self.prompt_tokens_per_s:
            return 0.0
        return 1.0 - self.uncached_prompt_tokens_per_s / self.prompt_tokens_per_s


def signals_of(delta: RouterTotals, interval_s: float, slo: SloBounds) -> Signals:
    """The rates of `delta`, the routers' counts over `interval_s` seconds (> 0)."""
    uncached = max(delta.prompt_tokens - delta.prefix_cache_hits, 0.0)
    return Signals(
        interval_s=interval_s,
        request_rate=delta.num_requests / interval_s,
        prompt_tokens_per_s=delta.prompt_tokens / interval_s,
        uncached_prompt_tokens_per_s=uncached / interval_s,
        generation_tokens_per_s=delta.generation_tokens / interval_s,
        ttft_attainment=attainment(delta.ttft, slo.ttft_s),
        tpot_attainment=attainment(delta.tpot, slo.tpot_s),
        mean_queue_s=delta.queue.sum / delta.queue.count if delta.queue.count else None,
    )


def attainment(delta: HistogramTotals, objective_s: float) -> float | None:
    """Fraction of the observations in `delta` within `objective_s`; None when there were
    none, or when every bucket is wider than the objective (it cannot be told)."""
    within = delta.count_at_most(objective_s)
    if not delta.count or within is None:
        return None
    return within / delta.count


class SignalWindow:
    """Owns the last good read of every router and when it was taken; `advance` alone
    replaces it. A failed read leaves it, so the next good one spans both periods.

    The routers read may change between two reads (--metrics-service lists the ready ones):
    one not in the last good read is only a baseline and counts from its next read (its
    totals since it started are no interval's), and one no longer read stops counting. Either
    way the interval misses a little of that router's work: rates err low for one read.
    """

    def __init__(self, slo: SloBounds) -> None:
        self._slo = slo
        self._last: dict[str, RouterTotals] | None = None
        self._last_s = 0.0

    def advance(self, totals: dict[str, RouterTotals], now_s: float) -> Signals | None:
        """The rates since the previous read, which `totals` (by router URL, read at
        monotonic `now_s`) then replaces: summed over the routers in both reads; None when
        no router is (the first read, or every router replaced: only a baseline)."""
        last, last_s = self._last, self._last_s
        self._last, self._last_s = totals, now_s
        if last is None or now_s <= last_s or not totals.keys() & last.keys():
            return None
        deltas = (now.minus(last[url]) for url, now in totals.items() if url in last)
        return signals_of(reduce(RouterTotals.plus, deltas, NO_TOTALS), now_s - last_s, self._slo)
