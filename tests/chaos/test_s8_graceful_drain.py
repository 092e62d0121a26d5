"""S8 (shared/RELIABILITY.md): graceful drain — 16 long streams on one decode worker, SIGTERM.

A real 1P1D local cluster on the `tiny` preset; a second decode worker is started beside it
and registered with the router only once the 16 streams all decode on the first. Then the
first worker's process gets SIGTERM. Must hold: its grpc.health.v1 turns NOT_SERVING within
one probe period (1 s); all 16 streams complete with every token; its process exits; the
router drops it, later requests go to the other decode worker and succeed; the launcher
forgets it; the survivors hold no page, lease or transfer.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kv_transfer.pages import Role
from pdserve import client
from pdserve.launch import BackgroundCluster
from tests.chaos.report import ScenarioResult, record
from tests.integration.cluster_helpers import (
    generate_all,
    start_cluster,
    token_request,
    wait_until_idle,
    worker_stats,
)

NUM_STREAMS = 16
MAX_TOKENS = 384
PROBE_PERIOD_S = 1.0
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
CLUSTER = {
    "model": "tiny",
    "num_prefill": 1,
    "num_decode": 1,
    "num_colocated": 0,
    "conditional_disaggregation": False,
    "drain_quiet_s": 1.5,  # > the router's 1 s stats period
    "drain_timeout_s": 60.0,
}


@dataclass
class Stream:
    """One Generate stream run on its own thread; `decoding` is set at its 2nd token."""

    prompt: list[int]
    completion: client.Completion = field(default_factory=client.Completion)
    status: grpc.StatusCode | None = None
    decoding: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def run(self, address: str) -> None:
        channel, stub = client.connect(address)
        try:
            request = token_request(self.prompt, MAX_TOKENS, ignore_eos=True)
            for response in stub.Generate(request, timeout=300):
                self.completion.add(response)
                if len(self.completion.token_ids) >= 2:
                    self.decoding.set()
            self.status = grpc.StatusCode.OK
        except grpc.RpcError as error:
            self.status = error.code()
        finally:
            channel.close()
            self.done.set()


def start_streams(address: str) -> list[Stream]:
    streams = [Stream([100 + 7 * i + j for j in range(24)]) for i in range(NUM_STREAMS)]
    for stream in streams:
        threading.Thread(target=stream.run, args=(address,), daemon=True).start()
    return streams


def seconds_until_not_serving(address: str, timeout_s: float = 10.0) -> float:
    """Polls grpc.health.v1 every 20 ms from now; seconds until NOT_SERVING."""
    started_s = time.monotonic()
    request = health_pb2.HealthCheckRequest(service="pdserve.v1.Worker")
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() - started_s < timeout_s:
            if stub.Check(request, timeout=1).status == NOT_SERVING:
                return time.monotonic() - started_s
            time.sleep(0.02)
    return float("inf")


def is_gone(pid: int) -> bool:
    """Exited: no such process, or a zombie its parent (the raylet) has not reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_for(condition, since_s: float, timeout_s: float) -> float:
    """Seconds from `since_s` until condition() held; inf if it did not within timeout_s."""
    deadline_s = time.monotonic() + timeout_s
    while time.monotonic() < deadline_s:
        if condition():
            return time.monotonic() - since_s
        time.sleep(0.05)
    return float("inf")


def add_decode_worker(cluster: BackgroundCluster) -> tuple[str, str]:
    ((worker_id, address),) = cluster._run(cluster.cluster.spawn([Role.DECODE]), 300)
    return worker_id, address


@pytest.fixture
def cluster(ray_cluster, model_cache_dir, tiny_dir):
    cluster = start_cluster(model_cache_dir=model_cache_dir, **CLUSTER)
    yield cluster
    cluster.stop()


def test_sigterm_drains_sixteen_streams_then_the_worker_exits(cluster):
    result = ScenarioResult("S8 graceful drain", requests=NUM_STREAMS, faults_injected=1)
    started_s = time.monotonic()
    victim = worker_stats(cluster)["decode-0"].info
    survivor_id, survivor_address = add_decode_worker(cluster)

    streams = start_streams(cluster.address)
    assert all(s.decoding.wait(120) for s in streams), "streams did not start decoding"
    cluster._run(cluster.cluster.router.add_worker(survivor_address), 30)
    running_at_sigterm = sum(not s.done.is_set() for s in streams)
    sigterm_s = time.monotonic()
    os.kill(victim.pid, signal.SIGTERM)
    result.faults_verified = 1
    not_serving_s = seconds_until_not_serving(victim.address)

    streams_s = wait_for(lambda: all(s.done.is_set() for s in streams), sigterm_s, 120)
    exit_s = wait_for(lambda: is_gone(victim.pid), sigterm_s, 60)
    router = cluster.cluster.router
    in_router = lambda: cluster._run(router.registry.get("decode-0"), 10) is not None  # noqa: E731
    dropped_s = wait_for(lambda: not in_router(), sigterm_s, 30)
    forgotten_s = wait_for(lambda: "decode-0" not in cluster.cluster.workers, sigterm_s, 30)

    statuses = Counter(s.status.name if s.status else "NONE" for s in streams)
    result.ok = statuses.pop("OK", 0)
    result.without_status = statuses.pop("NONE", 0)
    result.failed_by_status = statuses
    result.unknown_errors = statuses["UNKNOWN"]
    short = [
        len(s.completion.token_ids) for s in streams if len(s.completion.token_ids) != MAX_TOKENS
    ]
    later = generate_all(cluster.address, [token_request([5, 6, 7, 8], 8) for _ in range(4)])
    idle = wait_until_idle(cluster)
    result.leaked_pages = sum(s.info.request_pages for s in idle.values())
    result.leaked_leases = sum(s.info.leases_outstanding for s in idle.values())
    result.leaked_transfers = sum(s.info.transfers_in_flight for s in idle.values())
    result.seconds = time.monotonic() - started_s
    checks = {
        f"streams running at SIGTERM: {running_at_sigterm}": running_at_sigterm == NUM_STREAMS,
        f"NOT_SERVING after {not_serving_s:.3f} s": not_serving_s <= PROBE_PERIOD_S,
        f"streams short of {MAX_TOKENS} tokens: {short}": not short,
        f"process gone after {exit_s:.1f} s": exit_s < float("inf"),
        f"router dropped it after {dropped_s:.1f} s": dropped_s < float("inf"),
        f"launcher forgot it after {forgotten_s:.1f} s": forgotten_s < float("inf"),
        "later requests on the survivor": {c.final.decode_worker_id for c in later}
        == {survivor_id},
    }
    result.extra_failures = [name for name, ok in checks.items() if not ok]
    print(
        f"S8 after SIGTERM: NOT_SERVING {not_serving_s * 1e3:.0f} ms, streams done "
        f"{streams_s:.2f} s, process gone {exit_s:.2f} s, router dropped it {dropped_s:.2f} s, "
        f"launcher forgot it {forgotten_s:.2f} s"
    )
    record(result)
    assert result.failures() == []
