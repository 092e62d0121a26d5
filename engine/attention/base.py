"""The seam between the model and an attention implementation over the paged KV cache.

KV cache layout (kv_transfer.transport), shared by every backend:
    kv_cache: [num_pages, num_layers, 2 (K, V), page_size, num_kv_heads, head_dim]
Token slot s of a layer lives at kv_cache[s // page_size, layer, :, s % page_size].
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Generic, TypeVar

import torch

from engine.batch import ForwardBatch

MetadataT = TypeVar("MetadataT")


class AttentionBackend(ABC, Generic[MetadataT]):
    """Stores a step's new K/V in the paged cache, then attends causally with GQA.

    Each model step calls prepare() once, then forward() once per layer with its result.
    """

    @abstractmethod
    def prepare(self, batch: ForwardBatch, kv_cache: torch.Tensor) -> MetadataT:
        """Precomputes what every layer of this step needs (indices, masks) on kv_cache's device.

        Reads batch and kv_cache's shape only; mutates nothing. The result belongs to the
        caller and is valid for this batch only.
        """

    @abstractmethod
    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: torch.Tensor,
        layer: int,
        metadata: MetadataT,
    ) -> torch.Tensor:
        """Writes k and v into kv_cache[:, layer] at the batch's slots, then attends.

        # q: [num_tokens, num_heads, head_dim] (rotary applied)
        # k, v: [num_tokens, num_kv_heads, head_dim] (k rotary applied)
        # returns: [num_tokens, num_heads, head_dim], q's dtype
        Mutates only the slots of batch.slot_mapping in layer `layer`. Token t of a sequence
        attends to that sequence's context positions 0..its own, read from its block table,
        with scale 1/sqrt(head_dim) and query head h reading KV head h // (num_heads //
        num_kv_heads). Safe only while the batch's pages are owned by its sequences: pages
        shared by prefix caching must never appear in slot_mapping.
        """
