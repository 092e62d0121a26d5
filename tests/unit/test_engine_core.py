"""EngineCore and Scheduler over the token runner: batching, chunking, prefix reuse,
preemption and hand-off must never change a request's tokens, and must leave no page held."""

from __future__ import annotations

import random

import pytest

from engine.core import EngineCore
from engine.page_pool import PagePool
from engine.request import Request, RequestStatus, SamplingParams
from engine.scheduler import SchedulerConfig
from tests.doubles.token_runner import TokenRunner, reference_tokens


def make_engine(
    num_pages: int = 256, page_size: int = 16, budget: int = 512, max_seqs: int = 64
) -> EngineCore:
    runner = TokenRunner(num_pages, page_size)
    config = SchedulerConfig(max_num_seqs=max_seqs, max_num_batched_tokens=budget)
    return EngineCore(runner, PagePool(num_pages, page_size), config)


def make_request(
    request_id: str, prompt_len: int, max_tokens: int, seed: int = 0, **kwargs
) -> Request:
    rng = random.Random(f"{request_id}-{seed}")
    prompt = [rng.randrange(1, 1000) for _ in range(prompt_len)]
    return Request(request_id, prompt, SamplingParams(max_tokens=max_tokens, **kwargs))


def run_to_completion(engine: EngineCore, max_steps: int = 10_000) -> None:
    for _ in range(max_steps):
        if not engine.has_work:
            return
        engine.step()
        engine.check_integrity()
    raise AssertionError("engine did not drain")


def assert_no_request_pages(engine: EngineCore) -> None:
    engine.check_integrity()
    assert engine.pool.num_request_pages() == 0


def test_single_request_generates_reference_tokens_and_frees_pages():
    engine = make_engine()
    req = make_request("a", prompt_len=37, max_tokens=12)
    engine.add_request(req)
    run_to_completion(engine)
    assert req.output_token_ids == reference_tokens(req.prompt_token_ids, 12)
    assert req.status is RequestStatus.FINISHED_LENGTH
    assert_no_request_pages(engine)


@pytest.mark.parametrize("page_size", [1, 16, 7])
def test_sixteen_concurrent_mixed_length_requests_match_reference(page_size: int):
    engine = make_engine(num_pages=4096 // page_size + 64, page_size=page_size, budget=96)
    reqs = [make_request(f"r{i}", prompt_len=5 + 23 * i, max_tokens=4 + 3 * i) for i in range(16)]
    for req in reqs:
        engine.add_request(req)
    run_to_completion(engine)
    for req in reqs:
        assert req.output_token_ids == reference_tokens(
            req.prompt_token_ids, req.sampling.max_tokens
        )
    assert_no_request_pages(engine)


def test_long_prompt_is_chunked_within_the_token_budget():
    engine = make_engine(budget=16)
    req = make_request("long", prompt_len=50, max_tokens=3)
    engine.add_request(req)
    run_to_completion(engine)
    # 50 prompt tokens in chunks of 16, 16, 16, 2; then the two decode steps for tokens 2 and 3.
    assert engine.runner.num_batched_tokens == [16, 16, 16, 2, 1, 1]
    assert req.output_token_ids == reference_tokens(req.prompt_token_ids, 3)


@pytest.mark.parametrize("page_size", [1, 16, 7])
def test_preemption_under_page_pressure_keeps_outputs_exact(page_size: int):
    # 8 requests that together need ~2x the pool: some must be preempted and recomputed.
    num_pages = 240 // page_size
    engine = make_engine(num_pages=num_pages, page_size=page_size, budget=64)
    reqs = [make_request(f"p{i}", prompt_len=20 + 5 * i, max_tokens=30) for i in range(8)]
    for req in reqs:
        engine.add_request(req)
    run_to_completion(engine)
    assert sum(req.num_preemptions for req in reqs) > 0
    for req in reqs:
        assert req.output_token_ids == reference_tokens(req.prompt_token_ids, 30)
    assert_no_request_pages(engine)


def test_shared_prefix_is_served_from_cached_pages():
    engine = make_engine(page_size=16)
    first = make_request("first", prompt_len=70, max_tokens=2)
    engine.add_request(first)
    run_to_completion(engine)
    second = Request(
        "second", first.prompt_token_ids[:64] + [5, 6, 7], SamplingParams(max_tokens=4)
    )
    engine.add_request(second)
    run_to_completion(engine)
    assert second.num_cached_tokens == 64  # four full pages of the shared 70-token prompt
    assert second.output_token_ids == reference_tokens(second.prompt_token_ids, 4)
    assert_no_request_pages(engine)


def test_fully_cached_prompt_still_computes_its_last_token():
    engine = make_engine(page_size=16)
    first = make_request("first", prompt_len=32, max_tokens=1)
    engine.add_request(first)
    run_to_completion(engine)
    again = Request("again", list(first.prompt_token_ids), SamplingParams(max_tokens=2))
    engine.add_request(again)
    run_to_completion(engine)
    assert again.num_cached_tokens == 16
    assert again.output_token_ids == reference_tokens(first.prompt_token_ids, 2)


def test_stop_token_finishes_with_stopped_status():
    expected = reference_tokens(make_request("s", 10, 1).prompt_token_ids, 5)
    engine = make_engine()
    req = make_request("s", prompt_len=10, max_tokens=50, stop_token_ids=(expected[3],))
    engine.add_request(req)
    run_to_completion(engine)
    assert req.output_token_ids == expected[:4]
    assert req.status is RequestStatus.FINISHED_STOPPED
    assert req.stop_token_id == expected[3]


def test_abort_frees_a_running_request():
    engine = make_engine()
    req = make_request("x", prompt_len=40, max_tokens=100)
    engine.add_request(req)
    engine.step()
    assert engine.pool.num_request_pages() > 0
    assert engine.abort("x") is req
    assert req.status is RequestStatus.FINISHED_ABORTED
    assert_no_request_pages(engine)
    assert engine.abort("x") is None


def test_handoff_moves_pages_to_another_engine_with_exact_output():
    """Prefill on one engine, copy the pages, decode on another: the disaggregated path."""
    prefill, decode = make_engine(page_size=7), make_engine(page_size=7)
    src = make_request("h", prompt_len=45, max_tokens=10)
    src.handoff_after_prefill = True
    prefill.add_request(src)
    outputs = [out for _ in range(10) for out in prefill.step()]
    assert src.status is RequestStatus.FINISHED_HANDOFF
    handed = outputs[-1].handoff_page_ids
    assert len(handed) == 7 and prefill.pool.num_request_pages() == 7  # ceil(45 / 7), still pinned
    dst_pages = decode.pool.allocate(len(handed))
    decode.runner.kv_cache[dst_pages] = prefill.runner.kv_cache[handed]
    prefill.pool.free(handed)  # the ack
    dst = Request(
        "h",
        src.prompt_token_ids,
        src.sampling,
        output_token_ids=list(src.output_token_ids),
        num_computed_tokens=45,
        page_ids=dst_pages,
    )
    decode.add_running(dst)
    run_to_completion(decode)
    assert dst.output_token_ids == reference_tokens(src.prompt_token_ids, 10)
    assert_no_request_pages(prefill)
    assert_no_request_pages(decode)
