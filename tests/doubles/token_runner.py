"""A deterministic stand-in for the model runner, to test the engine without a model.

Its "KV cache" stores token ids: each step writes the batch's tokens into their slots and
reads every sequence's context back through its block table. The next token is a hash of
that context, so a wrong slot mapping, block table, prefix reuse, transfer or preemption
recompute changes the output, which `reference_tokens` computes without any paging.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.batch import ForwardBatch

VOCAB_SIZE = 1000
EOS_TOKEN_ID = 0


@dataclass(frozen=True, slots=True)
class TokenModelConfig:
    eos_token_ids: tuple[int, ...] = (EOS_TOKEN_ID,)
    max_position_embeddings: int = 4096
    vocab_size: int = VOCAB_SIZE


def next_token(context: list[int]) -> int:
    """Never EOS: tests that want a stop name it in stop_token_ids."""
    acc = 0
    for position, token in enumerate(context):
        acc = (acc * 1_000_003 + (position + 1) * (token + 7)) % 2**61
    return 1 + acc % (VOCAB_SIZE - 1)


def reference_tokens(prompt: list[int], num_tokens: int) -> list[int]:
    context = list(prompt)
    for _ in range(num_tokens):
        context.append(next_token(context))
    return context[len(prompt) :]


class TokenRunner:
    def __init__(
        self, num_pages: int, page_size: int, config: TokenModelConfig | None = None
    ) -> None:
        self.config = config or TokenModelConfig()
        self.page_size = page_size
        # kv_cache: [num_pages, page_size] token ids; -1 marks a slot never written
        self.kv_cache = torch.full((num_pages, page_size), -1, dtype=torch.int64)
        self.num_batched_tokens: list[int] = []

    def execute(self, batch: ForwardBatch) -> torch.Tensor:
        # logits: [num_seqs, vocab] with one hot per row
        self.kv_cache.view(-1)[batch.slot_mapping] = batch.token_ids
        self.num_batched_tokens.append(batch.num_tokens)
        logits = torch.full((batch.num_seqs, VOCAB_SIZE), -1e9)
        for i in range(batch.num_seqs):
            self._check_positions(batch, i)
            logits[i, next_token(self._context(batch, i))] = 0.0
        return logits

    def _context(self, batch: ForwardBatch, i: int) -> list[int]:
        table = batch.block_tables[i]
        context = [
            int(self.kv_cache[table[p // self.page_size], p % self.page_size])
            for p in range(batch.seq_lens[i])
        ]
        assert -1 not in context, f"sequence {i} reads a slot that was never written"
        return context

    @staticmethod
    def _check_positions(batch: ForwardBatch, i: int) -> None:
        start, end = batch.query_start_loc[i], batch.query_start_loc[i + 1]
        expected = list(range(batch.seq_lens[i] - (end - start), batch.seq_lens[i]))
        assert batch.positions[start:end].tolist() == expected
