"""The router's Prometheus metrics (ARCHITECTURE §10): names and meanings are vLLM's, under the
`pdserve_` prefix. Torch- and Ray-free, like the rest of the router.

Per completed request (`observe_completion`, from the Final message's Usage and Timing):
    pdserve_time_to_first_token_seconds     histogram  receipt -> first token handed to client
    pdserve_time_per_output_token_seconds   histogram  (e2e - ttft) / (completion_tokens - 1),
                                                       only for requests of >= 2 tokens
    pdserve_e2e_request_latency_seconds     histogram  receipt -> final message
    pdserve_request_queue_time_seconds      histogram  waiting in the router and a worker queue
    pdserve_kv_transfer_time_seconds        histogram  prefill -> decode KV move, as the router
                                                       saw it; colocated requests (0) are not
                                                       observed
    pdserve_kv_handover_seconds             histogram  token #1 sampled on the prefill worker
                                                       -> token #2 at the router, less the
                                                       decode step that made it (Timing's
                                                       handover_s); disaggregated only
    pdserve_prompt_tokens_total             counter    prompt tokens
    pdserve_generation_tokens_total         counter    completion tokens
    pdserve_prefix_cache_queries_total      counter    prompt tokens looked up in a prefix cache
    pdserve_prefix_cache_hits_total         counter    of those, tokens served from the cache;
                                                       hits / queries is the token-weighted
                                                       hit ratio, as vLLM's
Per routed request (`count_route`) and per finished one (`count_request`):
    pdserve_routing_decisions_total{reason}            the policy's RouteReason
    pdserve_prefix_index_predicted_hits_total counter  cached tokens the prefix index predicted
                                                       on the chosen prefill worker: compare
                                                       with pdserve_prefix_cache_hits_total
    pdserve_requests_total{status}          counter    by terminal gRPC status, lowercased
                                                       ("ok", "cancelled", "unavailable", ...)
    pdserve_request_cancellations_total{phase} counter cancelled requests by the lifecycle
                                                       phase they were in (router/lifecycle.py)
    pdserve_request_recomputes_total{reason} counter  handed-off requests prefilled again on a
                                                       decode worker (KV_TRANSFER_FAILED, …)
State:
    pdserve_requests_running                gauge      requests between receipt and their end
    pdserve_prefix_index_state{state}       gauge      1 for the index breaker's current state
                                                       (closed | open | half_open), 0 otherwise
    pdserve_prefix_index_errors_total       counter    prefix lookups the index could not answer (load-only routes)
    pdserve_request_retries_total           counter    requests routed again (a worker failed before token #1)
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import grpc
from prometheus_client import Counter, Gauge, Histogram

from pdserve.metrics_export import MetricsExporter
from router.breaker import BreakerState
from router.events import Timing, Usage
from router.lifecycle import Phase

if TYPE_CHECKING:
    from router.policy import RouteReason

# vLLM's buckets, extended down to sub-millisecond: a small model's tokens come that fast.
TTFT_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
TPOT_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
    0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS_S = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0,
    15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
KV_TRANSFER_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class RouterMetrics(MetricsExporter):
    """One router's metrics, in its own registry. Thread-safe (prometheus_client's metrics
    are); every method only adds to its metrics. The index state starts CLOSED, as a
    breaker does."""

    def __init__(self) -> None:
        super().__init__()
        self._init_latencies()
        self._init_tokens()
        self._init_requests()
        self.set_index_state(BreakerState.CLOSED)

    def observe_completion(self, usage: Usage, timing: Timing) -> None:
        """Records one request that completed (status OK) with this usage and timing."""
        self._ttft.observe(timing.ttft_s)
        self._e2e.observe(timing.e2e_s)
        self._queue.observe(timing.queue_s)
        if usage.completion_tokens >= 2:
            decode_s = timing.e2e_s - timing.ttft_s
            self._tpot.observe(decode_s / (usage.completion_tokens - 1))
        if timing.kv_transfer_s > 0:
            self._kv_transfer.observe(timing.kv_transfer_s)
        if timing.first_token_unix_s > 0 and usage.completion_tokens >= 2:
            self._handover.observe(max(timing.handover_s, 0.0))
        self._prompt_tokens.inc(usage.prompt_tokens)
        self._generation_tokens.inc(usage.completion_tokens)
        self._cache_queries.inc(usage.prompt_tokens)
        self._cache_hits.inc(usage.cached_prompt_tokens)

    def count_route(self, reason: RouteReason, predicted_hit_tokens: int) -> None:
        """Records one routing decision; `predicted_hit_tokens`: the prefix index's predicted
        cached tokens on the chosen prefill worker (0 without one or without an index)."""
        self._routes.labels(reason=reason.value).inc()
        self._predicted_hits.inc(predicted_hit_tokens)

    def count_request(self, code: grpc.StatusCode, phase: Phase) -> None:
        """Records one request's end with this status (grpc.StatusCode.OK for success) in
        this lifecycle phase; a cancellation (client cancel, Abort) is counted by phase."""
        self._requests.labels(status=code.name.lower()).inc()
        if code == grpc.StatusCode.CANCELLED:
            self._cancellations.labels(phase=phase.value).inc()

    def count_recompute(self, reason: str) -> None:
        """A handed-off request whose decode leg failed before its first token, prefilled
        again on a decode worker (`reason`: the failure's ErrorInfo reason)."""
        self._recomputes.labels(reason=reason).inc()

    def track_running(self) -> AbstractContextManager[None]:
        """A context manager counting the request in pdserve_requests_running while inside."""
        return self._running.track_inprogress()

    def set_index_state(self, state: BreakerState) -> None:
        """Marks the prefix index breaker's state; as a breaker listener:
        `breaker.add_listener(lambda _, new: metrics.set_index_state(new))`."""
        for each in BreakerState:
            self._index_state.labels(state=each.value).set(1 if each == state else 0)

    def count_index_error(self) -> None:
        self._index_errors.inc()

    def count_retry(self) -> None:
        """A request routed again: its worker failed before the client saw a token."""
        self._retries.inc()

    def _init_latencies(self) -> None:
        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, buckets=buckets, registry=self.registry)

        self._ttft = histogram(
            "pdserve_time_to_first_token_seconds", "Time to first token.", TTFT_BUCKETS_S
        )
        self._tpot = histogram(
            "pdserve_time_per_output_token_seconds",
            "Mean time per output token after the first, per request.",
            TPOT_BUCKETS_S,
        )
        self._e2e = histogram(
            "pdserve_e2e_request_latency_seconds",
            "End-to-end request latency.",
            REQUEST_LATENCY_BUCKETS_S,
        )
        self._queue = histogram(
            "pdserve_request_queue_time_seconds",
            "Time a request waited in the router and a worker queue.",
            REQUEST_LATENCY_BUCKETS_S,
        )
        self._kv_transfer = histogram(
            "pdserve_kv_transfer_time_seconds",
            "Router-observed KV transfer time of a disaggregated request.",
            KV_TRANSFER_BUCKETS_S,
        )
        self._handover = histogram(
            "pdserve_kv_handover_seconds",
            "Token #1 sampled on the prefill worker until token #2 reached the router, less "
            "the decode step that made it.",
            KV_TRANSFER_BUCKETS_S,
        )

    def _init_tokens(self) -> None:
        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, registry=self.registry)

        self._prompt_tokens = counter("pdserve_prompt_tokens", "Prompt tokens processed.")
        self._generation_tokens = counter("pdserve_generation_tokens", "Tokens generated.")
        self._cache_queries = counter(
            "pdserve_prefix_cache_queries", "Prompt tokens looked up in a prefix cache."
        )
        self._cache_hits = counter(
            "pdserve_prefix_cache_hits", "Prompt tokens served from a prefix cache."
        )
        self._predicted_hits = counter(
            "pdserve_prefix_index_predicted_hits",
            "Cached prompt tokens the prefix index predicted on the chosen prefill worker.",
        )

    def _init_requests(self) -> None:
        self._routes = Counter(
            "pdserve_routing_decisions",
            "Routing decisions by reason.",
            ["reason"],
            registry=self.registry,
        )
        self._requests = Counter(
            "pdserve_requests",
            "Finished requests by terminal gRPC status.",
            ["status"],
            registry=self.registry,
        )
        self._running = Gauge(
            "pdserve_requests_running", "Requests in flight.", registry=self.registry
        )
        self._index_state = Gauge(
            "pdserve_prefix_index_state",
            "1 for the prefix index breaker's current state.",
            ["state"],
            registry=self.registry,
        )
        self._index_errors = Counter(
            "pdserve_prefix_index_errors",
            "Prefix lookups the index could not answer (routed on load only).",
            registry=self.registry,
        )
        self._retries = Counter(
            "pdserve_request_retries",
            "Requests routed again because a worker failed before their first token.",
            registry=self.registry,
        )
        self._cancellations = Counter(
            "pdserve_request_cancellations",
            "Requests cancelled (client cancel, deadline on the client side, Abort), by the "
            "lifecycle phase they were in.",
            ["phase"],
            registry=self.registry,
        )
        self._recomputes = Counter(
            "pdserve_request_recomputes",
            "Handed-off requests prefilled again on a decode worker, by the failure's reason.",
            ["reason"],
            registry=self.registry,
        )
