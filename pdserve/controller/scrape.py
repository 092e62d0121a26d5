"""One read of the routers' Prometheus endpoints: the totals the controller sizes from.

Each router replica is read on its own (`scrape_routers`), and the rates are its deltas
summed (signals.py): a router that restarted resets only its own counters. Every total here
is a Prometheus counter or a histogram's cumulative buckets (router/metrics.py):

    pdserve_e2e_request_latency_seconds_count   requests completed (the token counters' unit)
    pdserve_prompt_tokens_total                 prompt tokens of those requests
    pdserve_prefix_cache_hits_total             of those, served from a prefix cache
    pdserve_generation_tokens_total             tokens generated for them
    pdserve_time_to_first_token_seconds         TTFT histogram
    pdserve_time_per_output_token_seconds       TPOT histogram
    pdserve_request_queue_time_seconds          queue time histogram
"""

from __future__ import annotations

import http.client
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

REQUESTS = "pdserve_e2e_request_latency_seconds"
PROMPT_TOKENS = "pdserve_prompt_tokens"
PREFIX_CACHE_HITS = "pdserve_prefix_cache_hits"
GENERATION_TOKENS = "pdserve_generation_tokens"
TTFT = "pdserve_time_to_first_token_seconds"
TPOT = "pdserve_time_per_output_token_seconds"
QUEUE = "pdserve_request_queue_time_seconds"


class ScrapeError(Exception):
    """A router's metrics could not be read or are not a pdserve router's; names the URL."""


@dataclass(frozen=True, slots=True)
class HistogramTotals:
    """A histogram's cumulative counts: `buckets` as (upper bound, observations ≤ it), in
    ascending order, +Inf last; `sum` of the observed values; `count` of observations."""

    buckets: tuple[tuple[float, float], ...]
    sum: float
    count: float

    def count_at_most(self, bound: float) -> float | None:
        """Observations in the largest bucket whose bound is ≤ `bound`; None when every bucket
        bound is larger (the histogram cannot tell)."""
        counts = [count for le, count in self.buckets if le <= bound]
        return counts[-1] if counts else None

    def minus(self, earlier: HistogramTotals) -> HistogramTotals:
        before = dict(earlier.buckets)
        buckets = tuple((le, count - before.get(le, 0.0)) for le, count in self.buckets)
        return HistogramTotals(buckets, self.sum - earlier.sum, self.count - earlier.count)

    def plus(self, other: HistogramTotals) -> HistogramTotals:
        merged = dict(self.buckets)
        for le, count in other.buckets:
            merged[le] = merged.get(le, 0.0) + count
        return HistogramTotals(
            tuple(sorted(merged.items())), self.sum + other.sum, self.count + other.count
        )

    def is_below(self, earlier: HistogramTotals) -> bool:
        return self.count < earlier.count


EMPTY_HISTOGRAM = HistogramTotals((), 0.0, 0.0)


@dataclass(frozen=True, slots=True)
class RouterTotals:
    """What one router (or several, summed) counted since it started."""

    num_requests: float
    prompt_tokens: float
    prefix_cache_hits: float
    generation_tokens: float
    ttft: HistogramTotals
    tpot: HistogramTotals
    queue: HistogramTotals

    def minus(self, earlier: RouterTotals) -> RouterTotals:
        """The counts since `earlier`; a router that restarted in between (a counter went
        down) counted everything it has since then, so its totals are the delta, as
        Prometheus's rate() takes them."""
        if self.is_reset_since(earlier):
            return self
        return RouterTotals(
            self.num_requests - earlier.num_requests,
            self.prompt_tokens - earlier.prompt_tokens,
            self.prefix_cache_hits - earlier.prefix_cache_hits,
            self.generation_tokens - earlier.generation_tokens,
            self.ttft.minus(earlier.ttft),
            self.tpot.minus(earlier.tpot),
            self.queue.minus(earlier.queue),
        )

    def plus(self, other: RouterTotals) -> RouterTotals:
        return RouterTotals(
            self.num_requests + other.num_requests,
            self.prompt_tokens + other.prompt_tokens,
            self.prefix_cache_hits + other.prefix_cache_hits,
            self.generation_tokens + other.generation_tokens,
            self.ttft.plus(other.ttft),
            self.tpot.plus(other.tpot),
            self.queue.plus(other.queue),
        )

    def is_reset_since(self, earlier: RouterTotals) -> bool:
        counters = (
            (self.num_requests, earlier.num_requests),
            (self.prompt_tokens, earlier.prompt_tokens),
            (self.prefix_cache_hits, earlier.prefix_cache_hits),
            (self.generation_tokens, earlier.generation_tokens),
        )
        return any(now < before for now, before in counters) or any(
            now.is_below(before)
            for now, before in (
                (self.ttft, earlier.ttft),
                (self.tpot, earlier.tpot),
                (self.queue, earlier.queue),
            )
        )


NO_TOTALS = RouterTotals(0.0, 0.0, 0.0, 0.0, EMPTY_HISTOGRAM, EMPTY_HISTOGRAM, EMPTY_HISTOGRAM)


def parse_totals(text: str) -> RouterTotals:
    """The totals in one router's Prometheus text. ValueError when a metric is missing (not
    a pdserve router) or the text does not parse."""
    samples = {
        family.name: family.samples
        for family in text_string_to_metric_families(text)
        if family.type in ("counter", "histogram")
    }
    return RouterTotals(
        num_requests=_histogram(samples, REQUESTS).count,
        prompt_tokens=_counter(samples, PROMPT_TOKENS),
        prefix_cache_hits=_counter(samples, PREFIX_CACHE_HITS),
        generation_tokens=_counter(samples, GENERATION_TOKENS),
        ttft=_histogram(samples, TTFT),
        tpot=_histogram(samples, TPOT),
        queue=_histogram(samples, QUEUE),
    )


def _counter(samples: dict[str, list[Sample]], name: str) -> float:
    values = [s.value for s in _family(samples, name) if s.name == f"{name}_total"]
    return sum(values)


def _histogram(samples: dict[str, list[Sample]], name: str) -> HistogramTotals:
    family = _family(samples, name)
    buckets = sorted((float(s.labels["le"]), s.value) for s in family if s.name == f"{name}_bucket")
    total = sum(s.value for s in family if s.name == f"{name}_sum")
    count = sum(s.value for s in family if s.name == f"{name}_count")
    return HistogramTotals(tuple(buckets), total, count)


def _family(samples: dict[str, list[Sample]], name: str) -> list[Sample]:
    if name not in samples:
        raise ValueError(f"no {name} (is this a pdserve router's /metrics?)")
    return samples[name]


def scrape_routers(urls: Sequence[str], timeout_s: float) -> dict[str, RouterTotals]:
    """Each router's totals, by URL. ScrapeError naming the first one that fails: a partial
    sum would under-count the load, so one unreadable router spoils the whole read."""
    return {url: _scrape(url, timeout_s) for url in urls}


def _scrape(url: str, timeout_s: float) -> RouterTotals:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            text = response.read().decode("utf-8")
        return parse_totals(text)
    except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError is an OSError
        raise ScrapeError(f"{url}: {exc}") from exc
