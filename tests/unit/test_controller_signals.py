"""Router metrics → rates: the router's real exposition parsed, deltas per router summed,
SLO attainment from bucket deltas, counter resets, a failed read."""

from __future__ import annotations

import pytest

from pdserve.controller.scrape import ScrapeError, parse_totals, scrape_routers
from pdserve.controller.signals import SignalWindow, SloBounds
from router.events import Timing, Usage
from router.metrics import RouterMetrics

SLO = SloBounds(ttft_s=0.5, tpot_s=0.05)  # both bucket bounds of the router's histograms


def complete(
    metrics: RouterMetrics,
    num: int,
    prompt_tokens: int = 100,
    cached: int = 0,
    completion_tokens: int = 11,
    ttft_s: float = 0.2,
    tpot_s: float = 0.02,
) -> None:
    """`num` completed requests, as the router records them."""
    e2e_s = ttft_s + tpot_s * (completion_tokens - 1)
    for _ in range(num):
        metrics.observe_completion(
            Usage(prompt_tokens, completion_tokens, cached),
            Timing(queue_s=0.01, prefill_s=0.1, kv_transfer_s=0.0, ttft_s=ttft_s, e2e_s=e2e_s),
        )


def text(metrics: RouterMetrics) -> str:
    return metrics.render()[0].decode()


def test_the_routers_exposition_parses_into_its_totals():
    router = RouterMetrics()
    complete(router, 4, prompt_tokens=100, cached=25, completion_tokens=11)
    totals = parse_totals(text(router))
    assert (totals.num_requests, totals.prompt_tokens, totals.prefix_cache_hits) == (4, 400, 100)
    assert totals.generation_tokens == 44
    assert totals.ttft.count == totals.tpot.count == totals.queue.count == 4
    assert totals.ttft.count_at_most(0.5) == 4 and totals.ttft.count_at_most(0.1) == 0


def test_text_that_is_not_a_pdserve_router_is_refused():
    with pytest.raises(ValueError, match="pdserve_e2e_request_latency_seconds"):
        parse_totals("# TYPE other_total counter\nother_total 1.0\n")


def test_rates_come_from_deltas_between_two_reads():
    router, window = RouterMetrics(), SignalWindow(SLO)
    complete(router, 10)  # before the baseline: not in the rates
    assert window.advance({"r": parse_totals(text(router))}, now_s=100.0) is None
    complete(router, 20, prompt_tokens=300, cached=100, completion_tokens=51)
    signals = window.advance({"r": parse_totals(text(router))}, now_s=110.0)
    assert signals is not None
    assert (signals.interval_s, signals.request_rate) == (10.0, 2.0)
    assert (signals.prompt_tokens_per_s, signals.uncached_prompt_tokens_per_s) == (600.0, 400.0)
    assert signals.generation_tokens_per_s == 102.0
    assert (signals.mean_input_len, signals.mean_output_len) == (300.0, 51.0)
    assert signals.prefix_hit_ratio == pytest.approx(1 / 3)
    assert signals.mean_queue_s == pytest.approx(0.01)


def test_slo_attainment_is_the_fraction_of_the_intervals_observations_within_it():
    router, window = RouterMetrics(), SignalWindow(SLO)
    complete(router, 5, ttft_s=2.0)  # slow, but before the baseline
    window.advance({"r": parse_totals(text(router))}, now_s=0.0)
    complete(router, 6, ttft_s=0.3, tpot_s=0.01)
    complete(router, 2, ttft_s=0.7, tpot_s=0.2)
    signals = window.advance({"r": parse_totals(text(router))}, now_s=30.0)
    assert signals.ttft_attainment == pytest.approx(6 / 8)
    assert signals.tpot_attainment == pytest.approx(6 / 8)


def test_an_interval_without_completions_has_no_attainment():
    router, window = RouterMetrics(), SignalWindow(SLO)
    window.advance({"r": parse_totals(text(router))}, now_s=0.0)
    signals = window.advance({"r": parse_totals(text(router))}, now_s=30.0)
    assert (signals.request_rate, signals.ttft_attainment, signals.mean_queue_s) == (0, None, None)


def test_an_objective_under_every_bucket_cannot_be_told():
    router, window = RouterMetrics(), SignalWindow(SloBounds(ttft_s=0.0001, tpot_s=0.05))
    window.advance({"r": parse_totals(text(router))}, now_s=0.0)
    complete(router, 3)
    assert window.advance({"r": parse_totals(text(router))}, now_s=1.0).ttft_attainment is None


def test_several_routers_are_summed():
    first, second, window = RouterMetrics(), RouterMetrics(), SignalWindow(SLO)
    window.advance({"a": parse_totals(text(first)), "b": parse_totals(text(second))}, 0.0)
    complete(first, 3, prompt_tokens=100, ttft_s=0.1)
    complete(second, 1, prompt_tokens=500, ttft_s=3.0)
    signals = window.advance({"a": parse_totals(text(first)), "b": parse_totals(text(second))}, 2.0)
    assert (signals.request_rate, signals.prompt_tokens_per_s) == (2.0, 400.0)
    assert signals.ttft_attainment == pytest.approx(3 / 4)


def test_a_restarted_router_counts_what_it_served_since():
    # Router "a" restarted between the reads: its new totals are its delta, not negative.
    before, after, window = RouterMetrics(), RouterMetrics(), SignalWindow(SLO)
    complete(before, 50)
    window.advance({"a": parse_totals(text(before))}, 0.0)
    complete(after, 2, prompt_tokens=100)
    signals = window.advance({"a": parse_totals(text(after))}, 1.0)
    assert (signals.request_rate, signals.prompt_tokens_per_s) == (2.0, 200.0)


def test_an_unreachable_router_is_a_scrape_error_naming_it():
    url = "http://127.0.0.1:9/metrics"  # discard port: nothing listens
    with pytest.raises(ScrapeError, match="127.0.0.1:9"):
        scrape_routers([url], timeout_s=1.0)


def test_a_router_first_seen_counts_only_from_its_second_read():
    # Router "b" appears at the second read with 40 requests served since it started: not this
    # interval's (no delta from zero); from its next read on, it counts like "a".
    a, b, window = RouterMetrics(), RouterMetrics(), SignalWindow(SLO)
    window.advance({"a": parse_totals(text(a))}, 0.0)
    complete(a, 10)
    complete(b, 40)
    signals = window.advance({"a": parse_totals(text(a)), "b": parse_totals(text(b))}, 10.0)
    assert signals.request_rate == 1.0
    complete(a, 10)
    complete(b, 30)
    signals = window.advance({"a": parse_totals(text(a)), "b": parse_totals(text(b))}, 20.0)
    assert signals.request_rate == 4.0


def test_a_vanished_router_stops_counting():
    a, b, window = RouterMetrics(), RouterMetrics(), SignalWindow(SLO)
    window.advance({"a": parse_totals(text(a)), "b": parse_totals(text(b))}, 0.0)
    complete(a, 20)
    complete(b, 1000)  # served, then gone before the read: lost, not a negative delta
    signals = window.advance({"a": parse_totals(text(a))}, 10.0)
    assert (signals.request_rate, signals.prompt_tokens_per_s) == (2.0, 200.0)


def test_a_router_back_after_missing_a_read_is_a_baseline_again():
    # Its counts since the read before last span two intervals: none of them is counted.
    a, b, window = RouterMetrics(), RouterMetrics(), SignalWindow(SLO)
    window.advance({"a": parse_totals(text(a)), "b": parse_totals(text(b))}, 0.0)
    window.advance({"a": parse_totals(text(a))}, 10.0)
    complete(b, 50)
    signals = window.advance({"a": parse_totals(text(a)), "b": parse_totals(text(b))}, 20.0)
    assert signals.request_rate == 0.0


def test_a_read_sharing_no_router_with_the_last_is_only_a_baseline():
    # Every replica replaced between two reads: zero rates would read as no load.
    old, new, window = RouterMetrics(), RouterMetrics(), SignalWindow(SLO)
    window.advance({"old": parse_totals(text(old))}, 0.0)
    complete(new, 5)
    assert window.advance({"new": parse_totals(text(new))}, 10.0) is None
    complete(new, 20)
    assert window.advance({"new": parse_totals(text(new))}, 20.0).request_rate == 2.0
