"""The real model through continuous batching, chunked prefill and preemption: 16 concurrent
requests of mixed lengths on a pool too small to hold them all still produce HF's greedy
tokens exactly, at page sizes 1, 16 and 7, and leave no page held."""

from __future__ import annotations

import random

import pytest

from engine.runner import ModelRunner
from tests.hf_reference import engine_greedy, hf_greedy

MAX_NEW_TOKENS = 20
POOL_TOKENS = 900  # the 16 requests need ~2,300 tokens of KV at once


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    rng = random.Random(11)
    return [[rng.randrange(3, 49152) for _ in range(rng.randrange(5, 260))] for _ in range(16)]


@pytest.fixture(scope="module")
def hf_tokens(tiny_dir, prompts) -> list[list[int]]:
    return hf_greedy(tiny_dir, prompts, MAX_NEW_TOKENS, ignore_eos=True)


@pytest.mark.parametrize("page_size", [1, 16, 7])
def test_outputs_equal_hf_through_preemption(tiny_dir, prompts, hf_tokens, page_size):
    num_pages = POOL_TOKENS // page_size
    runner = ModelRunner(tiny_dir, "float32", num_pages, page_size)
    engine, reqs = engine_greedy(runner, num_pages, prompts, MAX_NEW_TOKENS, 128)
    assert sum(req.num_preemptions for req in reqs) > 0, "the pool was meant to force preemption"
    assert [req.output_token_ids for req in reqs] == hf_tokens
    engine.check_integrity()
    assert engine.pool.num_request_pages() == 0
