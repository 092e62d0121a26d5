"""The router's Prometheus metrics (router/metrics.py): what one request, route or state change
adds, read back from the text exposition a scrape gets."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import urllib.error
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from router.breaker import BreakerState
from router.events import Timing, Usage
from router.lifecycle import Phase
from router.metrics import RouterMetrics
from router.policy import RouteReason


def make_usage(prompt: int = 100, completion: int = 5, cached: int = 0) -> Usage:
    return Usage(prompt_tokens=prompt, completion_tokens=completion, cached_prompt_tokens=cached)


def make_timing(
    queue_s: float = 0.002, kv_transfer_s: float = 0.0, ttft_s: float = 0.1, e2e_s: float = 0.5
) -> Timing:
    return Timing(
        queue_s=queue_s, prefill_s=0.05, kv_transfer_s=kv_transfer_s, ttft_s=ttft_s, e2e_s=e2e_s
    )


def value(metrics: RouterMetrics, name: str, **labels: str) -> float | None:
    """The sample `name{labels}` in metrics.render(), None when absent."""
    body, _ = metrics.render()
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


@pytest.fixture
def metrics():
    metrics = RouterMetrics()
    yield metrics
    metrics.close()


def test_a_completion_lands_in_each_latency_histogram(metrics):
    metrics.observe_completion(make_usage(), make_timing(queue_s=0.002, ttft_s=0.1, e2e_s=0.5))
    assert value(metrics, "pdserve_time_to_first_token_seconds_sum") == pytest.approx(0.1)
    assert value(metrics, "pdserve_e2e_request_latency_seconds_sum") == pytest.approx(0.5)
    assert value(metrics, "pdserve_request_queue_time_seconds_sum") == pytest.approx(0.002)
    assert value(metrics, "pdserve_e2e_request_latency_seconds_count") == 1


def test_ttft_buckets_resolve_below_a_millisecond(metrics):
    metrics.observe_completion(make_usage(), make_timing(ttft_s=0.0004))
    bucket = "pdserve_time_to_first_token_seconds_bucket"
    assert value(metrics, bucket, le="0.0005") == 1
    assert value(metrics, bucket, le="0.001") == 1


def test_tpot_is_the_decode_time_over_the_tokens_after_the_first(metrics):
    """5 tokens, the first at 0.1 s, the last at 0.5 s: 4 gaps of 0.1 s."""
    metrics.observe_completion(make_usage(completion=5), make_timing(ttft_s=0.1, e2e_s=0.5))
    assert value(metrics, "pdserve_time_per_output_token_seconds_sum") == pytest.approx(0.1)
    assert value(metrics, "pdserve_time_per_output_token_seconds_count") == 1


def test_a_single_token_request_has_no_tpot(metrics):
    metrics.observe_completion(make_usage(completion=1), make_timing())
    assert value(metrics, "pdserve_time_per_output_token_seconds_count") == 0


def test_only_requests_that_moved_kv_observe_a_transfer_time(metrics):
    metrics.observe_completion(make_usage(), make_timing(kv_transfer_s=0.0))  # colocated
    metrics.observe_completion(make_usage(), make_timing(kv_transfer_s=0.003))
    assert value(metrics, "pdserve_kv_transfer_time_seconds_count") == 1
    assert value(metrics, "pdserve_kv_transfer_time_seconds_sum") == pytest.approx(0.003)


def test_only_handed_off_requests_of_two_tokens_observe_a_handover(metrics):
    handed_off = dataclasses.replace(make_timing(), first_token_unix_s=1.0, handover_s=0.004)
    metrics.observe_completion(make_usage(), make_timing())  # colocated: no token #1 elsewhere
    metrics.observe_completion(make_usage(completion=1), handed_off)  # no token #2
    metrics.observe_completion(make_usage(), handed_off)
    assert value(metrics, "pdserve_kv_handover_seconds_count") == 1
    assert value(metrics, "pdserve_kv_handover_seconds_sum") == pytest.approx(0.004)


def test_token_counters_add_up_over_requests(metrics):
    metrics.observe_completion(make_usage(prompt=100, completion=5), make_timing())
    metrics.observe_completion(make_usage(prompt=50, completion=7), make_timing())
    assert value(metrics, "pdserve_prompt_tokens_total") == 150
    assert value(metrics, "pdserve_generation_tokens_total") == 12


def test_prefix_cache_counters_are_token_weighted(metrics):
    """80 of 100 cached and 0 of 50: the hit ratio is 80 / 150, not the mean of 0.8 and 0."""
    metrics.observe_completion(make_usage(prompt=100, cached=80), make_timing())
    metrics.observe_completion(make_usage(prompt=50, cached=0), make_timing())
    assert value(metrics, "pdserve_prefix_cache_queries_total") == 150
    assert value(metrics, "pdserve_prefix_cache_hits_total") == 80


def test_routes_count_by_reason_with_the_predicted_hits(metrics):
    metrics.count_route(RouteReason.DISAGGREGATED, predicted_hit_tokens=64)
    metrics.count_route(RouteReason.DISAGGREGATED, predicted_hit_tokens=32)
    metrics.count_route(RouteReason.SHORT_PROMPT, predicted_hit_tokens=0)
    assert value(metrics, "pdserve_routing_decisions_total", reason="disaggregated") == 2
    assert value(metrics, "pdserve_routing_decisions_total", reason="short_prompt") == 1
    assert value(metrics, "pdserve_prefix_index_predicted_hits_total") == 96


def test_requests_count_by_their_lowercased_status(metrics):
    metrics.count_request(grpc.StatusCode.OK, Phase.DECODING)
    metrics.count_request(grpc.StatusCode.OK, Phase.DECODING)
    metrics.count_request(grpc.StatusCode.RESOURCE_EXHAUSTED, Phase.RECEIVED)
    assert value(metrics, "pdserve_requests_total", status="ok") == 2
    assert value(metrics, "pdserve_requests_total", status="resource_exhausted") == 1


def test_cancellations_are_counted_by_the_phase_they_came_in(metrics):
    metrics.count_request(grpc.StatusCode.CANCELLED, Phase.PREFILLING)
    metrics.count_request(grpc.StatusCode.CANCELLED, Phase.DECODING)
    metrics.count_request(grpc.StatusCode.CANCELLED, Phase.DECODING)
    metrics.count_request(grpc.StatusCode.UNAVAILABLE, Phase.DECODING)
    assert value(metrics, "pdserve_request_cancellations_total", phase="prefilling") == 1
    assert value(metrics, "pdserve_request_cancellations_total", phase="decoding") == 2
    assert value(metrics, "pdserve_request_cancellations_total", phase="routing") is None


def test_recomputes_are_counted_by_reason(metrics):
    metrics.count_recompute("KV_LEASE_EXPIRED")
    assert value(metrics, "pdserve_request_recomputes_total", reason="KV_LEASE_EXPIRED") == 1


def test_a_running_request_is_counted_until_it_ends_even_by_an_error(metrics):
    with metrics.track_running():
        assert value(metrics, "pdserve_requests_running") == 1
    with pytest.raises(RuntimeError), metrics.track_running():
        raise RuntimeError("worker lost")
    assert value(metrics, "pdserve_requests_running") == 0


def test_the_index_state_gauge_marks_only_the_current_state(metrics):
    assert value(metrics, "pdserve_prefix_index_state", state="closed") == 1
    metrics.set_index_state(BreakerState.HALF_OPEN)
    states = {
        state: value(metrics, "pdserve_prefix_index_state", state=state) for state in BreakerState
    }
    assert states == {"closed": 0, "open": 0, "half_open": 1}


def test_index_errors_are_counted(metrics):
    metrics.count_index_error()
    metrics.count_index_error()
    assert value(metrics, "pdserve_prefix_index_errors_total") == 2


def test_two_routers_in_one_process_keep_their_own_counts(metrics):
    other = RouterMetrics()
    metrics.count_request(grpc.StatusCode.OK, Phase.DECODING)
    assert value(other, "pdserve_requests_total", status="ok") is None
    assert value(metrics, "pdserve_requests_total", status="ok") == 1


def test_render_gives_the_prometheus_text_format(metrics):
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain; version=")
    assert b"# TYPE pdserve_time_to_first_token_seconds histogram" in body


def test_a_scrape_over_http_reads_the_registry_until_close(metrics):
    metrics.count_request(grpc.StatusCode.CANCELLED, Phase.PREFILLING)
    port = metrics.serve_http("127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        assert b'pdserve_requests_total{status="cancelled"} 1.0' in response.read()
    metrics.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)


def test_serving_twice_is_refused(metrics):
    metrics.serve_http("127.0.0.1", 0)
    with pytest.raises(RuntimeError, match="already served"):
        metrics.serve_http("127.0.0.1", 0)


def test_the_router_metrics_import_neither_torch_nor_ray():
    code = "import sys, router.metrics; print(sorted({'torch', 'ray'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
