"""The issue's acceptance test: a worker SIGKILLed mid-stream on a real local cluster.

A real cluster (Ray actors running the `tiny` model's real math, shm KV handoff, the router
`pdserve up` runs, in this process; every request hands off: no conditional
disaggregation) serves a few concurrent greedy streams. Once the victim has work it is
SIGKILLed (its WorkerInfo.pid). Must hold:

- decode killed: every client ends before its deadline, either OK with exactly the HF
  transformers greedy tokens, or UNAVAILABLE with ErrorInfo reason WORKER_LOST (or
  WORKER_UNAVAILABLE) naming the killed worker, after a prefix of those tokens;
- prefill killed: every client ends OK with the HF tokens (a prefill leg that died is
  routed again; a handed-off request whose KV source died is recomputed);
- afterwards the surviving workers hold no request page, lease or transfer, and
  `pdserve status --json` says so for every live worker. It checks `requestPages` (pages
  held by requests or leases), not `pagesInUse`, which also counts cached prefix pages.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from kv_transfer.pages import Role
from pdserve import client
from pdserve.client import error_info
from pdserve.launch import BackgroundCluster
from pdserve.v1 import generation_pb2, worker_pb2, worker_pb2_grpc
from pdserve.workers import WorkerIdentity
from tests.hf_reference import hf_greedy
from tests.integration.cluster_helpers import start_cluster, token_request

CLIENT_DEADLINE_S = 60.0
KILL_WAIT_S = 30.0  # how long the victim may take to get work
QUIESCE_S = 15.0
ROUTER_VIEW_S = 30.0  # the router polls each second and needs 3 failed polls to say dead
STATS_TIMEOUT_S = 2.0
DECODE_KILL = {"num_prefill": 1, "num_decode": 2, "conditional_disaggregation": False}
PREFILL_KILL = {"num_prefill": 2, "num_decode": 1, "conditional_disaggregation": False}
# Decode kill: streams long enough to be cut mid-way. Prefill kill: prompts long enough to
# queue on a prefill worker.
DECODE_PROMPT_LENS = [12, 20, 33, 40, 48, 57, 64, 80]
DECODE_MAX_TOKENS = 64
# Several 512-token chunks each, so the queue outlasts a poll even on a loaded box.
PREFILL_PROMPT_LENS = [1400, 1300, 1500, 1250, 1450, 1350]
PREFILL_MAX_TOKENS = 8
WORKER_FAILURE_REASONS = {"WORKER_LOST", "WORKER_UNAVAILABLE"}


@dataclass(slots=True)
class StreamEnd:
    """How one client's stream ended: its status, the router's ErrorInfo, what it got."""

    code: grpc.StatusCode = grpc.StatusCode.OK
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    tokens: list[int] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(slots=True)
class LiveCluster:
    """A started cluster and its workers as started (the launcher forgets dead ones)."""

    background: BackgroundCluster
    workers: dict[str, WorkerIdentity]
    killed: set[str] = field(default_factory=set)

    def of_role(self, role: Role) -> list[WorkerIdentity]:
        return [w for w in self.workers.values() if w.role is role]

    def survivors(self) -> list[WorkerIdentity]:
        return [w for wid, w in self.workers.items() if wid not in self.killed]


def random_prompts(lengths: Sequence[int], seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 49152) for _ in range(n)] for n in lengths]


def stream(address: str, request: generation_pb2.GenerateRequest, end: StreamEnd) -> None:
    """Runs one request under the client deadline into `end` (tokens as they arrive);
    never raises for an RPC status."""
    started = time.monotonic()
    channel, stub = client.connect(address)
    try:
        for response in stub.Generate(request, timeout=CLIENT_DEADLINE_S):
            end.tokens += response.chunk.token_ids
    except grpc.RpcError as error:
        end.code = error.code()
        end.reason, end.metadata = error_info(error)
    finally:
        channel.close()
    end.seconds = time.monotonic() - started


def worker_info(identity: WorkerIdentity) -> generation_pb2.WorkerInfo:
    with grpc.insecure_channel(identity.address) as channel:
        stub = worker_pb2_grpc.WorkerStub(channel)
        return stub.GetStats(worker_pb2.GetStatsRequest(), timeout=STATS_TIMEOUT_S).info


def is_gone(pid: int) -> bool:
    """The process no longer exists, or is a zombie (killed, not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # the state follows "(comm)"


def kill(cluster: LiveCluster, victim: WorkerIdentity) -> None:
    """SIGKILL, then wait until the process is gone (the fault verified)."""
    os.kill(victim.pid, signal.SIGKILL)
    cluster.killed.add(victim.worker_id)
    wait_for(lambda: is_gone(victim.pid), 10.0, f"{victim.worker_id} exit")


def kill_busiest_decoder_mid_stream(
    cluster: LiveCluster, ends: Sequence[StreamEnd]
) -> tuple[WorkerIdentity, generation_pb2.WorkerInfo]:
    """Once every stream has its decode worker's first token (token #1 comes from prefill),
    SIGKILLs the decode worker running the most streams; returns it and its stats then."""

    def all_decoding() -> bool:
        return all(len(end.tokens) >= 2 or end.seconds > 0 for end in ends)

    wait_for(all_decoding, KILL_WAIT_S, "every stream decoding", period_s=0.005)
    infos = {w.worker_id: worker_info(w) for w in cluster.of_role(Role.DECODE)}
    victim = cluster.workers[max(infos, key=lambda worker_id: infos[worker_id].running)]
    kill(cluster, victim)
    return victim, infos[victim.worker_id]


def kill_first_busy_prefiller(
    cluster: LiveCluster,
) -> tuple[WorkerIdentity, generation_pb2.WorkerInfo]:
    """SIGKILLs the first prefill worker seen with prompts queued or running (polled over
    channels opened once: a poll must be quicker than a prefill)."""
    prefillers = cluster.of_role(Role.PREFILL)
    channels = [grpc.insecure_channel(victim.address) for victim in prefillers]
    stubs = [worker_pb2_grpc.WorkerStub(channel) for channel in channels]
    deadline = time.monotonic() + KILL_WAIT_S
    try:
        while time.monotonic() < deadline:
            for victim, stub in zip(prefillers, stubs, strict=True):
                request = worker_pb2.GetStatsRequest()
                info = stub.GetStats(request, timeout=STATS_TIMEOUT_S).info
                if info.queue_len + info.running > 0:
                    kill(cluster, victim)
                    return victim, info
            time.sleep(0.005)
    finally:
        for channel in channels:
            channel.close()
    raise AssertionError(f"no prefill worker had work within {KILL_WAIT_S} s")


def wait_for(
    predicate: Callable[[], bool], timeout_s: float, what: str, period_s: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(period_s)


def holdings(info: generation_pb2.WorkerInfo) -> tuple[int, int, int, bool]:
    return (
        info.request_pages,
        info.leases_outstanding,
        info.transfers_in_flight,
        info.integrity_ok,
    )


def wait_survivors_idle(cluster: LiveCluster) -> None:
    """Every surviving worker: no request page, lease or transfer, and integrity holds."""
    idle = (0, 0, 0, True)

    def all_idle() -> bool:
        return all(holdings(worker_info(w)) == idle for w in cluster.survivors())

    try:
        wait_for(all_idle, QUIESCE_S, "survivors idle")
    except AssertionError:
        held = {w.worker_id: holdings(worker_info(w)) for w in cluster.survivors()}
        raise AssertionError(f"(pages, leases, transfers, integrity_ok) held: {held}") from None


def run_streams(
    cluster: LiveCluster,
    requests: Sequence[generation_pb2.GenerateRequest],
    kill: Callable[[list[StreamEnd]], tuple[WorkerIdentity, generation_pb2.WorkerInfo]],
) -> tuple[list[StreamEnd], WorkerIdentity, generation_pb2.WorkerInfo]:
    """Sends every request at once and runs `kill(ends so far)` beside them; returns how
    each stream ended, the victim, and its stats just before the kill."""
    address = cluster.background.address
    ends = [StreamEnd() for _ in requests]
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        futures = [pool.submit(stream, address, r, e) for r, e in zip(requests, ends, strict=True)]
        victim, info_at_kill = kill(ends)
        for future in futures:
            future.result(timeout=CLIENT_DEADLINE_S + 10)
    return ends, victim, info_at_kill


def greedy_requests(prompts: Sequence[list[int]], max_tokens: int) -> list:
    return [token_request(p, max_tokens, temperature=0.0, ignore_eos=True) for p in prompts]


@pytest.fixture
def live_cluster(request, ray_cluster, model_cache_dir):
    background = start_cluster(model="tiny", model_cache_dir=model_cache_dir, **request.param)
    workers = {wid: h.identity for wid, h in background.cluster.workers.items()}
    yield LiveCluster(background, workers)
    background.stop()


def status_json(address: str) -> list[dict]:
    """`pdserve status --json`, as a user runs it: the workers it reports."""
    status = subprocess.run(
        [sys.executable, "-m", "pdserve.cli", "status", "--json", "--address", address],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    return json.loads(status.stdout)["workers"]


def router_sees_quiet(cluster: LiveCluster) -> bool:
    """The router's (periodically polled) view: the victim dead or gone, survivors idle."""
    channel, stub = client.connect(cluster.background.address)
    with channel:
        info = stub.GetServerInfo(generation_pb2.GetServerInfoRequest(), timeout=10)
    alive = {w.worker_id: w for w in info.workers if w.alive}
    survivors = {w.worker_id for w in cluster.survivors()}
    return set(alive) == survivors and all(holdings(w) == (0, 0, 0, True) for w in alive.values())


def assert_decode_kill_outcomes(
    ends: list[StreamEnd], references: list[list[int]], victim: str
) -> None:
    for index, (end, reference) in enumerate(zip(ends, references, strict=True)):
        assert end.seconds < CLIENT_DEADLINE_S, (index, end)
        if end.code is grpc.StatusCode.OK:
            assert end.tokens == reference, index
            continue
        assert end.code is grpc.StatusCode.UNAVAILABLE, (index, end)
        assert end.reason in WORKER_FAILURE_REASONS, (index, end)
        assert end.metadata.get("worker_id") == victim, (index, end)
        assert end.tokens == reference[: len(end.tokens)], (index, end)


@pytest.mark.parametrize("live_cluster", [DECODE_KILL], indirect=True)
def test_decode_killed_mid_stream_each_client_gets_its_text_or_worker_lost(live_cluster, tiny_dir):
    """A decode worker SIGKILLed while streaming: its streams end UNAVAILABLE naming it
    (the ones not yet past their first decode token may be recomputed elsewhere and end
    OK); every other stream is exact; survivors and `pdserve status` show nothing held."""
    prompts = random_prompts(DECODE_PROMPT_LENS, seed=11)
    references = hf_greedy(tiny_dir, prompts, DECODE_MAX_TOKENS, ignore_eos=True)

    ends, victim, info_at_kill = run_streams(
        live_cluster,
        greedy_requests(prompts, DECODE_MAX_TOKENS),
        lambda ends: kill_busiest_decoder_mid_stream(live_cluster, ends),
    )

    assert info_at_kill.running > 0  # the fault hit live streams
    assert_decode_kill_outcomes(ends, references, victim.worker_id)
    assert any(end.code is not grpc.StatusCode.OK for end in ends), "no stream was cut"
    wait_survivors_idle(live_cluster)
    wait_for(lambda: router_sees_quiet(live_cluster), ROUTER_VIEW_S, "router's view quiet")
    reported = {w["workerId"]: w for w in status_json(live_cluster.background.address)}
    assert not reported.get(victim.worker_id, {}).get("alive", False)
    live = [w for w in reported.values() if w["alive"]]
    assert sorted(w["workerId"] for w in live) == sorted(
        w.worker_id for w in live_cluster.survivors()
    )
    for worker in live:
        held = (worker["requestPages"], worker["leasesOutstanding"], worker["transfersInFlight"])
        assert held == (0, 0, 0) and worker["integrityOk"], worker


@pytest.mark.parametrize("live_cluster", [PREFILL_KILL], indirect=True)
def test_prefill_killed_with_queued_prompts_every_request_succeeds_elsewhere(
    live_cluster, tiny_dir
):
    """A prefill worker SIGKILLed with prompts queued or running: each of its requests is
    routed again (before token #1) or recomputed (KV source lost), so every one is exact;
    the decode worker and the other prefill worker hold nothing afterwards."""
    prompts = random_prompts(PREFILL_PROMPT_LENS, seed=12)
    references = hf_greedy(tiny_dir, prompts, PREFILL_MAX_TOKENS, ignore_eos=True)

    ends, _, info_at_kill = run_streams(
        live_cluster,
        greedy_requests(prompts, PREFILL_MAX_TOKENS),
        lambda ends: kill_first_busy_prefiller(live_cluster),
    )

    assert info_at_kill.queue_len + info_at_kill.running > 0  # it had prompts to lose
    assert [(end.code, end.tokens) for end in ends] == [
        (grpc.StatusCode.OK, reference) for reference in references
    ]
    wait_survivors_idle(live_cluster)
