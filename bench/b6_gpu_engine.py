"""B6 — the GPU engine against its HBM roofline and HF `generate`, on one CUDA device.

Models: seeded random bf16 weights in the Qwen2.5-0.5B and Qwen3-0.6B shapes (the presets
qwen2.5-0.5b-shape and qwen3-0.6b-shape, written into the model cache on first use);
throughput does not depend on weight values. Every request ignores EOS. Per model:

  bandwidth    HBM GB/s of a 1 GiB device-to-device copy, (read + write) / time, 20 samples.
  decode step  B ∈ {1, 8, 64, 256} sequences of 512 random prompt tokens, prefilled in one
               step, then windows of 64 timed decode steps (core.step(): schedule, CUDA-graph replay,
               greedy sampling); HF's step on the same prompts is the slope between static-
               cache `generate` runs of 1 and 33 new tokens.
  roofline     bytes one decode step must read (every weight once + the batch's KV) ÷ the
               bandwidth; fraction = roofline time ÷ the engine's step time (median).
  offline      256 requests, inputs U[100, 1024], outputs U[100, 1024] (nano-vllm's bench),
               submitted at once and stepped until drained. HF runs the first 64 of them as
               one left-padded static batch to its longest output (a 256-row static cache of
               Qwen3-0.6B would take 59 GB beside the engine's); tok/s counts asked-for tokens.

Arms alternate (pdserve, hf) round by round: per batch size one discarded warm-up round,
then `repeats` kept; offline after one small discarded run of each. Medians with min–max.
HF's automatic torch.compile of a static-cache `generate` is disabled: it recompiles per batch
shape, minutes each, beyond a run's 10-minute budget — so HF here is eager with a static cache.

Targets (shared/BENCHMARKS.md): batch-1 step ≤ 1.5 ms (0.5B); ≥ 50 % of roofline at batch 256;
offline ≥ 25k tok/s (0.5B), ≥ 12k (0.6B). Headline: the 0.5B model's roofline fraction at its
largest batch (target ≥ 0.5); every target prints, met or not, before it.
"""

from __future__ import annotations

import gc
import statistics
from dataclasses import asdict, dataclass
from typing import Any

import torch

from bench.common import BenchResult, BenchUnavailable, Summary, interleave, machine_info
from bench.engine_workloads import Workload, WorkloadSpec
from bench.gpu_arms import (
    PAGE_SIZE,
    DecodeBatch,
    GpuEngine,
    HFGenerate,
    StepWindow,
    hbm_bandwidth_gb_s,
)
from engine.builder import DEFAULT_MODEL_CACHE
from engine.config import ModelConfig
from engine.weights import resolve_model

ID = "B6"
NAME = "decode step ÷ HBM roofline, qwen2.5-0.5b-shape, largest batch"
HEADLINE_MODEL = "qwen2.5-0.5b-shape"
TARGET_ROOFLINE = 0.5
TARGET_BATCH1_MS = 1.5  # qwen2.5-0.5b-shape
TARGET_TOK_S = {"qwen2.5-0.5b-shape": 25_000.0, "qwen3-0.6b-shape": 12_000.0}
WARMUP = WorkloadSpec("warmup", 4, (16, 64), (4, 8))


@dataclass(frozen=True, slots=True)
class GpuPlan:
    is_quick: bool
    batch_sizes: tuple[int, ...]
    context_len: int  # prompt tokens of each decode-step sequence
    num_timed_steps: int  # engine decode steps per window
    hf_extra_steps: int  # HF: new tokens beyond the first in the long `generate`
    offline: WorkloadSpec
    hf_offline_seqs: int  # HF runs the first this many offline requests
    repeats: int
    bandwidth_bytes: int

    def num_pages(self, offline: Workload) -> int:
        """Pages for the larger of the offline run and the biggest decode batch."""
        rounds = 1 + self.repeats
        decode_len = self.context_len + 2 + rounds * self.num_timed_steps
        decode_pages = max(self.batch_sizes) * -(-decode_len // PAGE_SIZE)
        return max(decode_pages, offline.num_pages(PAGE_SIZE))


FULL = GpuPlan(
    is_quick=False,
    batch_sizes=(1, 8, 64, 256),
    context_len=512,
    num_timed_steps=64,
    hf_extra_steps=32,
    offline=WorkloadSpec("offline", 256, (100, 1024), (100, 1024)),
    hf_offline_seqs=64,
    repeats=3,
    bandwidth_bytes=2**30,
)
QUICK = GpuPlan(
    is_quick=True,
    batch_sizes=(1, 8),
    context_len=128,
    num_timed_steps=16,
    hf_extra_steps=8,
    offline=WorkloadSpec("offline-quick", 32, (32, 128), (32, 128)),
    hf_offline_seqs=8,
    repeats=1,
    bandwidth_bytes=2**28,
)


@dataclass(frozen=True, slots=True)
class TargetCheck:
    what: str
    value: float
    bound: float
    at_most: bool  # the value must be ≤ bound (else ≥)

    @property
    def met(self) -> bool:
        return self.value <= self.bound if self.at_most else self.value >= self.bound

    def describe(self) -> str:
        sign = "≤" if self.at_most else "≥"
        verdict = "met" if self.met else "NOT met"
        return f"B6 target {self.what}: {self.value:.3g} ({sign} {self.bound:g}) {verdict}"


def run(quick: bool) -> BenchResult:
    if not torch.cuda.is_available():
        raise BenchUnavailable("needs CUDA: torch sees no CUDA device here; run it on a lent GPU")
    plan = QUICK if quick else FULL
    device = torch.device("cuda")
    by_model = {alias: measure_model(alias, plan, device) for alias in TARGET_TOK_S}
    checks = target_checks(by_model, plan)
    for check in checks:
        print(check.describe(), flush=True)
    headline = by_model[HEADLINE_MODEL]["decode"][-1]
    details = {
        "quick": plan.is_quick,
        "plan": asdict(plan),
        "headline_batch_size": headline["batch_size"],
        "targets": [asdict(check) | {"met": check.met} for check in checks],
        "by_model": by_model,
    }
    name = f"{NAME} [quick]" if plan.is_quick else NAME
    machine = machine_info() | _gpu_info(device)
    return BenchResult(ID, name, headline["roofline_fraction"], TARGET_ROOFLINE, details, machine)


def measure_model(alias: str, plan: GpuPlan, device: torch.device) -> dict[str, Any]:
    """Bandwidth, the decode-step rows and the offline row of one model; frees its memory."""
    model_dir = resolve_model(alias, DEFAULT_MODEL_CACHE)
    vocab_size = ModelConfig.from_dir(model_dir).vocab_size
    offline = plan.offline.draw(vocab_size)
    bandwidth = Summary.of(hbm_bandwidth_gb_s(plan.bandwidth_bytes, 20, device))
    print(f"B6 {alias}: HBM copy {_range(bandwidth.scaled(1))} GB/s", flush=True)
    engine = GpuEngine.load(model_dir, plan.num_pages(offline))
    hf = HFGenerate(model_dir, device)
    decode = []
    for batch_size in plan.batch_sizes:
        decode.append(measure_decode(engine, hf, batch_size, plan, bandwidth.median))
        print(f"B6 {alias} {_describe_decode(decode[-1])}", flush=True)
    result = {
        "hbm_gb_s": bandwidth.scaled(1),
        "weight_bytes": engine.weight_bytes(),
        "kv_bytes_per_token": engine.config.kv_bytes_per_token("bfloat16"),
        "decode": decode,
        "offline": measure_offline(engine, hf, offline, plan, vocab_size),
    }
    print(f"B6 {alias} offline: {_describe_offline(result['offline'])}", flush=True)
    del engine, hf
    gc.collect()
    torch.cuda.empty_cache()
    return result


def measure_decode(
    engine: GpuEngine, hf: HFGenerate, batch_size: int, plan: GpuPlan, bandwidth_gb_s: float
) -> dict[str, Any]:
    """The engine's and HF's decode step at one batch size, rounds alternating."""
    max_tokens = 2 + (1 + plan.repeats) * plan.num_timed_steps  # never finishes mid-window
    batch = DecodeBatch(engine, batch_size, plan.context_len, max_tokens)
    windows, hf_ms = [], []
    for round_index in range(1 + plan.repeats):  # round 0 warms both arms up
        window = batch.window(plan.num_timed_steps)
        hf_step_ms = hf.decode_step_ms(batch.prompts, plan.hf_extra_steps)
        if round_index > 0:
            windows.append(window)
            hf_ms.append(hf_step_ms)
    batch.close()
    return decode_row(engine, batch_size, windows, hf_ms, bandwidth_gb_s)


def decode_row(
    engine: GpuEngine,
    batch_size: int,
    windows: list[StepWindow],
    hf_ms: list[float],
    bandwidth_gb_s: float,
) -> dict[str, Any]:
    """Step times, and the roofline: what one step must read ÷ the measured bandwidth."""
    step = Summary.of([w.wall_ms for w in windows])
    device = Summary.of([w.device_ms for w in windows])
    hf = Summary.of(hf_ms)
    kv_tokens = statistics.mean(w.kv_tokens for w in windows)
    bytes_per_step = engine.weight_bytes() + engine.kv_bytes(kv_tokens)
    roofline_ms = bytes_per_step / (bandwidth_gb_s * 1e9) * 1e3
    return {
        "batch_size": batch_size,
        "mean_context_len": kv_tokens / batch_size,
        "pdserve_step_ms": step.scaled(1),
        "pdserve_device_ms": device.scaled(1),
        "hf_step_ms": hf.scaled(1),
        "speedup_vs_hf": hf.median / step.median,
        "bytes_per_step": bytes_per_step,
        "roofline_ms": roofline_ms,
        "roofline_fraction": roofline_ms / step.median,
        "roofline_fraction_device": roofline_ms / device.median,
        "tok_s": batch_size / step.median * 1e3,
    }


def measure_offline(
    engine: GpuEngine, hf: HFGenerate, workload: Workload, plan: GpuPlan, vocab_size: int
) -> dict[str, Any]:
    """The offline workload, arms alternating; HF on its first hf_offline_seqs requests."""
    num_hf = plan.hf_offline_seqs
    hf_workload = Workload(workload.spec, workload.prompts[:num_hf], workload.output_lens[:num_hf])
    warmup = WARMUP.draw(vocab_size)
    engine.run_offline(warmup)
    hf.run_offline(warmup)
    samples = interleave(
        {
            "pdserve": lambda: _logged("pdserve", engine.run_offline(workload).tok_per_s),
            "hf": lambda: _logged("hf", hf.run_offline(hf_workload).tok_per_s),
        },
        plan.repeats,
        warmup=0,
    )
    engine_tps, hf_tps = Summary.of(samples["pdserve"]), Summary.of(samples["hf"])
    return {
        "num_requests": len(workload.prompts),
        "num_output_tokens": workload.num_output_tokens,
        "hf_num_requests": num_hf,
        "pdserve_tok_s": engine_tps.scaled(1),
        "hf_tok_s": hf_tps.scaled(1),
        "ratio": engine_tps.median / hf_tps.median,
    }


def target_checks(by_model: dict[str, dict[str, Any]], plan: GpuPlan) -> list[TargetCheck]:
    """BENCHMARKS.md's B6 targets, on the batch sizes this plan measured."""
    checks = []
    first = by_model[HEADLINE_MODEL]["decode"][0]
    if first["batch_size"] == 1:
        what = f"{HEADLINE_MODEL} batch-1 step ms"
        checks.append(TargetCheck(what, first["pdserve_step_ms"]["median"], TARGET_BATCH1_MS, True))
    for alias, result in by_model.items():
        last = result["decode"][-1]
        what = f"{alias} roofline fraction at batch {last['batch_size']}"
        checks.append(TargetCheck(what, last["roofline_fraction"], TARGET_ROOFLINE, False))
        tok_s = result["offline"]["pdserve_tok_s"]["median"]
        what = f"{alias} offline tok/s ({plan.offline.num_requests} requests)"
        checks.append(TargetCheck(what, tok_s, TARGET_TOK_S[alias], False))
    return checks


def _describe_decode(row: dict[str, Any]) -> str:
    return (
        f"B={row['batch_size']}: pdserve {_range(row['pdserve_step_ms'])} ms/step "
        f"(device {row['pdserve_device_ms']['median']:.3g}), hf {_range(row['hf_step_ms'])} ms, "
        f"roofline {row['roofline_ms']:.3g} ms = {row['roofline_fraction']:.0%} of the step"
    )


def _describe_offline(row: dict[str, Any]) -> str:
    return (
        f"pdserve {_range(row['pdserve_tok_s'])} tok/s ({row['num_requests']} requests), "
        f"hf {_range(row['hf_tok_s'])} tok/s (first {row['hf_num_requests']}), "
        f"ratio {row['ratio']:.2f}×"
    )


def _logged(arm: str, tok_s: float) -> float:
    print(f"B6 offline {arm}: {tok_s:.0f} tok/s", flush=True)
    return tok_s


def _range(summary: dict[str, float]) -> str:
    return f"{summary['median']:.3g} [{summary['min']:.3g}–{summary['max']:.3g}]"


def _gpu_info(device: torch.device) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(device)
    return {
        "gpu": props.name,
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "cuda": torch.version.cuda,
    }
