"""S7 (shared/RELIABILITY.md): overload — three times capacity for 30 s (8 s under
`make test`).

A real local cluster (2 prefill + 2 decode mock-runner workers) whose router admits at most
16 requests at once. First its capacity is measured in the same run: 16 closed-loop clients
for a few seconds (completions per second, and TTFT at capacity). Then Poisson arrivals at
3× that rate. Must hold: refusals are RESOURCE_EXHAUSTED (reason OVERLOADED, with a retry
hint) and come back within 50 ms at p99; admitted requests meet the SLO — TTFT p90 within
2× its value at capacity (+ 100 ms) — and are exact; the router never holds more than its
bound; memory stays bounded (this process, which hosts the router, grows < 200 MiB); nothing
leaks.
"""

from __future__ import annotations

import asyncio
import random
import resource
import time
from dataclasses import dataclass

import grpc

from pdserve.client import error_info
from pdserve.v1 import generation_pb2 as pb
from pdserve.v1 import generation_pb2_grpc
from tests.chaos.harness import ChaosCluster, ChaosSetup, chaos_cluster
from tests.chaos.leaks import scenario_result
from tests.chaos.load import Outcome, RequestSpec, make_workload
from tests.chaos.report import record, scaled

CAP = 16
SETUP = ChaosSetup(max_concurrent_requests=CAP, mock_decode_s_per_step=0.01)
OVERLOAD_S = scaled(full=30, ci=8)
PROBE_S = 4.0
REFUSAL_P99_S = 0.05
MAX_GROWTH_MIB = 200


@dataclass(slots=True)
class Timed:
    outcome: Outcome
    ttft_s: float | None = None
    end_s: float = 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def capacity(cluster: ChaosCluster, specs: list[RequestSpec]) -> tuple[float, float]:
    """Completions per second with CAP closed-loop clients for PROBE_S, and TTFT p90 there."""
    pending, timings = iter(specs), []
    end = time.monotonic() + PROBE_S

    async def client(stub: generation_pb2_grpc.GenerationStub) -> None:
        for spec in pending:
            timings.append(await _timed(stub, spec))
            if time.monotonic() >= end:
                return

    started = time.monotonic()
    async with grpc.aio.insecure_channel(cluster.address) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        await asyncio.gather(*(client(stub) for _ in range(CAP)))
    seconds = time.monotonic() - started
    assert all(t.outcome.ok for t in timings), "a request failed below capacity"
    return len(timings) / seconds, percentile([t.ttft_s for t in timings if t.ttft_s], 0.9)


async def _timed(stub: generation_pb2_grpc.GenerationStub, spec: RequestSpec) -> Timed:
    timed = Timed(Outcome(spec.index))
    request = pb.GenerateRequest(
        tokens=pb.TokenInput(token_ids=spec.prompt),
        sampling=pb.SamplingParams(max_tokens=spec.max_tokens),
    )
    started = time.monotonic()
    try:
        async for response in stub.Generate(request, timeout=30):
            if timed.ttft_s is None and response.chunk.token_ids:
                timed.ttft_s = time.monotonic() - started
            timed.outcome.tokens += response.chunk.token_ids
        timed.outcome.code = "OK"
    except grpc.aio.AioRpcError as error:
        timed.outcome.code = error.code().name
        timed.outcome.reason = error_info(error)[0]
    timed.end_s = time.monotonic() - started
    expected = spec.reference if timed.outcome.ok else []
    timed.outcome.matches_reference = timed.outcome.tokens == expected
    return timed


async def overload(
    cluster: ChaosCluster, specs: list[RequestSpec], rate: float
) -> tuple[list[Timed], int]:
    """Poisson arrivals at `rate` for OVERLOAD_S; returns every call and the most requests
    the router held at once."""
    rng, router = random.Random(7), cluster.background.cluster.router
    tasks, most = [], 0
    async with grpc.aio.insecure_channel(cluster.address) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        end = time.monotonic() + OVERLOAD_S
        for spec in specs:
            if time.monotonic() >= end:
                break
            tasks.append(asyncio.create_task(_timed(stub, spec)))
            most = max(most, router.requests.num_in_flight)
            await asyncio.sleep(rng.expovariate(rate))
        return list(await asyncio.gather(*tasks)), most


def test_s7_overload_is_refused_fast_and_admitted_requests_meet_the_slo(
    ray_cluster, tiny_dir, model_cache_dir
):
    with chaos_cluster(SETUP, model_cache_dir) as cluster:
        specs = make_workload(20_000, cluster.vocab_size, cluster.eos_token_ids, seed=7)
        rate, ttft_at_capacity = asyncio.run(capacity(cluster, specs))
        before_mib = rss_mib()
        timed, most = asyncio.run(overload(cluster, specs[1000:], 3 * rate))
        growth_mib = rss_mib() - before_mib
        leaks = cluster.quiesce()
    outcomes = [t.outcome for t in timed]
    result = scenario_result("S7 overload", outcomes, leaks, OVERLOAD_S)
    refused = [t for t in timed if t.outcome.code == "RESOURCE_EXHAUSTED"]
    admitted = [t for t in timed if t.outcome.ok]
    refusal_p99 = percentile([t.end_s for t in refused], 0.99)
    ttft_p90 = percentile([t.ttft_s for t in admitted if t.ttft_s is not None], 0.9)
    slo_s = 2 * ttft_at_capacity + 0.1
    checks = {
        f"no refusal at 3x capacity ({rate:.0f} req/s)": bool(refused),
        f"refusals p99 {refusal_p99 * 1e3:.0f} ms <= 50 ms": refusal_p99 <= REFUSAL_P99_S,
        f"admitted TTFT p90 {ttft_p90:.3f} s <= SLO {slo_s:.3f} s": ttft_p90 <= slo_s,
        f"in flight {most} <= {CAP}": most <= CAP,
        f"memory growth {growth_mib:.0f} MiB < {MAX_GROWTH_MIB}": growth_mib < MAX_GROWTH_MIB,
        "refusals are OVERLOADED": all(t.outcome.reason == "OVERLOADED" for t in refused),
        "only refusals fail": len(refused) + len(admitted) == len(timed),
    }
    result.extra_failures += [name for name, held in checks.items() if not held]
    print(f"S7: capacity {rate:.1f} req/s, TTFT p90 at capacity {ttft_at_capacity:.3f} s; "
          f"{len(timed)} offered, {len(admitted)} admitted (TTFT p90 {ttft_p90:.3f} s), "
          f"{len(refused)} refused (p99 {refusal_p99 * 1e3:.1f} ms), growth {growth_mib:.0f} MiB")  # fmt: skip
    record(result)
    assert result.failures() == []
