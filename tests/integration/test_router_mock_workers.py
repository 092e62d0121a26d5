"""The router over real gRPC on loopback, in front of deterministic mock workers: streams.

Every expected token comes from the mock's formula (tests/doubles/mock_worker.py), every
expected text from SmolLM2's tokenizer decoding those tokens.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from kv_transfer.pages import Role
from pdserve.v1 import generation_pb2 as pb
from router.tokenizer import Tokenizer
from tests.doubles.mock_worker import MockBehavior, MockWorker, WorkerMethod, mock_token
from tests.doubles.router_cluster import router_cluster

PROMPT = "Tell me a story about a llama who learned to serve language models."
EOS = 2  # SmolLM2's <|im_end|>


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(smollm2_dir)


def expected_tokens(prompt_ids: list[int], count: int) -> list[int]:
    return [mock_token(prompt_ids, i, 49152, (EOS,)) for i in range(count)]


def split(responses: list[pb.GenerateResponse]) -> tuple[list[int], str, pb.Final]:
    """Token ids and text of the chunks, and the final message, which must come last, once."""
    assert [r.WhichOneof("kind") for r in responses][-1] == "final"
    assert sum(r.HasField("final") for r in responses) == 1
    chunks = [r.chunk for r in responses[:-1]]
    return (
        [t for c in chunks for t in c.token_ids],
        "".join(c.text for c in chunks),
        responses[-1].final,
    )


def request(max_tokens: int, prompt: str = PROMPT, **sampling) -> pb.GenerateRequest:
    params = pb.SamplingParams(max_tokens=max_tokens, **sampling)
    return pb.GenerateRequest(prompt=prompt, sampling=params)


def pair(behavior: MockBehavior | None = None) -> list[MockWorker]:
    return [MockWorker("p0", Role.PREFILL), MockWorker("d0", Role.DECODE, behavior)]


async def test_disaggregated_stream_follows_the_mock_formula(smollm2_dir, tokenizer):
    prompt_ids = tokenizer.encode(PROMPT)
    async with router_cluster(smollm2_dir, pair()) as cluster:
        responses = await cluster.generate(request(max_tokens=12))
        tokens, text, final = split(responses)
        assert tokens == expected_tokens(prompt_ids, 12)
        assert len(responses) == 13  # token #1 alone, then one chunk per decoded token
        assert text == tokenizer.decode(tokens)
        assert len({r.request_id for r in responses}) == 1 and responses[0].request_id
        assert final.finish_reason == pb.FINISH_REASON_LENGTH
        assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (len(prompt_ids), 12)
        assert (final.prefill_worker_id, final.decode_worker_id) == ("p0", "d0")
        assert (final.timing.prefill_s, final.timing.kv_transfer_s) == (0.003, 0.002)
        assert 0 < final.timing.queue_s <= final.timing.ttft_s <= final.timing.e2e_s
        prefill, decode = cluster.workers["p0"], cluster.workers["d0"]
        assert prefill.calls_of(WorkerMethod.DECODE) == decode.calls_of(WorkerMethod.PREFILL) == []
        assert len(prefill.calls_of(WorkerMethod.RELEASE_LEASE)) == 1  # the decode worker's ack
        prefill.check_idle()
        decode.check_idle()


async def test_short_prompt_runs_colocated_on_the_both_worker(smollm2_dir, tokenizer):
    workers = pair() + [MockWorker("b0", Role.BOTH)]
    async with router_cluster(smollm2_dir, workers, colocate_threshold_tokens=8) as cluster:
        tokens, text, final = split(await cluster.generate(request(5, prompt="Hi there")))
        assert tokens == expected_tokens(tokenizer.encode("Hi there"), 5)
        assert (final.prefill_worker_id, final.decode_worker_id) == ("b0", "b0")
        assert final.timing.prefill_s == 0.003 and final.timing.kv_transfer_s == 0.0
        assert cluster.workers["p0"].calls_of(WorkerMethod.PREFILL) == []
        assert cluster.workers["b0"].calls_of(WorkerMethod.PREFILL) == []  # Decode did it all
        _, _, long_final = split(await cluster.generate(request(3)))
        assert (long_final.prefill_worker_id, long_final.decode_worker_id) == ("p0", "d0")


async def test_a_one_token_request_has_no_decode_leg(smollm2_dir, tokenizer):
    async with router_cluster(smollm2_dir, pair()) as cluster:
        tokens, _, final = split(await cluster.generate(request(max_tokens=1)))
        assert tokens == expected_tokens(tokenizer.encode(PROMPT), 1)
        assert final.finish_reason == pb.FINISH_REASON_LENGTH
        assert cluster.workers["d0"].calls_of(WorkerMethod.DECODE) == []
        cluster.workers["p0"].check_idle()  # no handle was issued, so no lease is held


async def test_eos_ends_the_stream_with_stop_and_no_eos_text(smollm2_dir, tokenizer):
    async with router_cluster(smollm2_dir, pair(MockBehavior(eos_at=3))) as cluster:
        tokens, text, final = split(await cluster.generate(request(max_tokens=10)))
        first_three = expected_tokens(tokenizer.encode(PROMPT), 3)
        assert tokens == first_three + [EOS]
        assert text == tokenizer.decode(first_three)
        assert (final.finish_reason, final.stop) == (pb.FINISH_REASON_STOP, "<|im_end|>")
        assert final.usage.completion_tokens == 4


async def test_a_requested_stop_token_ends_the_request(smollm2_dir, tokenizer):
    expected = expected_tokens(tokenizer.encode(PROMPT), 10)
    async with router_cluster(smollm2_dir, pair()) as cluster:
        tokens, text, final = split(
            await cluster.generate(request(10, stop_token_ids=[expected[2]]))
        )
        assert tokens == expected[:3]
        assert text == tokenizer.decode(expected[:2])
        assert final.finish_reason == pb.FINISH_REASON_STOP
        assert final.stop == tokenizer.decode([expected[2]], skip_special_tokens=False)


async def test_a_stop_token_as_token_one_ends_at_prefill_without_its_text(smollm2_dir, tokenizer):
    first = expected_tokens(tokenizer.encode(PROMPT), 1)[0]
    async with router_cluster(smollm2_dir, pair()) as cluster:
        responses = await cluster.generate(request(10, stop_token_ids=[first]))
        tokens, text, final = split(responses)
        assert (tokens, text) == ([first], "")
        assert final.finish_reason == pb.FINISH_REASON_STOP
        assert final.usage.completion_tokens == 1
        assert cluster.workers["d0"].calls_of(WorkerMethod.DECODE) == []
        cluster.workers["p0"].check_idle()


async def test_stop_string_truncates_the_text_and_ends_the_decode_leg(smollm2_dir, tokenizer):
    expected = expected_tokens(tokenizer.encode(PROMPT), 40)
    full_text = tokenizer.decode(expected)
    start = len(tokenizer.decode(expected[:6]))
    stop = full_text[start : start + 4]
    behavior = MockBehavior(decode_delay_s=0.02)  # the stream is still running at the match
    async with router_cluster(smollm2_dir, pair(behavior)) as cluster:
        response_list = await cluster.generate(request(40, stop=[stop]))
        tokens, text, final = split(response_list)
        assert text == full_text[: full_text.index(stop)]
        assert (final.finish_reason, final.stop) == (pb.FINISH_REASON_STOP, stop)
        assert tokens == expected[: len(tokens)] and len(tokens) < 40
        assert final.usage.completion_tokens == len(tokens)
        request_id = response_list[0].request_id
        assert cluster.workers["d0"].calls_of(WorkerMethod.ABORT) == [request_id]
        await asyncio.sleep(0.05)  # the cancelled Decode handler unwinds
        cluster.workers["d0"].check_idle()


async def test_repeated_prompt_reports_cached_prompt_tokens(smollm2_dir, tokenizer):
    num_full_pages = len(tokenizer.encode(PROMPT)) // 4  # the mock's page size is 4
    async with router_cluster(smollm2_dir, pair()) as cluster:
        _, _, cold = split(await cluster.generate(request(2)))
        _, _, warm = split(await cluster.generate(request(2)))
        assert (cold.usage.cached_prompt_tokens, warm.usage.cached_prompt_tokens) == (
            0,
            num_full_pages * 4,
        )


async def test_server_and_model_info_describe_the_cluster(smollm2_dir):
    async with router_cluster(smollm2_dir, pair(), model_name="smollm2") as cluster:
        server = await cluster.stub.GetServerInfo(pb.GetServerInfoRequest())
        assert (server.model, server.requests_in_flight) == ("smollm2", 0)
        assert [(w.worker_id, w.role, w.alive) for w in server.workers] == [
            ("d0", "decode", True),
            ("p0", "prefill", True),
        ]
        assert server.workers[1].address == cluster.workers["p0"].address
        model = await cluster.stub.GetModelInfo(pb.GetModelInfoRequest())
        assert (model.model, model.max_context_len, model.vocab_size) == ("smollm2", 8192, 49152)
        assert (model.dtype, model.page_size, list(model.eos_token_ids)) == ("float32", 4, [EOS])


async def test_health_is_serving_while_a_route_exists(smollm2_dir):
    async with router_cluster(smollm2_dir, pair()) as cluster:
        health = health_pb2_grpc.HealthStub(cluster.channel)
        for service in ("", "pdserve.v1.Generation"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    async with router_cluster(smollm2_dir, [MockWorker("p0", Role.PREFILL)]) as cluster:
        health = health_pb2_grpc.HealthStub(cluster.channel)
        unready = await health.Check(health_pb2.HealthCheckRequest(service=""))
        alive = await health.Check(health_pb2.HealthCheckRequest(service="liveness"))
        assert unready.status == health_pb2.HealthCheckResponse.NOT_SERVING  # no route
        assert alive.status == health_pb2.HealthCheckResponse.SERVING  # but not to restart


async def test_reflection_lists_the_public_services(smollm2_dir):
    async with router_cluster(smollm2_dir, pair()) as cluster:
        stub = reflection_pb2_grpc.ServerReflectionStub(cluster.channel)
        query = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = [reply async for reply in stub.ServerReflectionInfo(iter([query]))]
        names = {s.name for s in replies[0].list_services_response.service}
        assert {"pdserve.v1.Generation", "grpc.health.v1.Health"} <= names
