"""The input of one model step: a flat token batch over a paged KV cache (vLLM's shape)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(slots=True)
class ForwardBatch:
    """Tokens of several sequences laid end to end.

    Sequence i owns tokens query_start_loc[i]:query_start_loc[i+1] of the flat batch; they are
    the last (query_start_loc[i+1] - query_start_loc[i]) tokens of a context of seq_lens[i]
    tokens whose K/V live in the pages block_tables[i] (in order). The step writes each new
    token's K/V into its slot before attending, so a sequence sees itself causally.
    """

    token_ids: torch.Tensor  # [num_tokens] int64
    positions: torch.Tensor  # [num_tokens] int64, 0-based position in its sequence
    slot_mapping: torch.Tensor  # [num_tokens] int64, page_id * page_size + offset_in_page
    query_start_loc: list[int]  # [num_seqs + 1]
    seq_lens: list[int]  # [num_seqs], context length including this step's tokens
    block_tables: list[list[int]]  # [num_seqs][ceil(seq_len / page_size)] page ids

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens)

    @property
    def num_tokens(self) -> int:
        return self.query_start_loc[-1]


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`host` on `device`: on CUDA one asynchronous copy from pinned memory (no host sync)."""
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)
