"""Reference attention in plain PyTorch: the CPU backend and the yardstick for GPU kernels.

Sequences are attended in groups, one scaled_dot_product_attention call per group: all
single-token (decode) sequences together, padded to the longest block table, and every
multi-token (prefill) sequence alone, so a long prompt never pads a batch of decodes.
Softmax runs in float32 whatever the cache dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.attention.base import AttentionBackend
from engine.batch import ForwardBatch


@dataclass(slots=True)
class AttentionGroup:
    """Sequences attended in one call; padding keys are masked out."""

    token_index: torch.Tensor  # [num_seqs, query_len] rows of the flat batch
    block_tables: torch.Tensor  # [num_seqs, max_pages] page ids, padded with page 0
    mask: torch.Tensor  # [num_seqs, 1, query_len, max_pages * page_size] bool, True = attend


@dataclass(slots=True)
class TorchAttentionMetadata:
    slot_pages: torch.Tensor  # [num_tokens] page of each new token's slot
    slot_offsets: torch.Tensor  # [num_tokens] offset of that slot in its page
    groups: list[AttentionGroup]


class TorchAttentionBackend(AttentionBackend[TorchAttentionMetadata]):
    def prepare(self, batch: ForwardBatch, kv_cache: torch.Tensor) -> TorchAttentionMetadata:
        page_size, device = kv_cache.shape[3], kv_cache.device
        slots = batch.slot_mapping.to(device)
        decode_seqs, prefill_seqs = _split_by_query_len(batch)
        groups = [_make_group(batch, [i], page_size, device) for i in prefill_seqs]
        if decode_seqs:
            groups.append(_make_group(batch, decode_seqs, page_size, device))
        return TorchAttentionMetadata(slots // page_size, slots % page_size, groups)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: torch.Tensor,
        layer: int,
        metadata: TorchAttentionMetadata,
    ) -> torch.Tensor:
        # q: [num_tokens, num_heads, head_dim]; k, v: [num_tokens, num_kv_heads, head_dim]
        kv_cache[metadata.slot_pages, layer, 0, metadata.slot_offsets] = k
        kv_cache[metadata.slot_pages, layer, 1, metadata.slot_offsets] = v
        out = torch.empty_like(q)
        for group in metadata.groups:
            out[group.token_index] = _attend(q[group.token_index], kv_cache, layer, group)
        return out


def _attend(
    q: torch.Tensor, kv_cache: torch.Tensor, layer: int, group: AttentionGroup
) -> torch.Tensor:
    # q: [num_seqs, query_len, num_heads, head_dim] -> same shape, q's dtype
    # keys, values: [num_seqs, max_pages * page_size, num_kv_heads, head_dim]
    keys = kv_cache[group.block_tables, layer, 0].flatten(1, 2)
    values = kv_cache[group.block_tables, layer, 1].flatten(1, 2)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2).float(),
        keys.transpose(1, 2).float(),
        values.transpose(1, 2).float(),
        attn_mask=group.mask,
        enable_gqa=True,
    )
    return out.transpose(1, 2).to(q.dtype)


def _split_by_query_len(batch: ForwardBatch) -> tuple[list[int], list[int]]:
    starts = batch.query_start_loc
    decode = [i for i in range(batch.num_seqs) if starts[i + 1] - starts[i] == 1]
    prefill = [i for i in range(batch.num_seqs) if starts[i + 1] - starts[i] > 1]
    return decode, prefill


def _make_group(
    batch: ForwardBatch, seqs: list[int], page_size: int, device: torch.device
) -> AttentionGroup:
    """Builds one group; all its sequences must have the same query length."""
    starts = batch.query_start_loc
    query_len = starts[seqs[0] + 1] - starts[seqs[0]]
    token_index = torch.tensor([list(range(starts[i], starts[i + 1])) for i in seqs])
    max_pages = max(len(batch.block_tables[i]) for i in seqs)
    block_tables = torch.tensor(
        [batch.block_tables[i] + [0] * (max_pages - len(batch.block_tables[i])) for i in seqs]
    )
    # The queries are the last query_len tokens of each context: query t sits at context
    # position seq_len - query_len + t and sees keys 0..that position (never the padding).
    seq_lens = torch.tensor([batch.seq_lens[i] for i in seqs])
    query_pos = seq_lens[:, None] - query_len + torch.arange(query_len)[None, :]
    key_pos = torch.arange(max_pages * page_size)
    mask = key_pos[None, None, :] <= query_pos[:, :, None]
    return AttentionGroup(token_index.to(device), block_tables.to(device), mask[:, None].to(device))
