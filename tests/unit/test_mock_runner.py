"""The mock runner (engine/mock_runner.py) under the real engine: its tokens equal
`mock_reference_tokens` whatever the batching, prefix reuse or preemption, and anything that
breaks the paged KV (a corrupted page, a slot never written) shows in the output or fails."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
import torch

from engine.batch import ForwardBatch
from engine.builder import EngineConfig, build_engine
from engine.core import EngineCore, RequestOutput
from engine.mock_runner import MockRunner, mock_reference_tokens
from engine.page_pool import PagePool
from engine.request import Request, RequestStatus, SamplingParams
from engine.scheduler import SchedulerConfig

VOCAB_SIZE = 1000
EOS_TOKEN_IDS = (0, 2)
# The `tiny` preset's KV shape (2 layers, 2 KV heads of 16), a small vocabulary.
CONFIG = {
    "model_type": "llama",
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 2048,
    "eos_token_id": list(EOS_TOKEN_IDS),
}


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    return tmp_path


def make_engine(model_dir: Path, num_pages: int = 256, page_size: int = 4, budget: int = 64):
    runner = MockRunner(model_dir, "float32", num_pages, page_size)
    config = SchedulerConfig(max_num_seqs=64, max_num_batched_tokens=budget)
    return EngineCore(runner, PagePool(num_pages, page_size), config)


def make_prompt(rng: random.Random, length: int) -> list[int]:
    return [rng.randrange(3, VOCAB_SIZE) for _ in range(length)]


def reference(prompt: list[int], num_tokens: int) -> list[int]:
    return mock_reference_tokens(prompt, num_tokens, VOCAB_SIZE, EOS_TOKEN_IDS)


def run_to_completion(engine: EngineCore, max_steps: int = 10_000) -> None:
    for _ in range(max_steps):
        if not engine.has_work:
            return
        engine.step()
        engine.check_integrity()
    raise AssertionError("engine did not drain")


def test_reference_tokens_are_plain_ids_never_eos():
    rng = random.Random(0)
    tokens = [t for i in range(50) for t in reference(make_prompt(rng, 5 + i), 20)]
    assert min(tokens) >= 256 and not set(tokens) & set(EOS_TOKEN_IDS)
    assert len(set(tokens)) > 500  # spread over the vocabulary, not stuck on a few ids


def test_concurrent_prompts_with_shared_prefixes_match_the_reference(model_dir: Path):
    engine = make_engine(model_dir, budget=48)  # long prompts are chunked
    rng = random.Random(1)
    shared = make_prompt(rng, 40)
    prompts = [shared + make_prompt(rng, 3 + i) for i in range(8)]
    prompts += [make_prompt(rng, 5 + 11 * i) for i in range(8)]
    first = Request("first", prompts[0], SamplingParams(max_tokens=3))
    engine.add_request(first)
    run_to_completion(engine)  # leaves the shared prefix cached
    reqs = [Request(f"r{i}", p, SamplingParams(max_tokens=6 + i)) for i, p in enumerate(prompts)]
    for req in reqs:
        engine.add_request(req)
    run_to_completion(engine)
    assert reqs[1].num_cached_tokens == 40  # ten full pages of the shared prefix reused
    for req in [first, *reqs]:
        assert req.output_token_ids == reference(req.prompt_token_ids, req.sampling.max_tokens)
    assert engine.pool.num_request_pages() == 0


def test_preemption_under_page_pressure_keeps_outputs_exact(model_dir: Path):
    engine = make_engine(model_dir, num_pages=60, page_size=4, budget=64)
    rng = random.Random(2)
    reqs = [
        Request(f"p{i}", make_prompt(rng, 20 + 5 * i), SamplingParams(max_tokens=30))
        for i in range(8)
    ]
    for req in reqs:
        engine.add_request(req)
    run_to_completion(engine)
    assert sum(req.num_preemptions for req in reqs) > 0
    for req in reqs:
        assert req.output_token_ids == reference(req.prompt_token_ids, 30)


def test_sampling_picks_the_same_token_as_greedy(model_dir: Path):
    engine = make_engine(model_dir)
    prompt = make_prompt(random.Random(3), 17)
    req = Request("s", prompt, SamplingParams(max_tokens=8, temperature=0.9, top_p=0.5, seed=4))
    engine.add_request(req)
    run_to_completion(engine)
    assert req.output_token_ids == reference(prompt, 8)


@pytest.mark.parametrize("part", ["key", "value"])
def test_a_corrupted_page_changes_the_output(model_dir: Path, part: str):
    # One element of one head of the last layer: a transfer that moved only layer 0 right
    # would still be caught.
    engine = make_engine(model_dir, budget=64)
    prompt = make_prompt(random.Random(5), 30)
    req = Request("c", prompt, SamplingParams(max_tokens=8))
    engine.add_request(req)
    engine.step()  # the whole prompt in one step: token #1 is still right
    assert req.output_token_ids == reference(prompt, 1)
    kv = engine.runner.kv_cache
    kv[req.page_ids[2], -1, 0 if part == "key" else 1, 1, -1, 3] += 1.0
    run_to_completion(engine)
    assert req.output_token_ids[0] == reference(prompt, 1)[0]
    assert req.output_token_ids[1:] != reference(prompt, 8)[1:]


def test_reading_a_slot_never_written_fails_the_step(model_dir: Path):
    runner = MockRunner(model_dir, "float32", num_pages=4, page_size=4)
    # A decode step of a 6-token sequence whose first page no step ever wrote.
    batch = ForwardBatch(
        token_ids=torch.tensor([9]),
        positions=torch.tensor([5]),
        slot_mapping=torch.tensor([2 * 4 + 1]),
        query_start_loc=[0, 1],
        seq_lens=[6],
        block_tables=[[3, 2]],
    )
    with pytest.raises(AssertionError, match="never written"):
        runner.execute(batch)


def test_prefill_cost_is_modelled_per_prompt_token(model_dir: Path):
    runner = MockRunner(model_dir, "float32", 16, 4, prefill_s_per_token=0.004)
    batch = ForwardBatch(
        token_ids=torch.arange(3, 53),
        positions=torch.arange(50),
        slot_mapping=torch.arange(50),
        query_start_loc=[0, 50],
        seq_lens=[50],
        block_tables=[list(range(13))],
    )
    started = time.monotonic()
    runner.execute(batch)
    assert time.monotonic() - started >= 0.2


def test_build_engine_with_the_mock_runner_serves_reference_tokens(model_dir: Path):
    config = EngineConfig(runner="mock", page_size=4, kv_cache_mib=2)
    loop, runner = build_engine(config, model_dir, "mock-engine")
    outputs: list[RequestOutput] = []
    prompt = make_prompt(random.Random(6), 21)
    try:
        assert isinstance(runner, MockRunner)
        loop.submit(Request("b", prompt, SamplingParams(max_tokens=5)), outputs.append)
        deadline = time.monotonic() + 10
        while not (outputs and outputs[-1].finished) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        loop.stop()
    assert outputs[-1].request.status is RequestStatus.FINISHED_LENGTH
    assert [t for out in outputs for t in out.new_token_ids] == reference(prompt, 5)


def test_the_mock_runner_refuses_a_dtype_that_cannot_hold_token_ids():
    with pytest.raises(ValueError, match="dtype"):
        EngineConfig(runner="mock", dtype="bfloat16")
