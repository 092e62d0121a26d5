"""What both attention kernels do per key block: gather K/V through the block table, then one
step of online softmax (flash attention, float32, base 2 with the scale folded in).

    block_table: pointer to one sequence's row of page ids
    q: [ROWS, BLOCK_D] (query rows: a GQA group in decode, a query block in prefill)
    k, v: [BLOCK_N, BLOCK_D] the keys at `pos`, gathered from their pages
    m_i, l_i: [ROWS] running max and sum; acc: [ROWS, BLOCK_D] running output
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def online_softmax_block(
    q,
    k_cache_ptr,
    v_cache_ptr,
    block_table,
    pos,
    key_end,
    visible,
    head_offs,
    offs_d,
    m_i,
    l_i,
    acc,
    qk_scale,
    stride_c_page,
    stride_c_slot,
    HEAD_DIM: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Folds keys `pos` (< key_end; `visible`[row, key] says which each row sees) into the
    running (m_i, l_i, acc); returns them. Each row must see some key of the first block, so
    m_i turns finite there and never meets -inf - -inf."""
    in_context = pos < key_end
    page = tl.load(block_table + pos // PAGE_SIZE, mask=in_context, other=0).to(tl.int64)
    token_offs = page * stride_c_page + (pos % PAGE_SIZE) * stride_c_slot
    kv_mask = in_context[:, None] & (offs_d[None, :] < HEAD_DIM)
    kv_offs = token_offs[:, None] + head_offs[None, :]
    k = tl.load(k_cache_ptr + kv_offs, mask=kv_mask, other=0.0)
    v = tl.load(v_cache_ptr + kv_offs, mask=kv_mask, other=0.0)
    scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    scores = tl.where(visible & in_context[None, :], scores, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(scores, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(scores - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return m_new, l_i, acc
