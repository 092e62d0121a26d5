"""The paged model against Hugging Face transformers on the `tiny` preset.

Whatever the schedule (one step, chunks, token by token), page size or page placement, the
last-token logits must be HF's logits at that position: the KV cache must hold exactly what
HF's own attention sees.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from engine.runner import ModelRunner
from tests import hf_reference
from tests.hf_reference import SeqStep, make_forward_batch

NUM_PAGES = 160
ATOL = 1e-4
PROMPT = random.Random(7).sample(range(3, 49152), 45)


def shuffled_pages(num_pages: int, seed: int) -> list[int]:
    """Non-contiguous, out-of-order page ids, as a long-running page pool hands them out."""
    return random.Random(seed).sample(range(NUM_PAGES), num_pages)


def run_chunks(
    runner: ModelRunner, tokens: list[int], chunks: list[int], pages: list[int]
) -> list[torch.Tensor]:
    """Feeds `tokens` in chunks of the given sizes; returns each step's logits row."""
    rows, done = [], 0
    for size in chunks:
        done += size
        batch = make_forward_batch([SeqStep(tokens[:done], size, pages)], runner.layout.page_size)
        rows.append(runner.execute(batch)[0])
    return rows


@pytest.fixture(scope="module")
def hf_logits(tiny_dir: Path) -> torch.Tensor:
    return hf_reference.hf_logits(tiny_dir, PROMPT)


@pytest.fixture(scope="module", params=[1, 16, 7], ids=lambda size: f"page_size={size}")
def runner(request: pytest.FixtureRequest, tiny_dir: Path) -> ModelRunner:
    return ModelRunner(tiny_dir, "float32", NUM_PAGES, page_size=request.param)


def pages_for(runner: ModelRunner, num_tokens: int, seed: int) -> list[int]:
    return shuffled_pages(runner.layout.num_pages_for(num_tokens), seed)


def test_one_step_prefill_matches_hf(runner: ModelRunner, hf_logits: torch.Tensor) -> None:
    """A whole prompt in one step: the plain prefill path."""
    [logits] = run_chunks(runner, PROMPT, [len(PROMPT)], pages_for(runner, len(PROMPT), 1))
    torch.testing.assert_close(logits, hf_logits[-1], atol=ATOL, rtol=0)


def test_chunked_prefill_matches_hf(runner: ModelRunner, hf_logits: torch.Tensor) -> None:
    """Chunks that start and end mid-page must read earlier chunks' K/V from the cache."""
    chunks = [10, 1, 17, 5, 12]
    rows = run_chunks(runner, PROMPT, chunks, pages_for(runner, len(PROMPT), 2))
    ends = [sum(chunks[: i + 1]) - 1 for i in range(len(chunks))]
    torch.testing.assert_close(torch.stack(rows), hf_logits[ends], atol=ATOL, rtol=0)


def test_token_by_token_matches_hf(runner: ModelRunner, hf_logits: torch.Tensor) -> None:
    """One token per step is decode: every position's logits must match."""
    rows = run_chunks(runner, PROMPT, [1] * len(PROMPT), pages_for(runner, len(PROMPT), 3))
    torch.testing.assert_close(torch.stack(rows), hf_logits, atol=ATOL, rtol=0)


def test_batched_sequences_match_each_alone(runner: ModelRunner) -> None:
    """A mixed batch (fresh prefill, continued chunk, two decodes) equals each sequence run
    alone: sequences must not see each other's pages, or the padding between them."""
    contexts = [PROMPT[:12], PROMPT[5:35], PROMPT[::-1][:20], PROMPT[:3]]
    num_new = [12, 9, 1, 1]
    sizes = [runner.layout.num_pages_for(len(c)) for c in contexts]
    pool = shuffled_pages(sum(sizes), 20)
    pages = [pool[sum(sizes[:i]) : sum(sizes[: i + 1])] for i in range(len(sizes))]
    alone = []
    for context, new, seq_pages in zip(contexts, num_new, pages, strict=True):
        chunks = [len(context) - new, new] if len(context) > new else [new]
        alone.append(run_chunks(runner, context, chunks, seq_pages)[-1])
    # Each sequence's earlier context is still in its pages; the batch recomputes the same
    # new tokens in the same slots.
    steps = [SeqStep(c, n, p) for c, n, p in zip(contexts, num_new, pages, strict=True)]
    batched = runner.execute(make_forward_batch(steps, runner.layout.page_size))
    torch.testing.assert_close(batched, torch.stack(alone), atol=ATOL, rtol=0)


def test_step_writes_only_its_own_slots(tiny_dir: Path) -> None:
    """The KV cache is shared by every request: a step may touch only the slots it names."""
    runner = ModelRunner(tiny_dir, "float32", num_pages=8, page_size=4)
    run_chunks(runner, PROMPT[:6], [6], [5, 2])  # slots 5:0-3 then 2:0-1
    written = runner.kv_cache.flatten(1).ne(0).any(dim=1).nonzero().flatten().tolist()
    assert written == [2, 5]
    assert bool(runner.kv_cache[2, :, :, 2:].eq(0).all())


def test_bfloat16_gives_finite_logits_close_to_float32(tiny_dir: Path) -> None:
    """bfloat16 weights and cache run end to end; logits stay float32 and near full precision."""
    bf16 = ModelRunner(tiny_dir, "bfloat16", NUM_PAGES, page_size=16)
    fp32 = ModelRunner(tiny_dir, "float32", NUM_PAGES, page_size=16)
    pages = shuffled_pages(3, 4)
    [low] = run_chunks(bf16, PROMPT, [len(PROMPT)], pages)
    [full] = run_chunks(fp32, PROMPT, [len(PROMPT)], pages)
    assert bf16.kv_cache.dtype == torch.bfloat16
    assert low.dtype == torch.float32 and bool(low.isfinite().all())
    assert (low - full).abs().max().item() < 1.0  # logits spread ~8; bf16 keeps ~3 digits


def test_qwen2_qkv_bias_matches_hf(tmp_path: Path) -> None:
    """Qwen2 adds a bias to q/k/v (not o); HF's Qwen2ForCausalLM is the reference."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=False,
    )  # fmt: skip
    hf = Qwen2ForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in hf.parameters():  # HF's init leaves biases at zero: make them matter
            param.copy_(torch.randn(param.shape, generator=generator) * param.shape[-1] ** -0.5)
    hf.save_pretrained(tmp_path)
    tokens = random.Random(3).sample(range(256), 20)
    runner = ModelRunner(tmp_path, "float32", num_pages=4, page_size=8)
    rows = run_chunks(runner, tokens, [13, 1, 6], [3, 0, 2])
    with torch.inference_mode():
        expected = hf(torch.tensor([tokens])).logits[0, [12, 13, 19]]
    assert runner.config.attention_bias
    torch.testing.assert_close(torch.stack(rows), expected, atol=ATOL, rtol=0)
