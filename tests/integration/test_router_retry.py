"""Retry before the first token: a worker that is down or full before the client saw a token
is left out and the request routed again (bounded); after token #1 a failure is final."""

from __future__ import annotations

import grpc
import pytest

from kv_transfer.pages import Role
from pdserve.v1 import generation_pb2 as pb
from tests.doubles.mock_worker import MockBehavior, MockWorker, WorkerMethod
from tests.doubles.router_cluster import error_details, router_cluster

NEVER_POLL = {"stats_poll_period_s": 60}  # the router does not learn of the failure by polling


def request(i: int, max_tokens: int = 4) -> pb.GenerateRequest:
    tokens = pb.TokenInput(token_ids=[100 + i, *range(200, 240)])
    return pb.GenerateRequest(tokens=tokens, sampling=pb.SamplingParams(max_tokens=max_tokens))


def retries(cluster) -> float:
    text = cluster.router.metrics.render()[0].decode()
    line = next(x for x in text.splitlines() if x.startswith("pdserve_request_retries_total "))
    return float(line.split()[-1])


async def test_requests_routed_to_a_dead_prefill_worker_succeed_on_another(smollm2_dir):
    workers = [MockWorker(w, Role.PREFILL) for w in ("p0", "p1")] + [MockWorker("d0", Role.DECODE)]
    async with router_cluster(smollm2_dir, workers, **NEVER_POLL) as cluster:
        await cluster.workers["p0"].stop()
        finals = [(await cluster.generate(request(i)))[-1].final for i in range(8)]
        assert {f.prefill_worker_id for f in finals} == {"p1"}
        assert all(f.usage.completion_tokens == 4 for f in finals)
        assert retries(cluster) >= 1  # some prompts' first choice was p0
        for worker_id in ("p1", "d0"):
            cluster.workers[worker_id].check_idle()


async def test_a_colocated_worker_failing_before_token_one_is_routed_around(smollm2_dir):
    workers = [MockWorker("b0", Role.BOTH), MockWorker("b1", Role.BOTH)]
    async with router_cluster(
        smollm2_dir, workers, colocate_threshold_tokens=64, **NEVER_POLL
    ) as cluster:
        await cluster.workers["b0"].stop()  # b0 is the tie-break's first choice
        final = (await cluster.generate(request(0)))[-1].final
        assert final.decode_worker_id == "b1"
        assert retries(cluster) == 1


async def test_with_nowhere_else_to_go_the_failure_stands(smollm2_dir):
    workers = [MockWorker("p0", Role.PREFILL), MockWorker("d0", Role.DECODE)]
    async with router_cluster(smollm2_dir, workers, **NEVER_POLL) as cluster:
        await cluster.workers["p0"].stop()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await cluster.generate(request(0))
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        assert error_details(caught.value)["ErrorInfo"].reason == "WORKER_UNAVAILABLE"
        assert cluster.workers["d0"].calls_of(WorkerMethod.DECODE) == []


async def test_a_failure_after_token_one_is_not_retried(smollm2_dir):
    failing = MockBehavior(fail_decode_after=2)
    workers = [
        MockWorker("p0", Role.PREFILL),
        MockWorker("d0", Role.DECODE, failing),
        MockWorker("d1", Role.DECODE),
    ]
    async with router_cluster(smollm2_dir, workers, **NEVER_POLL) as cluster:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await cluster.generate(request(0, max_tokens=8))
        assert error_details(caught.value)["ErrorInfo"].reason == "WORKER_LOST"
        assert cluster.workers["d1"].calls_of(WorkerMethod.DECODE) == []
        assert retries(cluster) == 0
