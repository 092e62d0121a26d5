"""One worker's Prometheus metrics (ARCHITECTURE §10): names and meanings are vLLM's, under the
`pdserve_` prefix.

Gauges, read from the worker's WorkerStats at scrape time, labelled {worker_id, role}:
    pdserve_kv_pages_in_use          pages held by requests or leases (WorkerInfo.request_pages)
    pdserve_kv_pages_cached          pages no request holds that keep a reusable prefix
                                     (pages_in_use - request_pages): evictable
    pdserve_kv_pages_total           pages in the KV pool
    pdserve_kv_cache_usage_perc      request_pages / pages_total, 0..1 (vLLM: 1 = full)
    pdserve_num_requests_waiting     requests queued, not yet scheduled
    pdserve_num_requests_running     requests being prefilled or decoded
    pdserve_leases_outstanding       exported KV pinned until a decode worker acks it
    pdserve_kv_transfers_in_flight   KV transfers started and not finished
    pdserve_queued_prefill_tokens    prompt tokens admitted but not computed yet
    pdserve_worker_draining          1 while draining (takes no new routes)
    pdserve_worker_stats_errors_total  scrapes whose stats() raised; they carry no gauges
    pdserve_kv_faults_injected_total   chaos testing: KV faults injected, {kind} too
                                       (WorkerStats.faults_injected; absent unless injecting)
Counters the worker's TransportSet feeds (it is this module's TransferObserver), labelled
{backend, direction = export | fetch}:
    pdserve_kv_transfer_bytes_total     KV page bytes of successful transfers
    pdserve_kv_transfer_seconds_total   seconds those transfers took
    pdserve_kv_transfer_failures_total  transfers that raised TransferError, {reason} too:
                                        checksum | timeout | error
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

from prometheus_client import Counter
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kv_transfer.pages import Role, TransferDirection, TransportBackend
from kv_transfer.transport import TransferFailure
from pdserve.metrics_export import MetricsExporter
from pdserve.v1 import generation_pb2, worker_pb2

logger = logging.getLogger(__name__)

StatsSource = Callable[[], worker_pb2.WorkerStats]

# name, help, value of one WorkerInfo
_GAUGES: tuple[tuple[str, str, Callable[[generation_pb2.WorkerInfo], float]], ...] = (
    ("pdserve_kv_pages_in_use", "KV pages held by requests or leases.", lambda i: i.request_pages),
    (
        "pdserve_kv_pages_cached",
        "KV pages no request holds that keep a reusable prefix (evictable).",
        lambda i: i.pages_in_use - i.request_pages,
    ),
    ("pdserve_kv_pages_total", "KV pages in the pool.", lambda i: i.pages_total),
    (
        "pdserve_kv_cache_usage_perc",
        "Fraction of KV pages held by requests or leases (1 = full).",
        lambda i: i.request_pages / i.pages_total if i.pages_total else 0.0,
    ),
    ("pdserve_num_requests_waiting", "Requests waiting to be scheduled.", lambda i: i.queue_len),
    ("pdserve_num_requests_running", "Requests being prefilled or decoded.", lambda i: i.running),
    (
        "pdserve_leases_outstanding",
        "Exported KV pinned until a decode worker acks it.",
        lambda i: i.leases_outstanding,
    ),
    (
        "pdserve_kv_transfers_in_flight",
        "KV transfers started and not finished.",
        lambda i: i.transfers_in_flight,
    ),
    (
        "pdserve_queued_prefill_tokens",
        "Prompt tokens admitted but not computed yet.",
        lambda i: i.queued_prefill_tokens,
    ),
    ("pdserve_worker_draining", "1 while the worker drains.", lambda i: int(i.draining)),
)
_STATS_ERRORS = ("pdserve_worker_stats_errors", "Scrapes whose worker stats could not be read.")
_FAULTS = ("pdserve_kv_faults_injected", "KV transfer faults injected (chaos testing), by kind.")


class WorkerStatsCollector(Collector):
    """A prometheus_client Collector: reads `stats()` once per scrape, so the gauges are as
    fresh as the scrape. A raising `stats()` costs that scrape its gauges, never the scrape;
    the collector counts it in its own errors counter. Thread-safe: scrapes may overlap."""

    def __init__(self, worker_id: str, role: Role, stats: StatsSource) -> None:
        self._labels = [worker_id, role.value]
        self._stats = stats
        self._num_stats_errors = 0
        self._lock = threading.Lock()

    def describe(self) -> Iterator[Metric]:
        """The families without samples: registration checks names without calling stats()."""
        yield from self._families()
        yield CounterMetricFamily(*_STATS_ERRORS, labels=["worker_id", "role"])
        yield CounterMetricFamily(*_FAULTS, labels=["worker_id", "role", "kind"])

    def collect(self) -> Iterator[Metric]:
        try:
            stats = self._stats()
        except Exception as exc:  # any: a scrape must not fail with the worker's stats
            logger.warning("metrics scrape without worker stats: %r", exc)
            with self._lock:
                self._num_stats_errors += 1
        else:
            for (_, _, value), family in zip(_GAUGES, self._families(), strict=True):
                family.add_metric(self._labels, value(stats.info))
                yield family
            faults = CounterMetricFamily(*_FAULTS, labels=["worker_id", "role", "kind"])
            for kind, count in sorted(stats.faults_injected.items()):
                faults.add_metric([*self._labels, kind], count)
            yield faults
        errors = CounterMetricFamily(*_STATS_ERRORS, labels=["worker_id", "role"])
        errors.add_metric(self._labels, self._num_stats_errors)
        yield errors

    def _families(self) -> Iterator[GaugeMetricFamily]:
        for name, doc, _ in _GAUGES:
            yield GaugeMetricFamily(name, doc, labels=["worker_id", "role"])


class WorkerMetrics(MetricsExporter):
    """One worker's metrics, in its own registry; the TransferObserver of its TransportSet.

    `stats` is called on the scraping (HTTP) thread, so it must be safe to call from there.
    """

    def __init__(self, worker_id: str, role: Role, stats: StatsSource) -> None:
        super().__init__()
        self.registry.register(WorkerStatsCollector(worker_id, role, stats))
        labels = ["backend", "direction"]
        self._bytes = Counter(
            "pdserve_kv_transfer_bytes",
            "KV page bytes of successful transfers.",
            labels,
            registry=self.registry,
        )
        self._seconds = Counter(
            "pdserve_kv_transfer_seconds",
            "Seconds successful transfers took.",
            labels,
            registry=self.registry,
        )
        self._failures = Counter(
            "pdserve_kv_transfer_failures",
            "Transfers that raised TransferError, by reason: checksum, timeout or error.",
            [*labels, "reason"],
            registry=self.registry,
        )

    def observe_transfer(
        self, backend: TransportBackend, direction: TransferDirection, nbytes: int, seconds: float
    ) -> None:
        self._bytes.labels(backend=backend.value, direction=direction.value).inc(nbytes)
        self._seconds.labels(backend=backend.value, direction=direction.value).inc(seconds)

    def count_transfer_failure(
        self, backend: TransportBackend, direction: TransferDirection, reason: TransferFailure
    ) -> None:
        labels = {"backend": backend.value, "direction": direction.value, "reason": reason.value}
        self._failures.labels(**labels).inc()
