"""The engine on the Triton backend, through continuous batching, chunked prefill, prefix
reuse and preemption: 8 concurrent requests (two sharing a 40-token prefix) give HF's greedy
tokens exactly and leave no page held — with decode graphs (eager static-buffer steps on CPU,
captured graphs on CUDA) and without."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from engine.runner import ModelRunner
from tests.hf_reference import engine_greedy, hf_greedy

MAX_NEW_TOKENS = 12
PAGE_SIZE = 7
POOL_TOKENS = 210  # the 8 requests need ~330 tokens of KV at once


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    rng = random.Random(5)
    shared = [rng.randrange(3, 49152) for _ in range(40)]
    fresh = [[rng.randrange(3, 49152) for _ in range(rng.randrange(3, 60))] for _ in range(6)]
    return [shared + [11, 12], shared + [13], *fresh]


@pytest.fixture(scope="module")
def hf_tokens(tiny_dir: Path, prompts: list[list[int]]) -> list[list[int]]:
    return hf_greedy(tiny_dir, prompts, MAX_NEW_TOKENS, ignore_eos=True)


@pytest.mark.parametrize("graph_sizes", [(), (1, 2, 4, 8)], ids=["eager", "graphs"])
def test_engine_on_triton_equals_hf(
    tiny_dir: Path,
    device: torch.device,
    prompts: list[list[int]],
    hf_tokens: list[list[int]],
    graph_sizes: tuple[int, ...],
) -> None:
    num_pages = POOL_TOKENS // PAGE_SIZE
    runner = ModelRunner(
        tiny_dir, "float32", num_pages, PAGE_SIZE, "triton", str(device), graph_sizes
    )
    engine, reqs = engine_greedy(runner, num_pages, prompts, MAX_NEW_TOKENS, 48)
    assert sum(req.num_preemptions for req in reqs) > 0, "the pool was meant to force preemption"
    assert [req.output_token_ids for req in reqs] == hf_tokens
    engine.check_integrity()
    assert engine.pool.num_request_pages() == 0
