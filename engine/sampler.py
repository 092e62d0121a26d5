"""Next-token sampling: greedy, temperature, top-k, top-p, per-request seeds.

Filtering is batched; the draw is per row with the request's own generator, so a seeded
request's tokens do not depend on which other requests share its batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.request import SamplingParams


def make_generator(seed: int | None) -> torch.Generator | None:
    """A CPU generator seeded for one request; None (the global RNG) when unseeded."""
    return None if seed is None else torch.Generator().manual_seed(seed)


def sample(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
) -> list[int]:
    """One token id per row. Advances each sampled row's generator; greedy rows use none.

    # logits: [num_seqs, vocab_size] float32; params, generators: one per row
    """
    tokens = logits.argmax(dim=-1).tolist()
    sampled_rows = [i for i, p in enumerate(params) if not p.is_greedy]
    if not sampled_rows:
        return tokens
    # The generators are CPU generators (make_generator), so the draw happens on the CPU.
    probs = filtered_probs(logits[sampled_rows].float().cpu(), [params[i] for i in sampled_rows])
    for row, i in enumerate(sampled_rows):
        tokens[i] = int(torch.multinomial(probs[row], 1, generator=generators[i]))
    return tokens


def filtered_probs(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """The distribution sample() draws each row from: softmax(logits / temperature) restricted
    to the row's top-k, then to its top-p nucleus, renormalised. Rows must not be greedy.

    # logits: [num_rows, vocab_size] float32 -> probs: [num_rows, vocab_size]
    """
    temperature = torch.tensor([p.temperature for p in params])[:, None]
    sorted_logits, order = (logits / temperature).sort(dim=-1, descending=True)
    rank = torch.arange(logits.shape[-1])[None, :]
    top_k = torch.tensor([p.top_k if p.top_k > 0 else logits.shape[-1] for p in params])
    sorted_logits = sorted_logits.masked_fill(rank >= top_k[:, None], float("-inf"))
    sorted_probs = sorted_logits.softmax(dim=-1)
    # Keep the smallest prefix whose mass reaches top_p: drop a token once the mass before it
    # already does. The first token has zero mass before it, so at least one always stays.
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    top_p = torch.tensor([p.top_p for p in params])[:, None]
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
    sorted_probs /= sorted_probs.sum(dim=-1, keepdim=True)
    return torch.zeros_like(sorted_probs).scatter_(-1, order, sorted_probs)
