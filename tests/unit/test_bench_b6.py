"""B6's plumbing without a GPU: how it refuses a CPU machine, and its arms and accounting on
the tiny model with CUDA events replaced by a host clock. The real run needs CUDA and the
real-shape presets (`make bench B=B6` on a lent GPU)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch

import bench.__main__ as bench_main
from bench import b6_gpu_engine
from bench.b6_gpu_engine import GpuPlan, TargetCheck, measure_decode, measure_offline
from bench.common import BenchUnavailable
from bench.engine_workloads import WorkloadSpec
from bench.gpu_arms import GpuEngine, HFGenerate
from engine.runner import ModelRunner
from engine.weights import load_state_dict

TINY_PLAN = GpuPlan(
    is_quick=True,
    batch_sizes=(1, 3),
    context_len=8,
    num_timed_steps=4,
    hf_extra_steps=2,
    offline=WorkloadSpec("t", 5, (3, 20), (1, 6)),
    hf_offline_seqs=2,
    repeats=1,
    bandwidth_bytes=2**20,
)
BANDWIDTH_GB_S = 100.0


class HostClockEvent:
    """torch.cuda.Event's timing interface over perf_counter, for a CPU run."""

    def __init__(self, enable_timing: bool = False) -> None:
        self.at_s = 0.0

    def record(self) -> None:
        self.at_s = time.perf_counter()

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, end: HostClockEvent) -> float:
        return (end.at_s - self.at_s) * 1e3


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def host_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "Event", HostClockEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)


@pytest.fixture
def tiny_arms(tiny_dir: Path, host_clock: None) -> tuple[GpuEngine, HFGenerate]:
    num_pages = 64
    runner = ModelRunner(tiny_dir, "bfloat16", num_pages, page_size=16)
    return GpuEngine(runner, num_pages), HFGenerate(tiny_dir, torch.device("cpu"))


def test_b6_by_name_without_cuda_fails_saying_why(no_cuda: None) -> None:
    with pytest.raises(SystemExit, match="B6 needs CUDA"):
        bench_main.main(["--only", "B6"])


def test_b6_is_skipped_with_its_reason_when_every_benchmark_runs(
    no_cuda: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make bench` on a CPU box runs the CPU set: B6 prints why it did not run, not a crash."""
    monkeypatch.setattr(bench_main, "discover", lambda: {"B6": "bench.b6_gpu_engine"})
    assert bench_main.main([]) == 0
    assert "B6 skipped: needs CUDA" in capsys.readouterr().out


def test_run_without_cuda_raises_bench_unavailable(no_cuda: None) -> None:
    with pytest.raises(BenchUnavailable):
        b6_gpu_engine.run(quick=True)


@pytest.mark.timeout(120)
def test_decode_row_accounts_for_weights_once_and_the_batchs_kv(
    tiny_arms: tuple[GpuEngine, HFGenerate], tiny_dir: Path
) -> None:
    """3 sequences of 8 prompt tokens hold 9 tokens after prefill; one discarded and one kept
    window of 4 steps read 9 + 4 + 0..3 tokens each: a mean context of 14.5. The tied LM head
    is the embedding, read once."""
    engine, hf = tiny_arms
    row = measure_decode(engine, hf, 3, TINY_PLAN, BANDWIDTH_GB_S)
    tensors = load_state_dict(tiny_dir, torch.bfloat16).values()
    weight_bytes = sum(t.numel() * 2 for t in tensors)
    assert engine.weight_bytes() == weight_bytes
    assert row["batch_size"] == 3 and row["mean_context_len"] == 14.5
    kv_bytes = 3 * 14.5 * engine.config.kv_bytes_per_token("bfloat16")
    assert row["bytes_per_step"] == weight_bytes + kv_bytes
    assert row["roofline_ms"] == pytest.approx((weight_bytes + kv_bytes) / 1e8)
    step_ms = row["pdserve_step_ms"]["median"]
    assert row["roofline_fraction"] == pytest.approx(row["roofline_ms"] / step_ms)
    assert step_ms > 0 and math.isfinite(row["hf_step_ms"]["median"])


@pytest.mark.timeout(120)
def test_offline_arms_count_exactly_the_requested_tokens(
    tiny_arms: tuple[GpuEngine, HFGenerate],
) -> None:
    """Both arms raise on a token count other than asked; HF runs the first 2 requests."""
    engine, hf = tiny_arms
    workload = TINY_PLAN.offline.draw(engine.config.vocab_size)
    row = measure_offline(engine, hf, workload, TINY_PLAN, engine.config.vocab_size)
    assert (row["num_requests"], row["hf_num_requests"]) == (5, 2)
    assert row["num_output_tokens"] == sum(workload.output_lens)
    assert row["pdserve_tok_s"]["median"] > 0 and row["hf_tok_s"]["median"] > 0


def test_targets_bound_from_the_right_side() -> None:
    """A step time must stay under its bound; a fraction or a throughput must reach it."""
    assert not TargetCheck("batch-1 step ms", 1.6, 1.5, at_most=True).met
    assert TargetCheck("batch-1 step ms", 1.4, 1.5, at_most=True).met
    assert TargetCheck("roofline fraction", 0.5, 0.5, at_most=False).met
    assert not TargetCheck("offline tok/s", 24_999.0, 25_000.0, at_most=False).met


def test_plan_holds_the_larger_of_the_decode_batch_and_the_offline_run() -> None:
    """FULL: 256 sequences of 512 + 2 + 4 windows x 64 tokens = 49 pages of 16 each."""
    offline = b6_gpu_engine.FULL.offline.draw(vocab_size=1000)
    assert b6_gpu_engine.FULL.num_pages(offline) == max(256 * 49, offline.num_pages(16))
