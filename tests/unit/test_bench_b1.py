"""B1's CUDA arms without a GPU: which arms a machine runs, and how a size's row turns the
arms' handoff times into η. The arms themselves need CUDA (`make bench B=B1` on a lent GPU)."""

from __future__ import annotations

import pytest
import torch

from bench import b1_kv_handoff
from bench.kv_handoff_cuda import CudaArm, contiguous_rows
from bench.kv_handoff_peers import Config


def test_a_machine_without_cuda_runs_no_cuda_arm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert b1_kv_handoff.cuda_arms() == ()


def test_a_machine_with_cuda_runs_the_copy_the_raw_path_and_the_transport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert b1_kv_handoff.cuda_arms() == (CudaArm.COPY, CudaArm.RAW, CudaArm.IPC)
    assert CudaArm.IPC == "cuda_ipc"


def test_eta_is_the_raw_path_time_over_the_transport_time_and_warmup_calls_are_dropped() -> None:
    """128 tokens at page 16: 8 pages of 360 KiB. Medians: copy 1 ms, raw 2 ms, ipc 4 ms;
    the first of three export/fetch call times is the warm-up round's."""
    config = Config(128, 16)
    samples = {
        CudaArm.COPY: [1e-3, 1e-3],
        CudaArm.RAW: [2e-3, 2e-3],
        CudaArm.IPC: [3e-3, 5e-3],
    }
    times = ([9.0, 1e-4, 3e-4], [9.0, 2e-4, 4e-4])
    row = b1_kv_handoff._cuda_row(config, samples, times)
    assert (row["tokens"], row["page_size"], row["nbytes"]) == (128, 16, 8 * 360 * 1024)
    assert row["eta"] == 0.5 and row["eta_vs_one_copy"] == 0.25
    assert row["gbps"][CudaArm.IPC] == round(8 * 360 * 1024 / 4e-3 / 1e9, 2)
    assert row["export_call_ms"]["max"] == pytest.approx(0.3)
    assert row["fetch_call_ms"]["median"] == pytest.approx(0.3)


def test_missing_fetch_times_fail_the_row_rather_than_misalign() -> None:
    samples = {arm: [1e-3, 1e-3] for arm in CudaArm}
    with pytest.raises(RuntimeError, match="2 exports, 1 fetches for 2 rounds"):
        b1_kv_handoff._cuda_row(Config(128, 16), samples, ([1.0, 1.0], [1.0]))


def test_contiguous_rows_are_the_first_pages_bytes_as_one_view() -> None:
    config = Config(32, 16)  # 2 pages, a cache of 4
    cache = config.make_cache()
    rows = contiguous_rows(cache, config)
    assert rows.shape == (2, config.layout.page_nbytes) and rows.dtype == torch.uint8
    assert rows.data_ptr() == cache.data_ptr()
    assert torch.equal(rows[1], cache[1].view(torch.uint8).reshape(-1))
