"""The Triton attention backend: metadata that is device tensors only, so a decode step can be
captured in a CUDA graph (engine/cuda_graphs.py fills the same metadata in static buffers).

prepare() builds the block tables, context lengths and query offsets on the host and copies
them once to the cache's device; forward() stores the layer's K/V, then runs the decode kernel
when every sequence brings one token and the ragged prefill kernel otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain

import torch

from engine.attention.base import AttentionBackend
from engine.attention.triton.decode import paged_decode
from engine.attention.triton.kv_write import store_kv
from engine.attention.triton.prefill import paged_prefill
from engine.batch import ForwardBatch, to_device


@dataclass(slots=True)
class TritonAttentionMetadata:
    """One step's attention inputs on the cache's device (int32 unless noted)."""

    slot_mapping: torch.Tensor  # [num_tokens] slot of each new token; < 0 = padding, skipped
    block_tables: torch.Tensor  # [num_seqs, max_pages] page ids, padded with page 0
    seq_lens: torch.Tensor  # [num_seqs] context length incl. this step; 0 = padding row
    query_start_loc: torch.Tensor  # [num_seqs + 1] each sequence's first row in the batch
    max_query_len: int  # 1 = a decode step: one token per sequence

    @property
    def is_decode(self) -> bool:
        return self.max_query_len == 1


class TritonAttentionBackend(AttentionBackend[TritonAttentionMetadata]):
    def prepare(self, batch: ForwardBatch, kv_cache: torch.Tensor) -> TritonAttentionMetadata:
        starts = batch.query_start_loc
        max_pages = max(len(table) for table in batch.block_tables)
        tables = [table + [0] * (max_pages - len(table)) for table in batch.block_tables]
        sections = [batch.slot_mapping.tolist(), batch.seq_lens, starts, chain(*tables)]
        host, offsets = _packed(sections)
        rows = to_device(host, kv_cache.device)
        num_tokens, num_seqs = batch.num_tokens, batch.num_seqs
        slots, seq_lens, query_starts, tables_at = offsets
        return TritonAttentionMetadata(
            slot_mapping=rows[slots : slots + num_tokens],
            block_tables=rows[tables_at : tables_at + num_seqs * max_pages].view(
                num_seqs, max_pages
            ),
            seq_lens=rows[seq_lens : seq_lens + num_seqs],
            query_start_loc=rows[query_starts : query_starts + num_seqs + 1],
            max_query_len=max(b - a for a, b in zip(starts, starts[1:], strict=False)),
        )

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: torch.Tensor,
        layer: int,
        metadata: TritonAttentionMetadata,
    ) -> torch.Tensor:
        # q: [num_tokens, num_heads, head_dim]; k, v: [num_tokens, num_kv_heads, head_dim]
        store_kv(k, v, kv_cache, layer, metadata.slot_mapping)
        out = torch.empty_like(q)
        if metadata.is_decode:
            paged_decode(q, kv_cache, layer, metadata.block_tables, metadata.seq_lens, out)
        else:
            paged_prefill(
                q,
                kv_cache,
                layer,
                metadata.block_tables,
                metadata.seq_lens,
                metadata.query_start_loc,
                metadata.max_query_len,
                out,
            )
        return out


_ALIGN = 4  # int32s: every section starts 16-byte aligned, as Triton specializes pointers on it


def _packed(sections: list[Iterable[int]]) -> tuple[torch.Tensor, list[int]]:
    """One int32 host tensor holding the sections one after another, each padded to _ALIGN
    elements, and each section's offset: one host→device copy, and kernels compiled once."""
    values: list[int] = []
    offsets = []
    for section in sections:
        offsets.append(len(values))
        values.extend(section)
        values.extend([0] * (-len(values) % _ALIGN))
    return torch.tensor(values, dtype=torch.int32), offsets
