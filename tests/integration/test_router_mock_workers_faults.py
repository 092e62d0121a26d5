"""The router over real gRPC in front of mock workers: every bad ending has one status and
leaves no page or lease behind on any worker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
import pytest

from kv_transfer.pages import Role
from pdserve.v1 import generation_pb2 as pb
from tests.doubles.mock_worker import MockBehavior, MockWorker, WorkerMethod
from tests.doubles.router_cluster import RouterCluster, error_details, router_cluster

SLOW = MockBehavior(decode_delay_s=0.05)  # 20 tokens per second


def request(max_tokens: int = 8, request_id: str = "", **fields) -> pb.GenerateRequest:
    sampling = pb.SamplingParams(max_tokens=max_tokens)
    if not fields.keys() & {"prompt", "chat", "tokens"}:
        fields["prompt"] = "Count slowly to one hundred, please."
    return pb.GenerateRequest(request_id=request_id, sampling=sampling, **fields)


def pair(behavior: MockBehavior | None = None) -> list[MockWorker]:
    return [MockWorker("p0", Role.PREFILL), MockWorker("d0", Role.DECODE, behavior)]


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def assert_quiet(cluster: RouterCluster) -> None:
    """No request in flight on the router; no page or lease held by any worker."""
    await eventually(lambda: cluster.router.requests.num_in_flight == 0)
    await eventually(lambda: all(not w.running and not w.leases for w in cluster.workers.values()))
    for worker in cluster.workers.values():
        worker.check_idle()


async def failure(
    cluster: RouterCluster, message: pb.GenerateRequest, **kw
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await cluster.generate(message, **kw)
    return caught.value


async def test_client_cancel_mid_stream_aborts_both_legs(smollm2_dir):
    async with router_cluster(smollm2_dir, pair(SLOW)) as cluster:
        call = cluster.stub.Generate(request(100, request_id="cancel-me"))
        chunks = [await call.read() for _ in range(3)]
        assert all(c.HasField("chunk") for c in chunks)
        call.cancel()
        prefill, decode = cluster.workers["p0"], cluster.workers["d0"]
        legs = (prefill, decode)
        await eventually(lambda: all(w.calls_of(WorkerMethod.ABORT) for w in legs))
        assert [w.calls_of(WorkerMethod.ABORT) for w in legs] == [["cancel-me"], ["cancel-me"]]
        await assert_quiet(cluster)


async def test_abort_by_id_ends_the_stream_cancelled(smollm2_dir):
    async with router_cluster(smollm2_dir, pair(SLOW)) as cluster:
        call = cluster.stub.Generate(request(100, request_id="abort-me"))
        await call.read()
        reply = await cluster.stub.Abort(pb.AbortRequest(request_id="abort-me"))
        assert reply.found
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            while await call.read() is not grpc.aio.EOF:
                pass
        assert caught.value.code() is grpc.StatusCode.CANCELLED
        assert error_details(caught.value)["ErrorInfo"].metadata["request_id"] == "abort-me"
        assert not (await cluster.stub.Abort(pb.AbortRequest(request_id="abort-me"))).found
        assert cluster.workers["d0"].calls_of(WorkerMethod.ABORT) == ["abort-me"]
        await assert_quiet(cluster)


async def test_client_deadline_ends_with_deadline_exceeded(smollm2_dir):
    async with router_cluster(smollm2_dir, pair(SLOW)) as cluster:
        error = await failure(cluster, request(100), timeout_s=0.4)
        assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        await assert_quiet(cluster)


@pytest.mark.parametrize(
    "message, field",
    [
        (pb.GenerateRequest(), "prompt"),
        (request(prompt=""), "prompt"),
        (request(prompt="x" * (2**20 + 1)), "prompt"),
        (request(max_tokens=0), "sampling.max_tokens"),
        (request(max_tokens=8000, prompt="a " * 500), "sampling.max_tokens"),
        (
            request(chat=pb.ChatInput(messages=[pb.ChatMessage(role="bot")])),
            "chat.messages[0].role",
        ),
        (request(tokens=pb.TokenInput(token_ids=[5, 49152])), "tokens.token_ids"),
        (request(model="gpt-5"), "model"),
        (request(request_id="no spaces please"), "request_id"),
        (
            pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(top_p=float("nan"))),
            "sampling.top_p",
        ),
        (
            pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(temperature=-1)),
            "sampling.temperature",
        ),
        (
            pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(stop=["x"] * 17)),
            "sampling.stop",
        ),
    ],
)
async def test_bad_input_is_rejected_by_field_before_any_worker_call(smollm2_dir, message, field):
    async with router_cluster(smollm2_dir, pair()) as cluster:
        error = await failure(cluster, message)
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        details = error_details(error)
        assert details["ErrorInfo"].metadata["field"] == field
        assert details["BadRequest"].field_violations[0].field == field
        assert_no_generation_calls(cluster)


async def test_invalid_utf8_is_rejected_naming_the_field(smollm2_dir):
    async with router_cluster(smollm2_dir, pair()) as cluster:
        raw = cluster.channel.unary_stream("/pdserve.v1.Generation/Generate")
        call = raw(b"\x1a\x03a\xff\xfe", timeout=10)  # field 3 (prompt): "a" + invalid bytes
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert error_details(caught.value)["ErrorInfo"].metadata["field"] == "prompt"
        assert_no_generation_calls(cluster)


def assert_no_generation_calls(cluster: RouterCluster) -> None:
    for worker in cluster.workers.values():
        assert worker.calls_of(WorkerMethod.PREFILL) == worker.calls_of(WorkerMethod.DECODE) == []


async def test_no_workers_is_unavailable(smollm2_dir):
    async with router_cluster(smollm2_dir, []) as cluster:
        error = await failure(cluster, request())
        assert error.code() is grpc.StatusCode.UNAVAILABLE
        assert error_details(error)["ErrorInfo"].reason == "NO_WORKERS"


async def test_requests_beyond_the_cap_are_refused_with_a_retry_hint(smollm2_dir):
    async with router_cluster(smollm2_dir, pair(SLOW), max_concurrent_requests=1) as cluster:
        call = cluster.stub.Generate(request(100))
        await call.read()  # admitted and streaming
        error = await failure(cluster, request())
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_details(error)["RetryInfo"].retry_delay.ToNanoseconds() == 500_000_000
        call.cancel()
        await assert_quiet(cluster)


async def test_a_duplicate_in_flight_id_is_invalid_argument(smollm2_dir):
    async with router_cluster(smollm2_dir, pair(SLOW)) as cluster:
        call = cluster.stub.Generate(request(100, request_id="twice"))
        await call.read()
        error = await failure(cluster, request(request_id="twice"))
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert error_details(error)["ErrorInfo"].reason == "DUPLICATE_REQUEST_ID"
        assert cluster.workers["p0"].calls_of(WorkerMethod.PREFILL) == ["twice"]
        call.cancel()
        await assert_quiet(cluster)


async def test_decode_worker_lost_mid_stream_is_worker_lost(smollm2_dir):
    async with router_cluster(smollm2_dir, pair(MockBehavior(fail_decode_after=2))) as cluster:
        call = cluster.stub.Generate(request(10))
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for response in call:
                received.append(response)
        assert [r.WhichOneof("kind") for r in received] == ["chunk"] * 3  # token #1 + 2
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        assert error_details(caught.value)["ErrorInfo"].reason == "WORKER_LOST"
        await assert_quiet(cluster)


async def test_decode_failing_before_its_ack_gets_the_lease_released(smollm2_dir):
    async with router_cluster(smollm2_dir, pair(MockBehavior(fail_decode_after=0))) as cluster:
        error = await failure(cluster, request(10))
        assert error.code() is grpc.StatusCode.UNAVAILABLE
        prefill = cluster.workers["p0"]
        assert len(prefill.calls_of(WorkerMethod.RELEASE_LEASE)) == 1  # sent by the router
        await assert_quiet(cluster)


async def test_unreachable_prefill_worker_is_unavailable(smollm2_dir):
    async with router_cluster(smollm2_dir, pair(), stats_poll_period_s=60) as cluster:
        await cluster.workers["p0"].stop()
        error = await failure(cluster, request())
        assert error.code() is grpc.StatusCode.UNAVAILABLE
        assert error_details(error)["ErrorInfo"].reason == "WORKER_UNAVAILABLE"
        assert cluster.workers["d0"].calls_of(WorkerMethod.DECODE) == []
