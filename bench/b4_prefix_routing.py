"""B4 — prefix-aware routing on a shared-prefix workload: throughput, hit rate, TTFT.

Workload (bench/prefix_workload.py): 16 groups × 16 prompts, each a group's 1,024-token
prefix plus a unique 32–64-token suffix, groups interleaved in a seeded random order,
open-loop Poisson arrivals, max_tokens 2. Servers (bench/prefix_cluster.py): 4 prefill and 2
decode mock workers in one process, the real router in another, the client in this one.

What is real and what is modelled: the router (its page-event feed, prefix index, policy),
the workers' page pools (engine.page_pool.PagePool: match, LRU eviction, events) and so the
hit rates and routes are real. Compute is modelled: a prefill worker runs one prefill at a
time and sleeps PREFILL_S_PER_TOKEN per uncached token (100 µs: a 1k-token miss ~107 ms, a
hit ~5 ms, the 20:1 of a fast accelerator). The per-token cost is chosen so that the
modelled compute, not this 2-core box's Python gRPC plumbing (a few ms of CPU per request
over client, router and mocks), is what saturates the baseline. Each prefill worker caches
336 pages of 16 (5,376 tokens): the 16 prefixes (16,384 tokens) are 3.05× one worker's cache
and fit in the four together.

Arms, all with conditional disaggregation off and colocate_threshold_tokens 0 (every prompt
goes through a prefill worker): prefix_aware, round_robin, least_load — one router over all
six workers — and oracle: a static partition, group g → prefill worker g mod 4, which the
client applies by sending group g to router g mod 4 of four routers that each front one
prefill worker and both decode workers (same router code and hops, the choice made with
the truth). The oracle hit rate is computed, not measured: the bound of
prefix_workload.Workload.oracle_hit_rate (only each group's first prompt misses), which the
static partition can reach because each worker's four prefixes fit its cache; the oracle
arm's measured rate is reported beside it.

Per round, arms interleaved, each run on fresh workers and routers (empty caches):
  saturation  the workload offered at SATURATING_RATE (above every arm's capacity):
              throughput = completed ÷ (last completion − first send)
  at RR's saturation  the workload offered at the rate round-robin completed in this
              round's saturation run: p90 TTFT
Rounds: 3 after a discarded warm-up (every arm once at saturation); quick: 1, no warm-up. Headline: throughput
prefix_aware ÷ round_robin, median of the rounds' paired ratios (target ≥ 1.8); also hit
rate ÷ oracle (≥ 0.9, the lower of the two runs) and RR ÷ prefix_aware p90 TTFT (≥ 10).
"""

from __future__ import annotations

import asyncio
import enum
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench.common import BenchResult, Summary, machine_info, pin_to_core
from bench.prefix_cluster import (
    START_TIMEOUT_S,
    Child,
    Command,
    RouterPlan,
    WorkerPlan,
    send_all,
    serve_routers,
    serve_workers,
)
from bench.prefix_workload import RunFigures, Workload, WorkloadSpec
from kv_transfer.pages import KVLayout
from pdserve.v1 import generation_pb2_grpc

ID = "B4"
NAME = "throughput prefix_aware ÷ round_robin, shared-prefix workload"
TARGET = 1.8
HIT_RATIO_TARGET, TTFT_RATIO_TARGET = 0.9, 10.0

CLIENT_CORE, WORKER_CORE, ROUTER_CORE = 0, 0, 1
LAYOUT = KVLayout(num_layers=2, num_kv_heads=1, head_dim=8, page_size=16, dtype="float32")
NUM_PREFILL, NUM_DECODE = 4, 2
CACHE_PAGES = 336
PREFILL_S_PER_TOKEN = 100e-6
SATURATING_RATE = 400.0
MAX_TOKENS = 2
CALL_TIMEOUT_S = 120.0
MODEL_CACHE = Path.home() / ".cache" / "pdserve" / "models"


class Arm(enum.StrEnum):
    PREFIX_AWARE = "prefix_aware"
    ROUND_ROBIN = "round_robin"
    LEAST_LOAD = "least_load"
    ORACLE = "oracle"


class Load(enum.StrEnum):
    SATURATION = "saturation"
    RR_SATURATION = "at_rr_saturation"


@dataclass(frozen=True, slots=True)
class RunResult:
    rate_per_s: float  # offered
    figures: RunFigures
    cpu_ms_per_request: dict[str, float]  # client, routers, workers


Round = dict[Load, dict[Arm, RunResult]]


WORKERS = WorkerPlan(
    LAYOUT,
    NUM_PREFILL,
    NUM_DECODE,
    prefill_behavior={
        "cache_pages": CACHE_PAGES,
        "prefill_s_per_token": PREFILL_S_PER_TOKEN,
        "page_wait_s": CALL_TIMEOUT_S,  # queue for pages pinned by leases, as a real worker
    },
    decode_behavior={"num_pages": 1 << 16},
)
ROUTER_SETTINGS = {
    "conditional_disaggregation": False,
    "colocate_threshold_tokens": 0,
    "max_concurrent_requests": 1024,
}


def router_plans(arm: Arm, addresses: list[str]) -> list[RouterPlan]:
    """One router over every worker, or (oracle) one per prefill worker with both decoders."""
    prefills, decodes = addresses[:NUM_PREFILL], tuple(addresses[NUM_PREFILL:])
    if arm is Arm.ORACLE:
        config = ROUTER_SETTINGS | {"routing_policy": "least_load"}
        return [RouterPlan(config, (prefill, *decodes)) for prefill in prefills]
    return [RouterPlan(ROUTER_SETTINGS | {"routing_policy": arm.value}, tuple(addresses))]


class Servers:
    """The two server processes; `start(arm)` gives fresh workers and routers for one run."""

    def __init__(self, model_dir: Path) -> None:
        self.workers = Child(WORKER_CORE, serve_workers)
        self.routers = Child(ROUTER_CORE, serve_routers, model_dir)

    def start(self, arm: Arm) -> list[str]:
        addresses = self.workers.call(Command.START, WORKERS, START_TIMEOUT_S)
        return self.routers.call(Command.START, router_plans(arm, addresses), START_TIMEOUT_S)

    def stop(self) -> None:
        self.routers.call(Command.STOP)
        self.workers.call(Command.STOP)

    def cpu_s(self) -> dict[str, float]:
        return {"workers": self.workers.cpu_s(), "routers": self.routers.cpu_s()}

    def close(self) -> None:
        self.routers.close()
        self.workers.close()


async def measure(servers: Servers, workload: Workload, arm: Arm, rate_per_s: float) -> RunResult:
    """One run of `arm` at `rate_per_s` on fresh servers: its figures and CPU seconds."""
    addresses = servers.start(arm)
    channels = [grpc.aio.insecure_channel(address) for address in addresses]
    try:
        stubs = [generation_pb2_grpc.GenerationStub(channel) for channel in channels]
        cpu_before, servers_before = time.process_time(), servers.cpu_s()
        outcomes = await send_all(stubs, workload, rate_per_s, MAX_TOKENS, CALL_TIMEOUT_S)
        client_cpu_s = time.process_time() - cpu_before
        servers_cpu_s = {k: v - servers_before[k] for k, v in servers.cpu_s().items()}
    finally:
        for channel in channels:
            await channel.close()
        servers.stop()
    cpu_s = {"client": client_cpu_s} | servers_cpu_s
    return RunResult(
        rate_per_s,
        RunFigures.of(outcomes),
        {name: seconds / len(outcomes) * 1e3 for name, seconds in cpu_s.items()},
    )


def run(quick: bool) -> BenchResult:
    from engine.weights import resolve_model

    pin_to_core(CLIENT_CORE)
    model_dir = resolve_model("tiny", MODEL_CACHE)
    workload = WorkloadSpec().draw()
    assert workload.fits_static_partition(NUM_PREFILL, CACHE_PAGES * LAYOUT.page_size)
    repeats = 1 if quick else 3
    load_before = os.getloadavg()[0]
    servers = Servers(model_dir)
    try:
        with asyncio.Runner() as runner:
            if not quick:  # warm-up, discarded: each arm once at saturation
                _saturated(runner, servers, workload)
            rounds = [run_round(runner, servers, workload) for _ in range(repeats)]
    finally:
        servers.close()
    value, details = summarize(rounds, workload)
    details["load_average_1m"] = {"start": load_before, "end": os.getloadavg()[0]}
    return BenchResult(ID, NAME, value, TARGET, details, machine_info())


def run_round(runner: asyncio.Runner, servers: Servers, workload: Workload) -> Round:
    """Every arm at saturation, then every arm at the rate round-robin just sustained."""
    saturated = _saturated(runner, servers, workload)
    rr_rate = saturated[Arm.ROUND_ROBIN].figures.throughput_per_s
    at_rr = {arm: _run(runner, servers, workload, arm, rr_rate) for arm in Arm}
    return {Load.SATURATION: saturated, Load.RR_SATURATION: at_rr}


def _saturated(
    runner: asyncio.Runner, servers: Servers, workload: Workload
) -> dict[Arm, RunResult]:
    return {arm: _run(runner, servers, workload, arm, SATURATING_RATE) for arm in Arm}


def _run(
    runner: asyncio.Runner, servers: Servers, workload: Workload, arm: Arm, rate: float
) -> RunResult:
    result = runner.run(measure(servers, workload, arm, rate))
    f, cpu = result.figures, result.cpu_ms_per_request
    print(
        f"B4 {arm.value} at {rate:.0f} req/s: {f.throughput_per_s:.1f} req/s, hit {f.hit_rate:.3f},"
        f" TTFT p50/p90 {f.ttft_p50_s * 1e3:.0f}/{f.ttft_p90_s * 1e3:.0f} ms,"
        f" {f.num_prefill_workers_per_group:.2f} prefill workers/group, {f.num_errors} errors;"
        f" CPU ms/request client {cpu['client']:.2f} routers {cpu['routers']:.2f}"
        f" workers {cpu['workers']:.2f}",
        flush=True,
    )
    return result


def summarize(rounds: list[Round], workload: Workload) -> tuple[float, dict]:
    """The headline (median paired throughput ratio) and every figure, from the kept rounds."""
    oracle_hit = workload.oracle_hit_rate(LAYOUT.page_size)

    def paired(load: Load, figure: str, top: Arm, bottom: Arm) -> Summary:
        return Summary.of(
            [
                getattr(r[load][top].figures, figure) / getattr(r[load][bottom].figures, figure)
                for r in rounds
            ]
        )

    throughput = paired(Load.SATURATION, "throughput_per_s", Arm.PREFIX_AWARE, Arm.ROUND_ROBIN)
    hit_ratio = {
        load: Summary.of([r[load][Arm.PREFIX_AWARE].figures.hit_rate / oracle_hit for r in rounds])
        for load in Load
    }
    ttft_ratio = paired(Load.RR_SATURATION, "ttft_p90_s", Arm.ROUND_ROBIN, Arm.PREFIX_AWARE)
    details = {
        "workload": _workload_row(workload),
        "oracle_hit_rate_bound": round(oracle_hit, 4),
        "throughput_ratio_vs_round_robin": _summary_row(throughput),
        "throughput_ratio_vs_least_load": _summary_row(
            paired(Load.SATURATION, "throughput_per_s", Arm.PREFIX_AWARE, Arm.LEAST_LOAD)
        ),
        "throughput_ratio_vs_oracle": _summary_row(
            paired(Load.SATURATION, "throughput_per_s", Arm.PREFIX_AWARE, Arm.ORACLE)
        ),
        "hit_rate_ratio_vs_oracle": {load.value: _summary_row(s) for load, s in hit_ratio.items()},
        "hit_rate_ratio_target": HIT_RATIO_TARGET,
        "hit_rate_ratio_met": min(s.median for s in hit_ratio.values()) >= HIT_RATIO_TARGET,
        "p90_ttft_ratio_rr_over_prefix_aware": _summary_row(ttft_ratio),
        "p90_ttft_ratio_target": TTFT_RATIO_TARGET,
        "p90_ttft_ratio_met": ttft_ratio.median >= TTFT_RATIO_TARGET,
        "arms": {load.value: _arm_rows(rounds, load) for load in Load},
    }
    return round(throughput.median, 3), details


def _arm_rows(rounds: list[Round], load: Load) -> dict:
    rows = {}
    for arm in Arm:
        runs = [r[load][arm] for r in rounds]
        figures = [run.figures for run in runs]
        rows[arm.value] = {
            "offered_per_s": _summary_row(Summary.of([run.rate_per_s for run in runs])),
            "throughput_per_s": _summary_row(Summary.of([f.throughput_per_s for f in figures])),
            "hit_rate": _summary_row(Summary.of([f.hit_rate for f in figures])),
            "ttft_p50_ms": _summary_row(Summary.of([f.ttft_p50_s * 1e3 for f in figures])),
            "ttft_p90_ms": _summary_row(Summary.of([f.ttft_p90_s * 1e3 for f in figures])),
            "prefill_workers_per_group": _summary_row(
                Summary.of([f.num_prefill_workers_per_group for f in figures])
            ),
            "errors": sum(f.num_errors for f in figures),
            "cpu_ms_per_request": {
                name: round(statistics.median(run.cpu_ms_per_request[name] for run in runs), 2)
                for name in runs[0].cpu_ms_per_request
            },
        }
    return rows


def _summary_row(summary: Summary) -> dict[str, float]:
    return {key: round(value, 4) for key, value in summary.scaled(1.0).items()}


def _workload_row(workload: Workload) -> dict:
    spec = workload.spec
    return {
        "groups": spec.num_groups,
        "prompts_per_group": spec.prompts_per_group,
        "prefix_len": spec.prefix_len,
        "suffix_len": list(spec.suffix_len),
        "prompt_tokens": workload.num_prompt_tokens,
        "cache_tokens_per_prefill_worker": CACHE_PAGES * LAYOUT.page_size,
        "cache_demand_over_one_worker": round(
            workload.prefix_tokens / (CACHE_PAGES * LAYOUT.page_size), 2
        ),
        "prefill_s_per_token": PREFILL_S_PER_TOKEN,
        "saturating_rate_per_s": SATURATING_RATE,
    }
