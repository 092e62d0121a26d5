"""B0's device pick without a GPU: the CPU box keeps its plan, dtypes and arms exactly, and a
CUDA machine gets bf16 first, CUDA graphs and synchronized timing. No CUDA is touched: where a
test needs "a GPU", torch.cuda's answers are replaced."""

from __future__ import annotations

import pytest
import torch

from bench import b0_engine
from bench.common import bench_device, device_info
from bench.engine_arms import Stopwatch, engine_config
from bench.engine_workloads import FULL, QUICK, plan_for

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def synchronize_calls(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    calls: list[object] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    return calls


def test_device_is_the_gpu_only_when_torch_sees_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench_device() == CPU and device_info(CPU) == {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert bench_device() == CUDA


def test_cpu_plans_are_the_cpu_plans_unchanged() -> None:
    """The CPU run times what it always did: float32 (+ bf16 in full), one small warm-up."""
    assert plan_for(quick=True, device_type="cpu") is QUICK
    assert plan_for(quick=False, device_type="cpu") is FULL
    assert FULL.dtypes == ("float32", "bfloat16") and not FULL.warm_workloads


def test_gpu_plan_runs_bf16_first_on_the_same_workloads_warming_each() -> None:
    full, quick = plan_for(False, "cuda"), plan_for(True, "cuda")
    assert full.dtypes == ("bfloat16", "float32") and quick.dtypes == ("bfloat16",)
    assert full.workloads == FULL.workloads and full.hf_batch_size == 32
    assert full.warm_workloads and quick.warm_workloads


def test_engine_captures_decode_graphs_on_cuda_only() -> None:
    """A worker's max_num_seqs of 64: graphs at 1, 2, 4, 8 and every 16 up to 64."""
    assert engine_config(CPU).graph_batch_sizes() == ()
    assert engine_config(CUDA).graph_batch_sizes() == (1, 2, 4, 8, 16, 32, 48, 64)
    assert engine_config(CPU).resolved_device() == "cpu"


def test_bf16_is_skipped_for_a_cpu_without_it_but_never_on_a_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(b0_engine, "_has_native_bf16", lambda: False)
    assert b0_engine._runnable_dtypes(("float32", "bfloat16"), CPU)[0] == ["float32"]
    assert b0_engine._runnable_dtypes(("bfloat16", "float32"), CUDA) == (
        ["bfloat16", "float32"],
        {},
    )


def test_gpu_headline_is_bf16_even_where_float32_was_faster() -> None:
    def rows(tok_s: float) -> dict:
        row = {"pdserve_tok_s": {"median": tok_s}, "hf_tok_s": {"median": tok_s}}
        return {"a": row, "b": row}

    by_dtype = {"bfloat16": rows(1.0), "float32": rows(2.0)}
    assert b0_engine._headline_dtype(by_dtype, CUDA) == "bfloat16"
    assert b0_engine._headline_dtype(by_dtype, CPU) == "float32"


def test_a_timed_run_on_cuda_starts_and_ends_with_a_synchronize(
    synchronize_calls: list[object],
) -> None:
    Stopwatch(CUDA).stop(num_output_tokens=1)
    assert synchronize_calls == [CUDA, CUDA]


def test_a_timed_run_on_the_cpu_never_synchronizes(synchronize_calls: list[object]) -> None:
    Stopwatch(CPU).stop(num_output_tokens=1)
    Stopwatch().stop(num_output_tokens=1)
    assert synchronize_calls == []
