"""S4 (shared/RELIABILITY.md): KV transfer faults.

A real local cluster (2 prefill + 2 decode mock-runner workers, shm KV transfer) whose workers
inject faults into their KV fetches (`transfer_faults`, kv_transfer/faults.py): 5 % fail,
1 % corrupt, 1 % stall past the lease (lease 2 s, fetch timeout 3 s); under `make test` the
corrupt and stall rates are 3 % and 2 %, so 300 requests still exercise each kind. 2,000
requests (300 under `make test`) at concurrency 32, half shared-prefix. Must hold:
  - 0 corrupt outputs: every OK request has exactly the mock runner's reference tokens (its
    tokens are a function of the KV it read, so an uncaught corruption would change them);
  - every injected fault verified: the faults the workers' ledgers counted (GetStats, and the
    same in their metrics) equal the fetch failures their metrics counted by reason, kind for
    kind (corrupt: checksum, stall: timeout, fail: error), with no failure unexplained, so
    every corruption was caught by the checksum;
  - every affected request recomputed: the router's kv_failure_policy (recompute) prefilled
    it again on a decode worker once per failed fetch (its recomputes counter, by reason
    KV_TRANSFER_FAILED / KV_LEASE_EXPIRED, equals the fetch failures), so every request is OK;
    none left without a terminal status within the hang bound; nothing leaks once quiet.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

from kv_transfer.faults import FaultKind, FaultPlan, verify_faults
from kv_transfer.transport import TransferFailure
from pdserve.config import ClusterConfig
from pdserve.v1 import worker_pb2, worker_pb2_grpc
from tests.chaos.harness import ChaosCluster, ChaosSetup, chaos_cluster
from tests.chaos.leaks import scenario_result
from tests.chaos.load import make_workload, run_load
from tests.chaos.report import record, scaled

NUM_REQUESTS = scaled(full=2000, ci=300)
CONCURRENCY = 32
FAULTS = scaled(full="fail=0.05,corrupt=0.01,stall=0.01", ci="fail=0.05,corrupt=0.03,stall=0.02")
HANG_TIMEOUT_S = 30.0  # a request's bound: far beyond one stalled fetch (3 s)
KV_REASONS = ("KV_TRANSFER_FAILED", "KV_LEASE_EXPIRED")


@dataclass(frozen=True, slots=True)
class FaultySetup(ChaosSetup):
    """ChaosSetup whose workers inject `transfer_faults` into their fetches, with a fetch
    timeout past the lease (a stall outlives the lease) and metrics to count failures."""

    transfer_faults: str = FAULTS
    lease_ttl_s: float = 2.0
    transfer_timeout_s: float = 3.0

    def cluster_config(self, model_cache_dir: Path) -> ClusterConfig:
        config = ChaosSetup.cluster_config(self, model_cache_dir)
        update = {
            "transfer_faults": self.transfer_faults,
            "transfer_timeout_s": self.transfer_timeout_s,
            "worker_metrics": True,
        }
        return ClusterConfig(**config.model_dump(exclude_unset=True) | update)


@dataclass(slots=True)
class FaultTally:
    """Summed over the workers: faults injected (GetStats, and as their metrics scraped) and
    fetch failures counted by reason (metrics); the router's recomputes of affected requests,
    by their reason."""

    injected: Counter[FaultKind] = field(default_factory=Counter)
    injected_scraped: Counter[FaultKind] = field(default_factory=Counter)
    failures: Counter[TransferFailure] = field(default_factory=Counter)
    recomputes: Counter[str] = field(default_factory=Counter)

    def add_worker(self, stats: worker_pb2.WorkerStats) -> None:
        self.injected.update({FaultKind(k): n for k, n in stats.faults_injected.items()})
        for sample in scrape(stats.info.metrics_port):
            if sample.name == "pdserve_kv_faults_injected_total":
                self.injected_scraped[FaultKind(sample.labels["kind"])] += int(sample.value)
            elif sample.name == "pdserve_kv_transfer_failures_total":
                if sample.labels["direction"] == "fetch":
                    self.failures[TransferFailure(sample.labels["reason"])] += int(sample.value)


def test_s4_transfer_faults_are_caught_verified_and_recovered(
    ray_cluster, tiny_dir, model_cache_dir
):
    with chaos_cluster(FaultySetup(), model_cache_dir) as cluster:
        specs = make_workload(NUM_REQUESTS, cluster.vocab_size, cluster.eos_token_ids, seed=4)
        run = asyncio.run(
            run_load(cluster.address, specs, CONCURRENCY, hang_timeout_s=HANG_TIMEOUT_S)
        )
        leaks = cluster.quiesce()
        tally = fault_tally(cluster)
    verdict = verify_faults(tally.injected, tally.failures)
    result = scenario_result(
        "S4 transfer faults",
        run.outcomes,
        leaks,
        run.seconds,
        faults_injected=verdict.injected,
        faults_verified=verdict.verified,
    )
    result.extra_failures += fault_failures(tally, verdict.unexplained)
    if result.ok != NUM_REQUESTS:
        result.extra_failures.append(f"{NUM_REQUESTS - result.ok} requests not OK")
    record(result)
    assert result.failures() == []


def fault_tally(cluster: ChaosCluster) -> FaultTally:
    tally = FaultTally()
    for worker_id in cluster.worker_ids():
        tally.add_worker(worker_stats(cluster, worker_id))
    assert cluster.background.cluster.router is not None
    body, _ = cluster.background.cluster.router.metrics.render()
    for sample in samples(body.decode()):
        if sample.name == "pdserve_request_recomputes_total":
            tally.recomputes[sample.labels["reason"]] += int(sample.value)
    return tally


def fault_failures(tally: FaultTally, unexplained: dict[TransferFailure, int]) -> list[str]:
    """The scenario's own invariants on the faults: each kind exercised, both counts agree,
    no failure left unexplained by an injected fault."""
    planned = [kind for kind, p in FaultPlan.parse(FAULTS).probabilities.items() if p > 0]
    broken = [f"no {kind} fault was injected" for kind in planned if not tally.injected[kind]]
    if tally.injected != tally.injected_scraped:
        broken.append(f"GetStats {tally.injected} != metrics {tally.injected_scraped}")
    if tally.injected[FaultKind.CORRUPT] != tally.failures[TransferFailure.CHECKSUM]:
        broken.append("corruptions injected != caught by the checksum")
    num_recomputed = sum(tally.recomputes[reason] for reason in KV_REASONS)
    if num_recomputed != tally.failures.total() or tally.recomputes.total() != num_recomputed:
        broken.append(f"recomputes {dict(tally.recomputes)} != fetch failures {tally.failures}")
    broken += [f"{n} {reason} failures not injected" for reason, n in unexplained.items()]
    return broken


def worker_stats(cluster: ChaosCluster, worker_id: str) -> worker_pb2.WorkerStats:
    address = cluster.background.cluster.workers[worker_id].identity.address
    with grpc.insecure_channel(address) as channel:
        stub = worker_pb2_grpc.WorkerStub(channel)
        return stub.GetStats(worker_pb2.GetStatsRequest(), timeout=2.0)


def scrape(metrics_port: int):
    """The samples of a worker's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2.0) as r:
        yield from samples(r.read().decode())


def samples(body: str):
    for family in text_string_to_metric_families(body):
        yield from family.samples
