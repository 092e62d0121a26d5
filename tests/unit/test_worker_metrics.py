"""A worker's Prometheus metrics (pdserve/worker_metrics.py): gauges read from its stats at
scrape time, a scrape that survives failing stats, and the transfer counters."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kv_transfer.pages import Role, TransferDirection, TransportBackend
from kv_transfer.transport import TransferFailure
from pdserve.v1 import generation_pb2, worker_pb2
from pdserve.worker_metrics import WorkerMetrics

PREFILL = {"worker_id": "prefill-0", "role": "prefill"}
CHECKSUM = TransferFailure.CHECKSUM


def make_stats(**info: int | bool) -> worker_pb2.WorkerStats:
    fields = {"worker_id": "prefill-0", "role": "prefill", "pages_total": 48} | info
    return worker_pb2.WorkerStats(info=generation_pb2.WorkerInfo(**fields))


def value(metrics: WorkerMetrics, name: str, **labels: str) -> float | None:
    """The sample `name{labels}` in metrics.render(), None when absent."""
    body, _ = metrics.render()
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


class FlakyStats:
    """A stats source whose next call raises while `failing`; counts its calls."""

    def __init__(self, stats: worker_pb2.WorkerStats) -> None:
        self.stats, self.failing, self.num_calls = stats, False, 0

    def __call__(self) -> worker_pb2.WorkerStats:
        self.num_calls += 1
        if self.failing:
            raise RuntimeError("engine stopped")
        return self.stats


@pytest.fixture
def source():
    return FlakyStats(make_stats())


@pytest.fixture
def metrics(source):
    metrics = WorkerMetrics("prefill-0", Role.PREFILL, source)
    yield metrics
    metrics.close()


def test_gauges_report_the_workers_info(metrics, source):
    source.stats = make_stats(
        pages_in_use=30, request_pages=12, queue_len=3, running=2, leases_outstanding=4,
        transfers_in_flight=1, queued_prefill_tokens=512, draining=True,
    )  # fmt: skip
    expected = {
        "pdserve_kv_pages_in_use": 12,
        "pdserve_kv_pages_cached": 18,
        "pdserve_kv_pages_total": 48,
        "pdserve_kv_cache_usage_perc": 0.25,
        "pdserve_num_requests_waiting": 3,
        "pdserve_num_requests_running": 2,
        "pdserve_leases_outstanding": 4,
        "pdserve_kv_transfers_in_flight": 1,
        "pdserve_queued_prefill_tokens": 512,
        "pdserve_worker_draining": 1,
    }
    assert {name: value(metrics, name, **PREFILL) for name in expected} == expected


def test_gauges_are_read_at_scrape_time(metrics, source):
    source.stats = make_stats(running=1)
    assert value(metrics, "pdserve_num_requests_running", **PREFILL) == 1
    source.stats = make_stats(running=5)
    assert value(metrics, "pdserve_num_requests_running", **PREFILL) == 5


def test_registering_does_not_read_the_stats(source):
    """A worker builds its metrics before its engine: stats() may not work yet."""
    WorkerMetrics("prefill-0", Role.PREFILL, source)
    assert source.num_calls == 0


def test_an_empty_pool_has_zero_usage(source):
    metrics = WorkerMetrics("prefill-0", Role.PREFILL, lambda: make_stats(pages_total=0))
    assert value(metrics, "pdserve_kv_cache_usage_perc", **PREFILL) == 0


def test_failing_stats_cost_the_scrape_its_gauges_and_count_an_error(metrics, source):
    source.failing = True
    body, _ = metrics.render()
    assert b"pdserve_kv_pages_total{" not in body
    assert value(metrics, "pdserve_worker_stats_errors_total", **PREFILL) == 2  # two scrapes
    source.failing = False
    assert value(metrics, "pdserve_kv_pages_total", **PREFILL) == 48
    assert value(metrics, "pdserve_worker_stats_errors_total", **PREFILL) == 2


def test_transfers_add_bytes_and_seconds_by_backend_and_direction(metrics):
    metrics.observe_transfer(TransportBackend.SHM, TransferDirection.EXPORT, 4096, 0.002)
    metrics.observe_transfer(TransportBackend.SHM, TransferDirection.EXPORT, 1024, 0.001)
    metrics.observe_transfer(TransportBackend.GLOO, TransferDirection.FETCH, 512, 0.01)
    shm_export = {"backend": "shm", "direction": "export"}
    assert value(metrics, "pdserve_kv_transfer_bytes_total", **shm_export) == 5120
    assert value(metrics, "pdserve_kv_transfer_seconds_total", **shm_export) == pytest.approx(0.003)
    gloo_fetch = {"backend": "gloo", "direction": "fetch"}
    assert value(metrics, "pdserve_kv_transfer_bytes_total", **gloo_fetch) == 512


def test_transfer_failures_count_by_backend_direction_and_reason(metrics):
    metrics.count_transfer_failure(TransportBackend.NCCL, TransferDirection.FETCH, CHECKSUM)
    failures = "pdserve_kv_transfer_failures_total"
    fetch = {"backend": "nccl", "direction": "fetch"}
    assert value(metrics, failures, **fetch, reason="checksum") == 1
    assert value(metrics, failures, **fetch, reason="timeout") is None
    assert value(metrics, failures, backend="nccl", direction="export", reason="checksum") is None


def test_injected_faults_are_read_from_the_stats_by_kind(metrics, source):
    """Chaos runs compare these with the failures above; a worker not injecting shows none."""
    faults = "pdserve_kv_faults_injected_total"
    assert value(metrics, faults, **PREFILL, kind="corrupt") is None
    source.stats.faults_injected.update({"corrupt": 2, "stall": 1})
    assert value(metrics, faults, **PREFILL, kind="corrupt") == 2
    assert value(metrics, faults, **PREFILL, kind="stall") == 1


def test_two_workers_in_one_process_keep_their_own_metrics(metrics):
    decode = WorkerMetrics("decode-0", Role.DECODE, lambda: make_stats(running=7))
    metrics.observe_transfer(TransportBackend.SHM, TransferDirection.EXPORT, 4096, 0.002)
    labels = {"worker_id": "decode-0", "role": "decode"}
    assert value(decode, "pdserve_num_requests_running", **labels) == 7
    assert value(decode, "pdserve_num_requests_running", **PREFILL) is None
    assert (
        value(decode, "pdserve_kv_transfer_bytes_total", backend="shm", direction="export") is None
    )


def test_a_scrape_over_http_survives_failing_stats(metrics, source):
    source.failing = True
    port = metrics.serve_http("127.0.0.1", 0)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        body = response.read()
    assert b'pdserve_worker_stats_errors_total{role="prefill",worker_id="prefill-0"} 1.0' in body
