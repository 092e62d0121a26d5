"""Triton paged causal attention for a ragged batch of queries over cached contexts.

    q, out: [num_tokens, num_heads, head_dim]
    kv_cache: [num_pages, num_layers, 2 (K, V), page_size, num_kv_heads, head_dim]
    block_tables: [num_seqs, max_pages] int32; seq_lens: [num_seqs] int32
    query_start_loc: [num_seqs + 1] int32

Sequence i owns q rows query_start_loc[i]:query_start_loc[i+1]: the last query_len tokens
of its context of seq_lens[i] tokens, so query t sits at position seq_len - query_len + t
and sees keys 0..that position, all read from the paged cache (a cached prefix included).

Grid: (cdiv(max_query_len, BLOCK_M), num_seqs, num_heads). Program (m, i, h) takes query
rows m*BLOCK_M.. of sequence i (it returns at once when the sequence has fewer) for query
head h, and walks keys in blocks of BLOCK_N up to its last query's position, gathering
each key's page through block_tables[i]; QK^T and PV run on tl.dot, softmax is online in
float32 (base 2, scale folded in).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from engine.attention.triton.tiles import online_softmax_block


# A table's row stride follows the longest sequence of the step: one compiled kernel for all.
@triton.jit(do_not_specialize=["stride_bt_seq"])
def _paged_prefill_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    query_start_loc_ptr,
    out_ptr,
    qk_scale,
    stride_q_tok,
    stride_q_head,
    stride_q_dim,
    stride_c_page,
    stride_c_slot,
    stride_c_head,
    stride_c_dim,
    stride_bt_seq,
    stride_o_tok,
    stride_o_head,
    stride_o_dim,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    block_m = tl.program_id(0)
    seq = tl.program_id(1)
    head = tl.program_id(2)
    query_start = tl.load(query_start_loc_ptr + seq)
    query_len = tl.load(query_start_loc_ptr + seq + 1) - query_start
    if block_m * BLOCK_M >= query_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    offs_m = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    query_pos = seq_len - query_len + offs_m
    rows = (query_start + offs_m).to(tl.int64)
    q_mask = (offs_m[:, None] < query_len) & (offs_d[None, :] < HEAD_DIM)
    q_offs = rows[:, None] * stride_q_tok + head * stride_q_head + offs_d[None, :] * stride_q_dim
    q = tl.load(q_ptr + q_offs, mask=q_mask, other=0.0)
    # q: [BLOCK_M, BLOCK_D]
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    block_table = block_tables_ptr + seq.to(tl.int64) * stride_bt_seq
    head_offs = (head // GROUP) * stride_c_head + offs_d * stride_c_dim
    # Causal bound: no query of this block sees past its last row's position.
    key_end = tl.minimum(seq_len, seq_len - query_len + (block_m + 1) * BLOCK_M)
    for start_n in range(0, key_end, BLOCK_N):
        pos = start_n + offs_n
        # Causal; rows past query_len are computed but never stored.
        causal = pos[None, :] <= query_pos[:, None]
        m_i, l_i, acc = online_softmax_block(
            q, k_cache_ptr, v_cache_ptr, block_table, pos, key_end, causal, head_offs,
            offs_d, m_i, l_i, acc, qk_scale, stride_c_page, stride_c_slot, HEAD_DIM,
            PAGE_SIZE, DOT_PRECISION,
        )  # fmt: skip
    out = acc / l_i[:, None]
    o_offs = rows[:, None] * stride_o_tok + head * stride_o_head + offs_d[None, :] * stride_o_dim
    tl.store(out_ptr + o_offs, out.to(out_ptr.dtype.element_ty), mask=q_mask)


def paged_prefill(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    layer: int,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    max_query_len: int,
    out: torch.Tensor,
) -> None:
    """Causal attention of each sequence's query rows to its paged context in layer `layer`.

    # q, out: [num_tokens, num_heads, head_dim]
    # block_tables: [num_seqs, max_pages] int32, padded with any valid page id
    # seq_lens: [num_seqs] int32, context length including this step's tokens (K/V stored)
    # query_start_loc: [num_seqs + 1] int32; max_query_len >= every sequence's query_len
    Writes the rows of out owned by a sequence only; reads no tensor values on the host
    (CUDA-graph safe). Query lengths of 1 (decode rows of a mixed batch) are fine.
    """
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_seqs, num_kv_heads = seq_lens.shape[0], kv_cache.shape[4]
    # float32 runs only in tests: smaller tiles keep them in shared memory, IEEE dots exact.
    is_fp32 = q.dtype == torch.float32
    block_m = 16 if is_fp32 else 64
    if num_seqs == 0 or max_query_len == 0:
        return
    k_cache, v_cache = kv_cache[:, layer, 0], kv_cache[:, layer, 1]
    grid = (triton.cdiv(max_query_len, block_m), num_seqs, num_heads)
    _paged_prefill_kernel[grid](
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        query_start_loc,
        out,
        math.log2(math.e) / math.sqrt(head_dim),
        *q.stride(),
        *k_cache.stride(),
        block_tables.stride(0),
        *out.stride(),
        GROUP=num_heads // num_kv_heads,
        HEAD_DIM=head_dim,
        PAGE_SIZE=kv_cache.shape[3],
        BLOCK_M=block_m,
        BLOCK_N=block_m,
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)),  # tl.dot's K is at least 16
        DOT_PRECISION="ieee" if is_fp32 else "tf32",
    )
