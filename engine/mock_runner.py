"""A model runner without a model (vLLM's `--load-format dummy`, but checkable): the next
token is a deterministic function of the context, read back through the paged KV cache.

One step (`execute`):
  1. write  every batch token's markers into its slot (batch.slot_mapping), in every layer,
            K/V and head, so a transfer moves them: K = token id, V = position (float32 holds
            both exactly below 2^24);
  2. read   each sequence's whole context back through its block table;
  3. check  a slot never written (still the sentinel) raises: the engine aborts its requests;
  4. hash   the context as read -> one token, never an EOS id nor a low (special) id;
            a slot whose markers disagree across layers/heads, or whose V is not its
            position, reads as a poison id, so the hash (and the output) changes;
  5. sleep  the modelled cost of the step.
So a wrong slot mapping, block table, prefix reuse, KV transfer, corrupted page or a read of
a freed-and-reused page changes the tokens, which `mock_reference_tokens` computes without
any paging. Not thread-safe, like ModelRunner: the engine loop alone calls `execute`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import torch

from engine.batch import ForwardBatch
from engine.config import ModelConfig

_UNWRITTEN = -1.0  # sentinel of a slot no step has written
_POISON = -7  # what a slot with inconsistent markers reads as
_MIX_PRIME = 2_147_483_647  # 2^31 - 1: every product below stays inside int64
_MAX_SPECIAL_ID = 255  # ids at or below this are never produced (special tokens live there)

Term = TypeVar("Term", int, torch.Tensor)


class MockRunner:
    """ModelRunner's surface (`config`, `layout`, `kv_cache`, `device`, `execute`), no weights.

    kv_cache: [num_pages, num_layers, 2 (K, V), page_size, num_kv_heads, head_dim] float32,
    the model's own layout, so transports move it like a real one's.
    """

    def __init__(
        self,
        model_dir: Path,
        dtype: str,
        num_pages: int,
        page_size: int,
        prefill_s_per_token: float = 0.0,
        decode_s_per_step: float = 0.0,
        device: str = "cpu",
    ) -> None:
        if dtype != "float32":
            raise ValueError(
                f"dtype: the mock runner stores token ids exactly only in float32, got {dtype!r}"
            )
        self.config = ModelConfig.from_dir(Path(model_dir))
        self.layout = self.config.kv_layout(page_size, dtype)
        self.page_size = page_size
        self.prefill_s_per_token = prefill_s_per_token
        self.decode_s_per_step = decode_s_per_step
        layout = self.layout
        shape = (num_pages, layout.num_layers, 2, page_size, layout.num_kv_heads, layout.head_dim)
        self.kv_cache = torch.full(shape, _UNWRITTEN, dtype=torch.float32, device=device)

    @property
    def device(self) -> torch.device:
        return self.kv_cache.device

    def execute(self, batch: ForwardBatch) -> torch.Tensor:
        """Writes the batch's markers, reads every context back, returns one-hot logits.

        # returns: [num_seqs, vocab_size] float32, -inf except the next token (0.0)
        """
        started = time.monotonic()
        self._write(batch)
        lens = torch.tensor(batch.seq_lens, dtype=torch.int64)
        seq_index = torch.repeat_interleave(torch.arange(batch.num_seqs), lens)
        positions = torch.arange(int(lens.sum())) - torch.repeat_interleave(
            lens.cumsum(0) - lens, lens
        )
        ids = self._read_contexts(batch, seq_index, positions)
        hashes = torch.zeros(batch.num_seqs, dtype=torch.int64).index_add_(
            0, seq_index, _mix(ids, positions)
        )
        next_ids = [
            _token_for(int(h), self.config.vocab_size, self.config.eos_token_ids)
            for h in hashes.tolist()
        ]
        logits = torch.full((batch.num_seqs, self.config.vocab_size), float("-inf"))
        logits[torch.arange(batch.num_seqs), torch.tensor(next_ids)] = 0.0
        self._sleep_cost(batch, started)
        return logits

    def _write(self, batch: ForwardBatch) -> None:
        # slot_mapping: [num_tokens] -> markers into [page, :, K|V, offset, :, :]
        pages = batch.slot_mapping // self.page_size
        offsets = batch.slot_mapping % self.page_size
        shape = (-1, 1, 1, 1)
        self.kv_cache[pages, :, 0, offsets] = batch.token_ids.to(torch.float32).view(shape)
        self.kv_cache[pages, :, 1, offsets] = batch.positions.to(torch.float32).view(shape)

    def _read_contexts(
        self, batch: ForwardBatch, seq_index: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """Every sequence's context token ids as its block table finds them, end to end.

        # seq_index, positions: [sum(seq_lens)] int64 (whose token, where) -> ids: same shape
        """
        tables = _padded(batch.block_tables)
        pages = tables[seq_index, positions // self.page_size]
        assert bool((pages >= 0).all()), "a block table is shorter than its sequence"
        slots = self.kv_cache[pages, :, :, positions % self.page_size]  # [n, L, 2, H, D]
        keys, values = slots[:, :, 0].flatten(1), slots[:, :, 1].flatten(1)
        assert not bool((keys == _UNWRITTEN).any()), "a sequence reads a slot never written"
        consistent = (keys == keys[:, :1]).all(1) & (values == positions[:, None]).all(1)
        return torch.where(consistent, keys[:, 0].to(torch.int64), _POISON)

    def _sleep_cost(self, batch: ForwardBatch, started: float) -> None:
        starts = batch.query_start_loc
        query_lens = [starts[i + 1] - starts[i] for i in range(batch.num_seqs)]
        prefill_tokens = sum(n for n in query_lens if n > 1)  # a decode step is 1 token
        cost_s = self.prefill_s_per_token * prefill_tokens + self.decode_s_per_step
        remaining_s = cost_s - (time.monotonic() - started)
        if remaining_s > 0:
            time.sleep(remaining_s)


def mock_reference_tokens(
    prompt: Sequence[int], num_tokens: int, vocab_size: int, eos_token_ids: Sequence[int]
) -> list[int]:
    """The `num_tokens` tokens MockRunner generates after `prompt`, computed without paging."""
    context = list(prompt)
    acc = 0
    for position, token in enumerate(context):
        acc += _mix(token, position)
    for _ in range(num_tokens):
        token = _token_for(acc, vocab_size, tuple(eos_token_ids))
        acc += _mix(token, len(context))
        context.append(token)
    return context[len(prompt) :]


def _padded(tables: Sequence[Sequence[int]]) -> torch.Tensor:
    """Block tables as one [num_seqs, max_pages] int64 tensor, -1 past each table's end."""
    width = max(len(t) for t in tables)
    return torch.tensor([list(t) + [-1] * (width - len(t)) for t in tables], dtype=torch.int64)


def _mix(ids: Term, positions: Term) -> Term:
    """A token's hash term at its position; a sequence's hash is the sum of its terms. Works
    on ints and on int64 tensors alike (`%` is Python's on both, and every intermediate stays
    below 2^62), so the runner and `mock_reference_tokens` agree exactly.

    # ids, positions: int, or [n] int64 -> same shape, in [0, 2^31 - 1)
    """
    x = (ids % _MIX_PRIME * 1_000_003 + (positions + 1) * 998_244_353) % _MIX_PRIME
    x = (x * x + 7 * x + 13) % _MIX_PRIME
    return (x * x + positions) % _MIX_PRIME


def _token_for(context_hash: int, vocab_size: int, eos_token_ids: Sequence[int]) -> int:
    """A plain token id from the context's hash: above the special ids, never an EOS id."""
    first = min(_MAX_SPECIAL_ID + 1, vocab_size // 2)
    token = first + context_hash % (vocab_size - first)
    while token in eos_token_ids:
        token = first + (token + 1 - first) % (vocab_size - first)
    return token
