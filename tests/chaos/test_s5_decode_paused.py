"""S5 (shared/RELIABILITY.md): a decode worker paused past its leases (SIGSTOP, SIGCONT).

A real local cluster (2 prefill + 2 decode mock-runner workers, leases of 1 s); 2,000
requests (300 under `make test`) at concurrency 32, half shared-prefix. A third of the way
in, a decode worker that is streaming is stopped for three lease periods, then continued.
Handoffs sent to it meanwhile wait in its frozen process while their leases expire on the
prefill side, which frees (and may reuse) the pages. Whether the router sends any there
before it sees the worker silent is up to its load balance, so the test also hands one off
itself while the worker is stopped (a probe: Prefill on a prefill worker, then Decode to the
stopped worker over a channel opened before the stop). Must hold: the prefill side really
expired leases; the resumed worker never serves KV read under an ended lease (the probe's
Decode and the router's own handoffs there end KV_LEASE_EXPIRED or KV_TRANSFER_FAILED, and
the router recomputes its own), so every output equals the reference; 0 requests lost — all
end OK, the streams it held simply resume; nothing leaks.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc

from kv_transfer.pages import Role
from pdserve.v1 import worker_pb2, worker_pb2_grpc
from pdserve.worker_errors import WorkerReason, failure_reason
from tests.chaos.harness import ChaosCluster, ChaosSetup, chaos_cluster
from tests.chaos.leaks import scenario_result
from tests.chaos.load import Action, make_workload, run_load
from tests.chaos.report import record, scaled

NUM_REQUESTS = scaled(full=2000, ci=300)
CONCURRENCY = 32
SETUP = ChaosSetup(num_prefill=2, num_decode=2, lease_ttl_s=1.0)
PAUSE_S = 3 * SETUP.lease_ttl_s
PROBE_ID = "s5-probe"
UNSERVED = {WorkerReason.KV_LEASE_EXPIRED, WorkerReason.KV_TRANSFER_FAILED}


def process_state(pid: int) -> str:
    """The one-letter state of /proc/<pid>/stat: "T" while stopped."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


def leases_expired(cluster: ChaosCluster) -> int:
    total = 0
    for worker_id in cluster.worker_ids(Role.PREFILL):
        address = cluster.identities[worker_id].address
        with grpc.insecure_channel(address) as channel:
            stats = worker_pb2_grpc.WorkerStub(channel).GetStats(
                worker_pb2.GetStatsRequest(), timeout=5
            )
        total += stats.leases_expired
    return total


async def probe_handoff(cluster: ChaosCluster, decode: worker_pb2_grpc.WorkerStub) -> str:
    """Prefills one request and hands its KV to `decode` (stopped: the call waits in its
    socket); returns how the Decode ended once the worker runs again: "served" or the reason."""
    prefill_address = cluster.identities[cluster.worker_ids(Role.PREFILL)[0]].address
    sampling = worker_pb2.WorkerSampling(max_tokens=4, ignore_eos=True)
    prompt = list(range(1, 33))
    async with grpc.aio.insecure_channel(prefill_address) as channel:
        prefill = await worker_pb2_grpc.WorkerStub(channel).Prefill(
            worker_pb2.PrefillRequest(
                request_id=PROBE_ID, prompt_token_ids=prompt, sampling=sampling, kv_backend="shm"
            ),  # fmt: skip
            timeout=10,
        )
    request = worker_pb2.DecodeRequest(
        request_id=PROBE_ID, prompt_token_ids=prompt, sampling=sampling, has_first_token=True,
        first_token_id=prefill.first_token_id, handle=prefill.handle, src_address=prefill_address,
    )  # fmt: skip
    try:
        async for _ in decode.Decode(request, timeout=60):
            pass
    except grpc.aio.AioRpcError as error:
        return failure_reason(error) or error.code().name
    return "served"


def recomputes(cluster: ChaosCluster, reason: str) -> int:
    registry = cluster.background.cluster.router.metrics.registry
    value = registry.get_sample_value("pdserve_request_recomputes_total", {"reason": reason})
    return int(value or 0)


def test_s5_decode_paused_past_its_leases_loses_nothing(ray_cluster, tiny_dir, model_cache_dir):
    with chaos_cluster(SETUP, model_cache_dir) as cluster:
        victim = cluster.worker_ids(Role.DECODE)[0]
        seen: dict[str, object] = {}

        async def pause() -> None:
            victim_address = cluster.identities[victim].address
            async with grpc.aio.insecure_channel(victim_address) as channel:
                await channel.channel_ready()  # connected now: the probe's call needs no reply
                while not (await cluster.stats(victim)).running:
                    await asyncio.sleep(0.01)
                cluster.signal(victim, signal.SIGSTOP)
                await asyncio.sleep(0.05)
                seen["state"] = process_state(cluster.pid(victim))
                probe = asyncio.create_task(
                    probe_handoff(cluster, worker_pb2_grpc.WorkerStub(channel))
                )
                await asyncio.sleep(PAUSE_S)
                seen["expired"] = await asyncio.to_thread(leases_expired, cluster)
                cluster.signal(victim, signal.SIGCONT)
                seen["probe"] = await probe

        specs = make_workload(NUM_REQUESTS, cluster.vocab_size, cluster.eos_token_ids, seed=5)
        action = Action(pause, after_requests=NUM_REQUESTS // 3)
        run = asyncio.run(run_load(cluster.address, specs, CONCURRENCY, [action]))
        leaks = cluster.quiesce()
        lease_recomputes = recomputes(cluster, "KV_LEASE_EXPIRED")
    verified = (
        seen.get("state") == "T" and seen.get("expired", 0) > 0 and seen.get("probe") in UNSERVED
    )
    result = scenario_result("S5 decode paused", run.outcomes, leaks, run.seconds, 1, int(verified))
    if result.ok != NUM_REQUESTS:
        result.extra_failures.append(f"{NUM_REQUESTS - result.ok} requests lost")
    print(f"S5: state {seen.get('state')}, leases expired {seen.get('expired')}, "
          f"probe handoff {seen.get('probe')}, "
          f"recomputed after KV_LEASE_EXPIRED {lease_recomputes}")  # fmt: skip
    record(result)
    assert result.failures() == []
