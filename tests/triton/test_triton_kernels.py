"""The Triton KV-write, decode and prefill kernels against plain indexing and the torch backend.

Each scenario builds one model step over a noise-filled paged cache whose pages are handed
out in a shuffled order (block tables are never contiguous), runs the reference backend on one
copy of the cache and store_kv + the kernel on another, and compares outputs and caches.
On CPU the kernels run under Triton's interpreter (conftest.py), so shapes stay tiny.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import pytest
import torch

from engine.attention.torch_backend import TorchAttentionBackend
from engine.attention.triton.decode import paged_decode
from engine.attention.triton.kv_write import store_kv
from engine.attention.triton.prefill import paged_prefill
from engine.batch import ForwardBatch

NUM_LAYERS = 2
LAYER = 1  # every scenario writes layer 1, so layer 0 must come back untouched
HEAD_DIM = 16
# (page_size, (num_heads, num_kv_heads), head_dim): GQA groups 1, 2, 3, 7; a head_dim that
# is not a power of two (masked lanes); page sizes that are not.
CASES = [(1, (2, 2), 16), (7, (4, 2), 24), (16, (6, 2), 16), (5, (14, 2), 16)]
CASE_IDS = ["p1-g1", "p7-g2-d24", "p16-g3", "p5-g7"]


@pytest.fixture(autouse=True)
def seeded() -> None:
    torch.manual_seed(0)


@dataclass(slots=True)
class Step:
    """One model step: its batch, its new q/k/v, and the cache as it was before the step."""

    batch: ForwardBatch
    q: torch.Tensor  # [num_tokens, num_heads, head_dim]
    k: torch.Tensor  # [num_tokens, num_kv_heads, head_dim]
    v: torch.Tensor  # [num_tokens, num_kv_heads, head_dim]
    kv_cache: torch.Tensor  # [num_pages, NUM_LAYERS, 2, page_size, num_kv_heads, head_dim]

    def to(self, dtype: torch.dtype) -> Step:
        cast = [t.to(dtype) for t in (self.q, self.k, self.v, self.kv_cache)]
        return Step(self.batch, *cast)


def make_batch(seq_lens: list[int], query_lens: list[int], page_size: int) -> ForwardBatch:
    """Sequence i holds the last query_lens[i] of seq_lens[i] tokens, on shuffled pages.

    Two spare pages are left over, so noise the kernels must never read sits in the cache.
    """
    pages_per_seq = [math.ceil(n / page_size) for n in seq_lens]
    free = torch.randperm(sum(pages_per_seq) + 2).tolist()
    block_tables = []
    for num_pages in pages_per_seq:
        block_tables.append(free[:num_pages])
        free = free[num_pages:]
    positions, slots, starts = [], [], [0]
    for seq_len, query_len, table in zip(seq_lens, query_lens, block_tables, strict=True):
        for pos in range(seq_len - query_len, seq_len):
            positions.append(pos)
            slots.append(table[pos // page_size] * page_size + pos % page_size)
        starts.append(starts[-1] + query_len)
    return ForwardBatch(
        token_ids=torch.zeros(len(slots), dtype=torch.int64),
        positions=torch.tensor(positions, dtype=torch.int64),
        slot_mapping=torch.tensor(slots, dtype=torch.int64),
        query_start_loc=starts,
        seq_lens=list(seq_lens),
        block_tables=block_tables,
    )


def make_step(
    batch: ForwardBatch,
    page_size: int,
    heads: tuple[int, int],
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    head_dim: int = HEAD_DIM,
) -> Step:
    """Random q/k/v for batch and a noise cache; heads = (num_heads, num_kv_heads)."""
    num_heads, num_kv_heads = heads
    num_pages = sum(len(t) for t in batch.block_tables) + 2
    cache_shape = (num_pages, NUM_LAYERS, 2, page_size, num_kv_heads, head_dim)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device).to(dtype)

    return Step(
        batch,
        q=randn(batch.num_tokens, num_heads, head_dim),
        k=randn(batch.num_tokens, num_kv_heads, head_dim),
        v=randn(batch.num_tokens, num_kv_heads, head_dim),
        kv_cache=randn(*cache_shape),
    )


def run_reference(step: Step) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, cache after the step) from TorchAttentionBackend."""
    cache = step.kv_cache.clone()
    backend = TorchAttentionBackend()
    metadata = backend.prepare(step.batch, cache)
    return backend.forward(step.q, step.k, step.v, cache, LAYER, metadata), cache


@dataclass(slots=True)
class KernelTables:
    """A batch's metadata as the kernels take it: int32 tensors on the device."""

    block_tables: torch.Tensor  # [num_seqs, max_pages], padded with page 0
    seq_lens: torch.Tensor  # [num_seqs]
    query_start_loc: torch.Tensor  # [num_seqs + 1]

    @staticmethod
    def of(batch: ForwardBatch, device: torch.device) -> KernelTables:
        max_pages = max(len(t) for t in batch.block_tables)
        padded = [t + [0] * (max_pages - len(t)) for t in batch.block_tables]

        def int32(values: list) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int32, device=device)

        return KernelTables(int32(padded), int32(batch.seq_lens), int32(batch.query_start_loc))


def run_triton(step: Step, decode: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, cache after the step) from store_kv then paged_decode or paged_prefill."""
    device = step.q.device
    cache = step.kv_cache.clone()
    store_kv(step.k, step.v, cache, LAYER, step.batch.slot_mapping.to(device))
    t = KernelTables.of(step.batch, device)
    out = torch.empty_like(step.q)
    if decode:
        paged_decode(step.q, cache, LAYER, t.block_tables, t.seq_lens, out)
    else:
        starts = step.batch.query_start_loc
        max_query_len = max(b - a for a, b in itertools.pairwise(starts))
        paged_prefill(
            step.q, cache, LAYER, t.block_tables, t.seq_lens, t.query_start_loc, max_query_len, out
        )
    return out, cache


def assert_step_matches(step: Step, decode: bool, atol: float = 1e-5) -> None:
    ref_out, ref_cache = run_reference(step)
    out, cache = run_triton(step, decode)
    assert torch.equal(cache, ref_cache)
    torch.testing.assert_close(out, ref_out, atol=atol, rtol=atol)


@pytest.mark.parametrize("slot_dtype", [torch.int32, torch.int64])
def test_store_kv_writes_only_mapped_slots(device: torch.device, slot_dtype: torch.dtype) -> None:
    """Each token lands at [slot // 7, layer, :, slot % 7]; a -1 slot (padding) writes nothing."""
    cache = torch.randn(5, NUM_LAYERS, 2, 7, 2, HEAD_DIM, device=device)
    k, v = torch.randn(2, 4, 2, HEAD_DIM, device=device).unbind(0)
    slots = torch.tensor([33, 0, -1, 13], dtype=slot_dtype, device=device)
    expected = cache.clone()
    for t, slot in enumerate([33, 0, None, 13]):
        if slot is not None:
            expected[slot // 7, LAYER, 0, slot % 7] = k[t]
            expected[slot // 7, LAYER, 1, slot % 7] = v[t]
    store_kv(k, v, cache, LAYER, slots)
    assert torch.equal(cache, expected)


def test_store_kv_reads_strided_k_and_v(device: torch.device) -> None:
    """k and v sliced out of one fused kv projection (non-contiguous views) are stored intact."""
    cache = torch.zeros(2, NUM_LAYERS, 2, 16, 3, HEAD_DIM, device=device)
    kv = torch.randn(5, 2, 3, HEAD_DIM, device=device)
    k, v = kv[:, 0], kv[:, 1]
    store_kv(k, v, cache, LAYER, torch.arange(5, device=device) + 16)
    assert torch.equal(cache[1, LAYER, 0, :5], k)
    assert torch.equal(cache[1, LAYER, 1, :5], v)
    assert not cache[0].any() and not cache[1, 0].any()


@pytest.mark.parametrize(("page_size", "heads", "head_dim"), CASES, ids=CASE_IDS)
def test_paged_decode_matches_reference(
    device: torch.device, page_size: int, heads: tuple[int, int], head_dim: int
) -> None:
    """One token per sequence over contexts from 1 token to several key blocks."""
    batch = make_batch([1, 17, 40, 9], [1, 1, 1, 1], page_size)
    step = make_step(batch, page_size, heads, device, head_dim=head_dim)
    assert_step_matches(step, decode=True)


def test_paged_decode_fp16(device: torch.device) -> None:
    """float16 cache: the kernel's float32 softmax stays close to the reference."""
    batch = make_batch([5, 70], [1, 1], 16)
    step = make_step(batch, 16, (4, 2), device, torch.float16)
    assert_step_matches(step, decode=True, atol=2e-3)


def test_paged_decode_padding_rows(device: torch.device) -> None:
    """CUDA-graph padding rows (slot -1, seq_len 0) leave the cache alone and output zeros."""
    step = make_step(make_batch([12, 30], [1, 1], 7), 7, (4, 2), device)
    ref_out, ref_cache = run_reference(step)
    cache, t = step.kv_cache.clone(), KernelTables.of(step.batch, device)
    pad = torch.tensor([-1, -1], device=device)
    slots = torch.cat([step.batch.slot_mapping.to(device), pad])
    q = torch.cat([step.q, torch.randn_like(step.q)])
    store_kv(torch.cat([step.k] * 2), torch.cat([step.v] * 2), cache, LAYER, slots)
    block_tables = torch.cat([t.block_tables] * 2)
    seq_lens = torch.cat([t.seq_lens, torch.zeros_like(t.seq_lens)])
    out = torch.full_like(q, float("nan"))
    paged_decode(q, cache, LAYER, block_tables, seq_lens, out)
    assert torch.equal(cache, ref_cache)
    torch.testing.assert_close(out[:2], ref_out, atol=1e-5, rtol=1e-5)
    assert torch.equal(out[2:], torch.zeros_like(out[2:]))


@pytest.mark.parametrize(("page_size", "heads", "head_dim"), CASES, ids=CASE_IDS)
def test_paged_prefill_matches_reference(
    device: torch.device, page_size: int, heads: tuple[int, int], head_dim: int
) -> None:
    """Ragged batch: a cached prefix, a whole prompt, a decode row and a short extension."""
    batch = make_batch([40, 23, 9, 18], [35, 23, 1, 4], page_size)
    step = make_step(batch, page_size, heads, device, head_dim=head_dim)
    assert_step_matches(step, decode=False)


def test_paged_prefill_fp16(device: torch.device) -> None:
    """float16 cache with a prefix longer than one 64-token key block."""
    batch = make_batch([90, 20], [30, 20], 16)
    step = make_step(batch, 16, (4, 2), device, torch.float16)
    assert_step_matches(step, decode=False, atol=2e-3)


def test_paged_prefill_leaves_padding_rows(device: torch.device) -> None:
    """Rows past the last sequence and an overestimated max_query_len change nothing."""
    step = make_step(make_batch([20, 6], [20, 2], 7), 7, (4, 2), device)
    ref_out, ref_cache = run_reference(step)
    t = KernelTables.of(step.batch, device)
    q = torch.cat([step.q, torch.randn_like(step.q[:3])])
    out = torch.full_like(q, float("nan"))
    paged_prefill(q, ref_cache, LAYER, t.block_tables, t.seq_lens, t.query_start_loc, 64, out)
    torch.testing.assert_close(out[:22], ref_out, atol=1e-5, rtol=1e-5)
    assert out[22:].isnan().all()
