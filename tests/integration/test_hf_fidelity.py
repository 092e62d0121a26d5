"""Float32 greedy decoding reproduces HF `generate` token for token, on SmolLM2-135M-Instruct:
the paged engine alone, a disaggregated cluster (prefill worker → shm KV handoff → decode
worker) and a colocated cluster, all against the same HF reference.

20 prompts of 5 to 400 tokens (plain text, chat-templated, long texts cut at various
lengths), 32 new tokens each with EOS ignored on both sides. Any drift in RMSNorm, rotary,
GQA, the paged cache or the handoff shows up as a different token within a few steps.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from engine.runner import ModelRunner
from tests.hf_reference import hf_greedy, runner_greedy
from tests.integration.cluster_helpers import (
    greedy_tokens,
    start_cluster,
    wait_until_idle,
)

pytestmark = pytest.mark.slow

MAX_NEW_TOKENS = 32
PAGE_SIZE = 16
NUM_PAGES = 32  # 400 + 32 tokens need 27 pages of 16

TEXTS = (
    "The history of the printing press begins in the fifteenth century, when Johannes "
    "Gutenberg combined movable metal type, oil-based ink and a screw press adapted from "
    "wine making. Within fifty years, presses operated in more than two hundred cities.",
    "To bake bread, mix flour, water, salt and yeast, knead the dough until it is smooth, "
    "let it rise until doubled, shape it, let it rise again, and bake it in a hot oven.",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
    "    return a\n\nprint([fibonacci(i) for i in range(10)])\n",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who "
    "told the same story every evening to anyone who would listen.",
)
QUESTIONS = (
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain what a hash table is in two sentences.",
    "How do I reverse a list in Python?",
    "List three uses of copper.",
)
LONG_TEXT = " ".join(TEXTS * 8)


@dataclass(frozen=True, slots=True)
class PromptSpec:
    source: str  # plain text, or the user message when chat is set
    chat: bool = False
    max_tokens: int | None = None  # keep only this many leading tokens

    @property
    def label(self) -> str:
        kind = "chat" if self.chat else "text"
        return f"{kind}-{self.source[:12].strip()}-{self.max_tokens or 'all'}"


PROMPT_SPECS = (
    [PromptSpec(text) for text in TEXTS]
    + [PromptSpec(question, chat=True) for question in QUESTIONS]
    + [PromptSpec(TEXTS[i], max_tokens=n) for i, n in enumerate((5, 7, 11))]
    + [PromptSpec(LONG_TEXT, max_tokens=n) for n in (48, 128, 200, 255, 256, 333, 400)]
    + [PromptSpec(LONG_TEXT[:1200], chat=True, max_tokens=300)]
)


def encode(tokenizer, spec: PromptSpec) -> list[int]:
    if spec.chat:
        messages = [{"role": "user", "content": spec.source}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    else:
        ids = tokenizer(spec.source)["input_ids"]
    return list(ids)[: spec.max_tokens]


@pytest.fixture(scope="module", autouse=True)
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def prompts(smollm2_dir: Path) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    return [encode(tokenizer, spec) for spec in PROMPT_SPECS]


@pytest.fixture(scope="module")
def hf_tokens(smollm2_dir: Path, prompts: list[list[int]]) -> list[list[int]]:
    return hf_greedy(smollm2_dir, prompts, MAX_NEW_TOKENS, ignore_eos=True)


@pytest.fixture(scope="module")
def runner(smollm2_dir: Path) -> ModelRunner:
    return ModelRunner(smollm2_dir, "float32", NUM_PAGES, PAGE_SIZE)


def test_prompt_set_spans_5_to_400_tokens(prompts: list[list[int]]) -> None:
    """Guards the coverage the fidelity cases claim (short, page-boundary and long prompts)."""
    lengths = sorted(len(p) for p in prompts)
    assert len(prompts) >= 20
    assert (lengths[0], lengths[-1]) == (5, 400)
    assert {255, 256} <= set(lengths)  # one short of, and exactly at, a page boundary


@pytest.mark.parametrize("index", range(len(PROMPT_SPECS)), ids=[s.label for s in PROMPT_SPECS])
def test_greedy_tokens_equal_hf_generate(
    index: int, prompts: list[list[int]], hf_tokens: list[list[int]], runner: ModelRunner
) -> None:
    pages = random.Random(index).sample(range(NUM_PAGES), NUM_PAGES)  # scattered pages
    tokens = runner_greedy(runner, prompts[index], MAX_NEW_TOKENS, pages)
    assert tokens == hf_tokens[index]


@pytest.mark.parametrize(
    "shape",
    [
        # Every prompt over the KV handoff: no decode-side prefill of short prompts.
        {"num_prefill": 1, "num_decode": 1, "conditional_disaggregation": False},
        {"num_prefill": 0, "num_decode": 0, "num_colocated": 1},
    ],
    ids=["disaggregated", "colocated"],
)
def test_cluster_tokens_equal_hf_generate(
    shape: dict,
    ray_cluster,
    model_cache_dir: Path,
    prompts: list[list[int]],
    hf_tokens: list[list[int]],
) -> None:
    """All prompts at once through the router: batched, and split across two processes."""
    cluster = start_cluster(
        model="smollm2-135m", model_cache_dir=model_cache_dir, kv_cache_mib=384, **shape
    )
    try:
        outputs = greedy_tokens(cluster.address, prompts, MAX_NEW_TOKENS)
        mismatched = [
            i for i, (got, want) in enumerate(zip(outputs, hf_tokens, strict=True)) if got != want
        ]
        assert not mismatched, f"prompts {mismatched} differ from HF"
        wait_until_idle(cluster)
    finally:
        cluster.stop()
