"""B1 — KV handoff efficiency: η = a transport's GB/s ÷ a raw contiguous copy's GB/s, same path.

Two processes, each pinned to its own core with one torch thread: this one exports (the
prefill side), a spawned child fetches (the decode side). The cache is SmolLM2-135M shaped
(30 layers × 3 KV heads × 64, bf16: 22.5 KiB per token), 128…8k tokens, pages of 16 and 64,
scattered source and destination pages. One handoff runs from the start of export to the
child's reply that its pages are filled; in every arm the locator crosses one pipe.

  raw       memcpy of a contiguous buffer into a warm shared segment, memcpy out in the child
  shm       ShmTransport: export (gather into its segment, checksum) + fetch (checksum, scatter)
  shm_nock  the same with verify_checksum off
  gloo      CollectiveTransport over gloo; the torch world of the two processes is formed with
            init_process_group directly (Ray only rendezvouses; the data path is the same)
  tcp       TcpTransport over loopback: stage, stream, checksum, scatter (the cross-node path
            of pods that form no KV group)

Arms interleave per size, one warm-up round is dropped, medians with min–max are reported.
Headline: the lowest η (shm, checksum on, the workers' default) at page 16 and ≥ 4k tokens.

With CUDA, both processes also hold CUDA caches on the one GPU and the same sizes run the CUDA
arms (bench/kv_handoff_cuda.py): copy_d2d (one in-process contiguous copy), raw_d2d (the raw
copy on the handoff's path: into a buffer shared over CUDA IPC, out in the child, one pipe
round trip) and cuda_ipc (CudaIpcTransport). η = raw_d2d ÷ cuda_ipc time (eta_vs_one_copy:
copy_d2d ÷ cuda_ipc); launch = the child's fetch call at 128 tokens, page 16 (p50, 300
rounds). On a GPU the headline is cuda_ipc's lowest η at page 16 and ≥ 4k tokens (target
≥ 0.6, launch ≤ 100 µs); shm's η stays in the JSON and prints. Without CUDA the CUDA arms are
skipped, with the reason printed, and everything else runs as it does on the CPU box.
"""

from __future__ import annotations

from functools import partial

import torch

from bench.common import (
    BenchResult,
    Summary,
    device_info,
    interleave,
    machine_info,
    percentile,
    pin_to_core,
)
from bench.kv_handoff_cuda import CudaArm, current_cuda_device
from bench.kv_handoff_peers import Arm, Config, Exporter

ID = "B1"
NAME = "KV handoff efficiency η (shm, page 16, ≥ 4k tokens)"
TARGET = 0.5
NAME_CUDA = "KV handoff efficiency η (cuda_ipc, page 16, ≥ 4k tokens)"
TARGET_CUDA = 0.6
TARGET_LAUNCH_US = 100  # the cuda_ipc fetch call at 128 tokens, p50
NO_CUDA = "torch sees no CUDA device"


def cuda_arms() -> tuple[CudaArm, ...]:
    """The CUDA arms this machine runs: all of them with a CUDA device, none without."""
    return tuple(CudaArm) if torch.cuda.is_available() else ()


def run(quick: bool) -> BenchResult:
    tokens = (128, 4096) if quick else (128, 512, 2048, 4096, 8192)
    pages = (16,) if quick else (16, 64)
    pin_to_core(0)
    torch.set_num_threads(1)
    cuda = cuda_arms()
    if not cuda:
        print(f"B1 cuda_ipc arm skipped: {NO_CUDA}", flush=True)
    with Exporter(cuda=bool(cuda)) as exporter:
        shm_arms = (Arm.RAW, Arm.SHM, Arm.SHM_NO_CHECKSUM)
        sizes = [
            _size_row(config, _compare(exporter, config, shm_arms, config.repeats(quick)))
            for config in (Config(t, p) for p in pages for t in tokens)
        ]
        gloo_arms = (Arm.RAW, Arm.SHM, Arm.GLOO, Arm.TCP)
        gloo = [
            _gloo_row(config, _compare(exporter, config, gloo_arms, config.repeats(quick)))
            for config in (Config(t, 16) for t in tokens if t >= 2048)
        ]
        small = Config(128, 16)
        latency = _compare(exporter, small, (*shm_arms, Arm.TCP), 100 if quick else 300, warmup=10)
        cuda_ipc = _measure_cuda(exporter, cuda, tokens, pages, quick) if cuda else None
    big = [row for row in sizes if row["page_size"] == 16 and row["tokens"] >= 4096]
    details = {"sizes": sizes, "gloo": gloo, "latency_128_tokens": _latency_row(latency)}
    details["cuda_ipc"] = cuda_ipc if cuda_ipc is not None else {"skipped": NO_CUDA}
    if cuda_ipc is not None:
        shm_eta = round(min(row["eta"] for row in big), 3)
        print(f"B1 shm η (page 16, ≥ 4k tokens): {shm_eta} (target ≥ {TARGET:g})", flush=True)
        machine = machine_info() | device_info(current_cuda_device())
        return BenchResult(ID, NAME_CUDA, cuda_ipc["eta"], TARGET_CUDA, details, machine)
    return BenchResult(
        id=ID,
        name=NAME,
        value=round(min(row["eta"] for row in big), 3),
        target=TARGET,
        details=details,
        machine=machine_info(),
    )


def _compare(
    exporter: Exporter, config: Config, arms: tuple[Arm, ...], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    exporter.setup(config)
    return interleave(
        {arm: partial(exporter.handoff, arm, config) for arm in arms}, repeats, warmup
    )


def _size_row(config: Config, samples: dict[str, list[float]]) -> dict:
    summary = {arm: Summary.of(values) for arm, values in samples.items()}
    raw = summary[Arm.RAW].median
    return {
        "tokens": config.tokens,
        "page_size": config.page_size,
        "nbytes": config.nbytes,
        "eta": round(raw / summary[Arm.SHM].median, 3),
        "eta_no_checksum": round(raw / summary[Arm.SHM_NO_CHECKSUM].median, 3),
        "gbps": {arm: round(config.nbytes / s.median / 1e9, 2) for arm, s in summary.items()},
        "ms": {arm: s.scaled(1e3) for arm, s in summary.items()},
    }


def _gloo_row(config: Config, samples: dict[str, list[float]]) -> dict:
    median = {arm: Summary.of(values).median for arm, values in samples.items()}
    return {
        "tokens": config.tokens,
        "gbps": {arm: round(config.nbytes / s / 1e9, 2) for arm, s in median.items()},
        "shm_speedup_over_gloo": round(median[Arm.GLOO] / median[Arm.SHM], 2),
        "tcp_speedup_over_gloo": round(median[Arm.GLOO] / median[Arm.TCP], 2),
        "raw_shm_speedup_over_gloo": round(median[Arm.GLOO] / median[Arm.RAW], 2),
    }


def _latency_row(samples: dict[str, list[float]]) -> dict:
    return {
        arm: {"p50_ms": percentile(v, 50) * 1e3, "p99_ms": percentile(v, 99) * 1e3, "n": len(v)}
        for arm, v in samples.items()
    }


def _measure_cuda(
    exporter: Exporter,
    arms: tuple[CudaArm, ...],
    tokens: tuple[int, ...],
    pages: tuple[int, ...],
    quick: bool,
) -> dict:
    """The CUDA arms per size and at 128 tokens; prints the GPU targets, met or not."""
    sizes = [_cuda_size(exporter, Config(t, p), arms, quick) for p in pages for t in tokens]
    latency = _compare(exporter, Config(128, 16), arms, 100 if quick else 300, warmup=10)
    export_s, fetch_s = _kept(exporter.cuda.take_times(), len(latency[CudaArm.IPC]))
    big = [row for row in sizes if row["page_size"] == 16 and row["tokens"] >= 4096]
    eta = round(min(row["eta"] for row in big), 3)
    launch_us = percentile(fetch_s, 50) * 1e6
    eta_met, launch_met = eta >= TARGET_CUDA, launch_us <= TARGET_LAUNCH_US
    _print_target("η (cuda_ipc, page 16, ≥ 4k tokens)", eta, f"≥ {TARGET_CUDA:g}", eta_met)
    _print_target(
        "launch µs (fetch, 128 tokens, p50)", launch_us, f"≤ {TARGET_LAUNCH_US}", launch_met
    )
    return {
        "eta": eta,
        "target_eta": TARGET_CUDA,
        "launch_us": round(launch_us, 1),
        "target_launch_us": TARGET_LAUNCH_US,
        "sizes": sizes,
        "latency_128_tokens": _latency_row(latency)
        | {"export_call_us": _us(export_s), "fetch_call_us": _us(fetch_s)},
    }


def _cuda_size(exporter: Exporter, config: Config, arms: tuple[CudaArm, ...], quick: bool) -> dict:
    samples = _compare(exporter, config, arms, config.repeats(quick))
    row = _cuda_row(config, samples, exporter.cuda.take_times())
    where = f"{config.tokens} tokens, page {config.page_size}"
    gbps = ", ".join(f"{arm} {value:g}" for arm, value in row["gbps"].items())
    print(f"B1 cuda_ipc {where}: η {row['eta']}, GB/s {gbps}", flush=True)
    return row


def _print_target(what: str, value: float, bound: str, met: bool) -> None:
    print(f"B1 target {what}: {value:.3g} ({bound}) {'met' if met else 'NOT met'}", flush=True)


def _cuda_row(
    config: Config, samples: dict[str, list[float]], times: tuple[list[float], list[float]]
) -> dict:
    summary = {arm: Summary.of(values) for arm, values in samples.items()}
    ipc = summary[CudaArm.IPC].median
    export_s, fetch_s = _kept(times, summary[CudaArm.IPC].n)
    return {
        "tokens": config.tokens,
        "page_size": config.page_size,
        "nbytes": config.nbytes,
        "eta": round(summary[CudaArm.RAW].median / ipc, 3),
        "eta_vs_one_copy": round(summary[CudaArm.COPY].median / ipc, 3),
        "gbps": {arm: round(config.nbytes / s.median / 1e9, 2) for arm, s in summary.items()},
        "ms": {arm: s.scaled(1e3) for arm, s in summary.items()},
        "export_call_ms": Summary.of(export_s).scaled(1e3),
        "fetch_call_ms": Summary.of(fetch_s).scaled(1e3),
    }


def _kept(times: tuple[list[float], list[float]], n: int) -> tuple[list[float], list[float]]:
    """The last n (export, fetch) call times: the kept rounds, after the warm-up ones."""
    export_s, fetch_s = times
    if len(export_s) < n or len(fetch_s) != len(export_s):
        raise RuntimeError(f"B1: {len(export_s)} exports, {len(fetch_s)} fetches for {n} rounds")
    return export_s[-n:], fetch_s[-n:]


def _us(samples: list[float]) -> dict:
    return {"p50": percentile(samples, 50) * 1e6, "p99": percentile(samples, 99) * 1e6}
