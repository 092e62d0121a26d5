"""Triton paged attention for decode: one query token per sequence, GQA groups packed.

    q, out: [num_seqs, num_heads, head_dim]
    kv_cache: [num_pages, num_layers, 2 (K, V), page_size, num_kv_heads, head_dim]
    block_tables: [num_seqs, max_pages] int32; seq_lens: [num_seqs] int32

Grid: (num_seqs, num_kv_heads). Program (i, g) stacks the query heads of KV head g (rows
padded to BLOCK_G >= 16 so tl.dot applies) and walks the context in blocks of BLOCK_N key
tokens, gathering each token's page through block_tables[i] and loading every K/V block
once for the whole group. Softmax is online (flash-attention) in float32, base 2 with the
scale folded in. A sequence with seq_len 0 is a padding row: nothing is read, its output
rows are zeros.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from engine.attention.triton.tiles import online_softmax_block


# A table's row stride follows the longest sequence of the step: one compiled kernel for all.
@triton.jit(do_not_specialize=["stride_bt_seq"])
def _paged_decode_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    out_ptr,
    qk_scale,
    stride_q_seq,
    stride_q_head,
    stride_q_dim,
    stride_c_page,
    stride_c_slot,
    stride_c_head,
    stride_c_dim,
    stride_bt_seq,
    stride_o_seq,
    stride_o_head,
    stride_o_dim,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq_len = tl.load(seq_lens_ptr + seq)
    offs_g = tl.arange(0, BLOCK_G)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    heads = kv_head * GROUP + offs_g
    q_mask = (offs_g[:, None] < GROUP) & (offs_d[None, :] < HEAD_DIM)
    q_offs = seq * stride_q_seq + heads[:, None] * stride_q_head + offs_d[None, :] * stride_q_dim
    q = tl.load(q_ptr + q_offs, mask=q_mask, other=0.0)
    # q: [BLOCK_G, BLOCK_D]
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    block_table = block_tables_ptr + seq.to(tl.int64) * stride_bt_seq
    head_offs = kv_head * stride_c_head + offs_d * stride_c_dim
    every_key = offs_g[:, None] >= 0  # [BLOCK_G, 1] all true: one token sees its whole context
    for start_n in range(0, seq_len, BLOCK_N):
        m_i, l_i, acc = online_softmax_block(
            q, k_cache_ptr, v_cache_ptr, block_table, start_n + offs_n, seq_len, every_key,
            head_offs, offs_d, m_i, l_i, acc, qk_scale, stride_c_page, stride_c_slot, HEAD_DIM,
            PAGE_SIZE, DOT_PRECISION,
        )  # fmt: skip
    # A padding row (seq_len 0) has l_i == 0 and acc == 0: dividing by 1 writes zeros.
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    o_offs = seq * stride_o_seq + heads[:, None] * stride_o_head + offs_d[None, :] * stride_o_dim
    tl.store(out_ptr + o_offs, out.to(out_ptr.dtype.element_ty), mask=q_mask)


def paged_decode(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    layer: int,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    out: torch.Tensor,
) -> None:
    """Attends each sequence's single query token to its context 0..seq_len-1 in layer `layer`.

    # q, out: [num_seqs, num_heads, head_dim]
    # block_tables: [num_seqs, max_pages] int32, padded with any valid page id
    # seq_lens: [num_seqs] int32, context length including this token (K/V already stored)
    Writes out only; reads no tensor values on the host (CUDA-graph safe).
    """
    num_seqs, num_heads, head_dim = q.shape
    num_kv_heads = kv_cache.shape[4]
    group = num_heads // num_kv_heads
    if num_seqs == 0:
        return
    k_cache, v_cache = kv_cache[:, layer, 0], kv_cache[:, layer, 1]
    # float32 runs only in tests: smaller tiles keep them in shared memory, IEEE dots exact.
    is_fp32 = q.dtype == torch.float32
    _paged_decode_kernel[(num_seqs, num_kv_heads)](
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        out,
        math.log2(math.e) / math.sqrt(head_dim),
        *q.stride(),
        *k_cache.stride(),
        block_tables.stride(0),
        *out.stride(),
        GROUP=group,
        HEAD_DIM=head_dim,
        PAGE_SIZE=kv_cache.shape[3],
        BLOCK_G=max(16, triton.next_power_of_2(group)),
        BLOCK_N=16 if is_fp32 else 64,
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)),  # tl.dot's K is at least 16
        DOT_PRECISION="ieee" if is_fp32 else "tf32",
    )
