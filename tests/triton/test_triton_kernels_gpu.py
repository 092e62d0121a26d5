"""The Triton kernels on CUDA at real shapes: bf16 and float32, the served models' head layouts.

bf16 runs are compared with the reference computed in float32 on the same bf16 values (the
kernels accumulate in float32 too; what differs is bf16 rounding of P and of the output).
Skipped without CUDA; run with `pytest -m gpu tests/triton`.
"""

from __future__ import annotations

import pytest
import torch

from engine.attention.triton.decode import paged_decode
from engine.attention.triton.kv_write import store_kv
from tests.triton.test_triton_kernels import (
    LAYER,
    KernelTables,
    Step,
    make_batch,
    make_step,
    run_reference,
    run_triton,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

PAGE_SIZE = 16
# ((num_heads, num_kv_heads), head_dim): SmolLM2-135M, Qwen2.5-0.5B, Qwen3-0.6B.
MODELS = [((9, 3), 64), ((14, 2), 64), ((16, 8), 128)]
MODEL_IDS = ["smollm2-g3-d64", "qwen2.5-g7-d64", "qwen3-g2-d128"]
TOLERANCE = {torch.bfloat16: 2e-2, torch.float32: 1e-4}


def assert_matches_float32_reference(step: Step, decode: bool) -> None:
    ref_out, ref_cache = run_reference(step.to(torch.float32))
    out, cache = run_triton(step, decode)
    assert torch.equal(cache.float(), ref_cache)
    tol = TOLERANCE[step.q.dtype]
    torch.testing.assert_close(out.float(), ref_out, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize(("heads", "head_dim"), MODELS, ids=MODEL_IDS)
def test_decode_batch_of_64_up_to_4k(
    device: torch.device, dtype: torch.dtype, heads: tuple[int, int], head_dim: int
) -> None:
    """64 sequences with contexts from 1 to 4096 tokens, one new token each."""
    torch.manual_seed(0)
    seq_lens = [1, 4096, *torch.randint(1, 4097, (62,)).tolist()]
    batch = make_batch(seq_lens, [1] * 64, PAGE_SIZE)
    step = make_step(batch, PAGE_SIZE, heads, device, dtype, head_dim)
    assert_matches_float32_reference(step, decode=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize(("heads", "head_dim"), MODELS, ids=MODEL_IDS)
def test_prefill_batch_with_prefixes(
    device: torch.device, dtype: torch.dtype, heads: tuple[int, int], head_dim: int
) -> None:
    """Whole prompts, prompts behind cached prefixes and decode rows in one ragged batch."""
    torch.manual_seed(0)
    seq_lens = [2048, 1500, 777, 300, 65, 1, 900, 64]
    query_lens = [2048, 500, 777, 1, 65, 1, 129, 17]
    batch = make_batch(seq_lens, query_lens, PAGE_SIZE)
    step = make_step(batch, PAGE_SIZE, heads, device, dtype, head_dim)
    assert_matches_float32_reference(step, decode=False)


def test_decode_step_replays_in_a_cuda_graph(device: torch.device) -> None:
    """store_kv + paged_decode captured once read the new batch's tables at replay."""
    torch.manual_seed(0)
    first = make_batch([100, 300, 37, 1], [1] * 4, PAGE_SIZE)
    second = make_batch([300, 1, 100, 37], [1] * 4, PAGE_SIZE)  # same page count and width
    step = make_step(first, PAGE_SIZE, (14, 2), device, torch.bfloat16, 64)
    tables, slots = KernelTables.of(first, device), first.slot_mapping.to(device)
    q, k, v, cache = step.q.clone(), step.k.clone(), step.v.clone(), step.kv_cache.clone()
    out = torch.empty_like(q)

    def decode_step() -> None:
        store_kv(k, v, cache, LAYER, slots)
        paged_decode(q, cache, LAYER, tables.block_tables, tables.seq_lens, out)

    decode_step()  # compiles outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        decode_step()
    replayed = make_step(second, PAGE_SIZE, (14, 2), device, torch.bfloat16, 64)
    new_tables = KernelTables.of(second, device)
    for static, new in [(q, replayed.q), (k, replayed.k), (v, replayed.v)]:
        static.copy_(new)
    cache.copy_(replayed.kv_cache)
    tables.block_tables.copy_(new_tables.block_tables)
    tables.seq_lens.copy_(new_tables.seq_lens)
    slots.copy_(second.slot_mapping)
    graph.replay()
    ref_out, ref_cache = run_reference(replayed.to(torch.float32))
    assert torch.equal(cache.float(), ref_cache)
    torch.testing.assert_close(out.float(), ref_out, atol=2e-2, rtol=2e-2)
