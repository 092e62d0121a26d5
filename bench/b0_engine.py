"""B0 — engine output tokens/s against HF transformers `generate`: same model, dtype, threads.

Model SmolLM2-135M (converted once into the model cache), torch.set_num_threads(2) for both
arms. Prompts are seeded random token ids; every request produces exactly its drawn number
of tokens (ignore_eos, max_tokens = the drawn length).

  (a) mixed    64 requests, inputs U[32, 512], outputs U[16, 256]   (headline, target ≥ 2×)
  (b) uniform  32 requests × 128 in / 128 out                          (target ≥ 1.0×)

  pdserve  one EngineCore (the workers' scheduler defaults, prefix caching on), every request
           submitted at once, stepped until it drains (continuous batching); tokens counted as
           produced. Its page pool holds every request's full context, so nothing is preempted.
  hf       AutoModelForCausalLM from the same directory, `generate` in static batches of 32 in
           submission order, left-padded; each batch runs to its longest output
           (min_new_tokens = max_new_tokens = that length) and only the tokens each request
           asked for count as output.

Per dtype: one discarded warm-up of both arms on a small workload, then rounds of
pdserve(a), hf(a), pdserve(b), hf(b), interleaved; medians with min–max. bfloat16 is the
headline dtype only if it is faster than float32 for both arms on both workloads. On a CPU
without native bfloat16 arithmetic (no avx512_bf16 / amx_bf16: the AVX2 boxes) bfloat16 is
skipped, its matmuls being emulated and several times slower than float32; the JSON says so.

On a machine with CUDA (bench_device()) both arms run on the GPU: the engine as a GPU worker
runs (Triton attention, decode steps replayed from CUDA graphs of the worker's batch sizes),
HF's model on the same device in the same dtype; every timed run ends with
torch.cuda.synchronize(). bfloat16 is the headline there, float32 runs beside it in a full
run, each workload is also warmed once (discarded), and the target for (a) is ≥ 10×
(BENCHMARKS.md's GPU column). The machine record names the GPU. Threads stay at 2.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.common import (
    BenchResult,
    Summary,
    bench_device,
    device_info,
    interleave,
    machine_info,
)
from bench.engine_arms import CPU, ENGINE, ArmRun, EngineArm, HFArm, engine_config
from bench.engine_workloads import (
    WARMUP,
    Plan,
    Workload,
    describe_lengths,
    hf_computed_tokens,
    plan_for,
)
from engine.builder import DEFAULT_MODEL_CACHE
from engine.config import ModelConfig
from engine.weights import resolve_model

ID = "B0"
NAME = "engine ÷ HF generate output tok/s, workload (a)"
TARGET_MIXED = 2.0
TARGET_UNIFORM = 1.0
TARGET_MIXED_GPU = 10.0
MODEL = "smollm2-135m"
NUM_THREADS = 2


def run(quick: bool) -> BenchResult:
    device = bench_device()
    plan = plan_for(quick, device.type)
    target_a = TARGET_MIXED_GPU if device.type == "cuda" else TARGET_MIXED
    torch.set_num_threads(NUM_THREADS)
    threads = _thread_info()
    mode = "quick" if plan.is_quick else "full"
    print(f"B0 [{mode}] process threads: {threads}", flush=True)
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
        print(f"B0 on {gpu}: dtypes {plan.dtypes}, target (a) ≥ {target_a:g}× (GPU)", flush=True)
    model_dir = resolve_model(MODEL, DEFAULT_MODEL_CACHE)
    dtypes, skipped = _runnable_dtypes(plan.dtypes, device)
    by_dtype = {dtype: measure_dtype(model_dir, dtype, plan, device) for dtype in dtypes}
    headline_dtype = _headline_dtype(by_dtype, device)
    rows = by_dtype[headline_dtype]
    _print_summary(by_dtype, headline_dtype)
    details = {
        "mode": mode,
        "quick": plan.is_quick,
        "device": device.type,
        "headline_dtype": headline_dtype,
        "skipped_dtypes": skipped,
        "ratio_a": rows["a"]["ratio"],
        "ratio_b": rows["b"]["ratio"],
        "target_a": target_a,
        "target_b": TARGET_UNIFORM,
        "passed_b": rows["b"]["ratio"] >= TARGET_UNIFORM,
        "threads": threads,
        "model": MODEL,
        "engine": ENGINE.model_dump(mode="json"),
        "hf_batch_size": plan.hf_batch_size,
        "repeats": plan.repeats,
        "warmup": f"one discarded run of each arm: {describe_lengths(WARMUP)}"
        + (", then one of each timed workload" if plan.warm_workloads else ""),
        "by_dtype": by_dtype,
    }
    if device.type == "cuda":
        details["cuda_graph_batch_sizes"] = list(engine_config(device).graph_batch_sizes())
    name = NAME + (" [cuda]" if device.type == "cuda" else "")
    name = f"{name} [quick]" if plan.is_quick else name
    machine = machine_info() | threads | device_info(device)
    return BenchResult(ID, name, rows["a"]["ratio"], target_a, details, machine)


def measure_dtype(
    model_dir: Path, dtype: str, plan: Plan, device: torch.device = CPU
) -> dict[str, dict[str, Any]]:
    """Both arms on both workloads in interleaved rounds; one summary row per workload."""
    vocab_size = ModelConfig.from_dir(model_dir).vocab_size
    workloads = [spec.draw(vocab_size) for spec in plan.workloads]
    warmup = WARMUP.draw(vocab_size)
    num_pages = max(w.num_pages(ENGINE.page_size) for w in [*workloads, warmup])
    arms = (
        EngineArm(model_dir, dtype, num_pages, device),
        HFArm(model_dir, dtype, plan.hf_batch_size, device),
    )
    warmups = [warmup, *workloads] if plan.warm_workloads else [warmup]
    for arm in arms:
        for workload in warmups:
            arm.run(workload)
    runs: dict[str, list[ArmRun]] = {}
    steps: dict[str, int] = {}

    def timed(arm: EngineArm | HFArm, workload: Workload) -> Callable[[], float]:
        def once() -> float:
            result = arm.run(workload)
            runs.setdefault(f"{arm.name}/{workload.spec.name}", []).append(result)
            if isinstance(arm, EngineArm):
                steps[workload.spec.name] = arm.num_steps
            print(f"B0 {dtype} {arm.name}/{workload.spec.name}: {result.describe()}", flush=True)
            return result.tok_per_s

        return once

    schedule = {f"{arm.name}/{w.spec.name}": timed(arm, w) for w in workloads for arm in arms}
    interleave(schedule, plan.repeats, warmup=0)
    return {w.spec.name: _row(w, plan.hf_batch_size, runs, steps[w.spec.name]) for w in workloads}


def _row(
    workload: Workload, hf_batch_size: int, runs: dict[str, list[ArmRun]], num_steps: int
) -> dict[str, Any]:
    name, spec = workload.spec.name, workload.spec
    engine, hf = runs[f"pdserve/{name}"], runs[f"hf/{name}"]
    engine_tps = Summary.of([r.tok_per_s for r in engine])
    hf_tps = Summary.of([r.tok_per_s for r in hf])
    paired = Summary.of([e.tok_per_s / h.tok_per_s for e, h in zip(engine, hf, strict=True)])
    return {
        "num_requests": spec.num_requests,
        "input_len": list(spec.input_len),
        "output_len": list(spec.output_len),
        "num_prompt_tokens": sum(len(p) for p in workload.prompts),
        "num_output_tokens": workload.num_output_tokens,
        "hf_computed_output_tokens": hf_computed_tokens(workload, hf_batch_size),
        "pdserve_steps": num_steps,
        "ratio": round(engine_tps.median / hf_tps.median, 3),
        "paired_ratio": paired.scaled(1),
        "pdserve_tok_s": engine_tps.scaled(1),
        "hf_tok_s": hf_tps.scaled(1),
        # per round; cpu_s / wall_s is ~NUM_THREADS when the process had its cores to itself
        "pdserve_wall_s": [round(r.wall_s, 2) for r in engine],
        "hf_wall_s": [round(r.wall_s, 2) for r in hf],
        "pdserve_cpu_s": [round(r.cpu_s, 2) for r in engine],
        "hf_cpu_s": [round(r.cpu_s, 2) for r in hf],
    }


def _runnable_dtypes(
    dtypes: tuple[str, ...], device: torch.device = CPU
) -> tuple[list[str], dict[str, str]]:
    """The dtypes worth timing here, and why any other was skipped (a GPU runs bf16 natively:
    the CPU flags say nothing about it)."""
    if "bfloat16" not in dtypes or device.type == "cuda" or _has_native_bf16():
        return list(dtypes), {}
    reason = "CPU lacks avx512_bf16/amx_bf16: bfloat16 matmuls are emulated, slower than float32"
    return [d for d in dtypes if d != "bfloat16"], {"bfloat16": reason}


def _has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # unknown: measure it
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _headline_dtype(
    by_dtype: dict[str, dict[str, dict[str, Any]]], device: torch.device = CPU
) -> str:
    """On a GPU bfloat16, the GPU engine's dtype. On the CPU bfloat16 when it beats float32 for
    both arms on both workloads, else float32."""
    if device.type == "cuda" and "bfloat16" in by_dtype:
        return "bfloat16"
    if "bfloat16" not in by_dtype or "float32" not in by_dtype:
        return next(iter(by_dtype))
    bf16, fp32 = by_dtype["bfloat16"], by_dtype["float32"]
    faster = all(
        bf16[w][arm]["median"] > fp32[w][arm]["median"]
        for w in fp32
        for arm in ("pdserve_tok_s", "hf_tok_s")
    )
    return "bfloat16" if faster else "float32"


def _print_summary(by_dtype: dict[str, dict[str, dict[str, Any]]], headline_dtype: str) -> None:
    for dtype, rows in by_dtype.items():
        for name, row in rows.items():
            engine, hf = row["pdserve_tok_s"], row["hf_tok_s"]
            print(
                f"B0 {dtype} ({name}): pdserve {_range(engine)} tok/s, hf {_range(hf)} tok/s, "
                f"ratio {row['ratio']:.2f}×",
                flush=True,
            )
    print(f"B0 headline dtype: {headline_dtype}", flush=True)


def _range(summary: dict[str, float]) -> str:
    return f"{summary['median']:.1f} [{summary['min']:.1f}–{summary['max']:.1f}]"


def _thread_info() -> dict[str, Any]:
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "os_cpu_count": os.cpu_count(),
        "affinity": affinity,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
    }
