"""Triton kernel storing a step's new K/V into one layer of the paged KV cache.

    kv_cache: [num_pages, num_layers, 2 (K, V), page_size, num_kv_heads, head_dim]
    k, v: [num_tokens, num_kv_heads, head_dim]; slot_mapping: [num_tokens] int32/int64

Grid: (num_tokens,). Program t copies the [num_kv_heads, head_dim] rows of k[t] and v[t]
(padded to powers of two, masked) to slot s = slot_mapping[t], i.e. to
kv_cache[s // page_size, layer, 0/1, s % page_size]. A slot < 0 marks a padding token
(CUDA-graph batches) and writes nothing. The wrapper reads shapes and strides only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _store_kv_kernel(
    k_ptr,
    v_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_mapping_ptr,
    stride_k_tok,
    stride_k_head,
    stride_k_dim,
    stride_v_tok,
    stride_v_head,
    stride_v_dim,
    stride_c_page,
    stride_c_slot,
    stride_c_head,
    stride_c_dim,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:
        return
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_h[:, None] < NUM_KV_HEADS) & (offs_d[None, :] < HEAD_DIM)
    # The 64-bit slot keeps page * stride_c_page exact in caches over 2**31 elements.
    cache_offs = (
        (slot // PAGE_SIZE) * stride_c_page
        + (slot % PAGE_SIZE) * stride_c_slot
        + offs_h[:, None] * stride_c_head
        + offs_d[None, :] * stride_c_dim
    )
    k_offs = token * stride_k_tok + offs_h[:, None] * stride_k_head + offs_d[None, :] * stride_k_dim
    v_offs = token * stride_v_tok + offs_h[:, None] * stride_v_head + offs_d[None, :] * stride_v_dim
    tl.store(k_cache_ptr + cache_offs, tl.load(k_ptr + k_offs, mask=mask), mask=mask)
    tl.store(v_cache_ptr + cache_offs, tl.load(v_ptr + v_offs, mask=mask), mask=mask)


def store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    kv_cache: torch.Tensor,
    layer: int,
    slot_mapping: torch.Tensor,
) -> None:
    """Writes kv_cache[slot // P, layer, 0/1, slot % P] = k[t] / v[t]; skips slots < 0.

    # k, v: [num_tokens, num_kv_heads, head_dim], kv_cache's dtype and device
    # slot_mapping: [num_tokens] int32 or int64 on kv_cache's device
    Mutates only those slots of kv_cache in layer `layer`. Reads no tensor values on the
    host, so it is safe to capture in a CUDA graph.
    """
    num_tokens, num_kv_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    k_cache, v_cache = kv_cache[:, layer, 0], kv_cache[:, layer, 1]
    _store_kv_kernel[(num_tokens,)](
        k,
        v,
        k_cache,
        v_cache,
        slot_mapping,
        *k.stride(),
        *v.stride(),
        *k_cache.stride(),
        NUM_KV_HEADS=num_kv_heads,
        HEAD_DIM=head_dim,
        PAGE_SIZE=kv_cache.shape[3],
        BLOCK_H=triton.next_power_of_2(num_kv_heads),
        BLOCK_D=triton.next_power_of_2(head_dim),
    )
