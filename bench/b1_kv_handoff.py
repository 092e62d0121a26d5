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
"""

from __future__ import annotations

from functools import partial

import torch

from bench.common import BenchResult, Summary, interleave, machine_info, percentile, pin_to_core
from bench.kv_handoff_peers import Arm, Config, Exporter

ID = "B1"
NAME = "KV handoff efficiency η (shm, page 16, ≥ 4k tokens)"
TARGET = 0.5


def run(quick: bool) -> BenchResult:
    tokens = (128, 4096) if quick else (128, 512, 2048, 4096, 8192)
    pages = (16,) if quick else (16, 64)
    pin_to_core(0)
    torch.set_num_threads(1)
    with Exporter() as exporter:
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
    big = [row for row in sizes if row["page_size"] == 16 and row["tokens"] >= 4096]
    details = {"sizes": sizes, "gloo": gloo, "latency_128_tokens": _latency_row(latency)}
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
