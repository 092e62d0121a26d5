"""`kv_failure_policy`: a decode leg that cannot use the handed-off KV, or fails before its
first decode token, is recomputed on a decode worker (default) or fails with a typed reason."""

from __future__ import annotations

import grpc
import pytest

from kv_transfer.pages import Role
from pdserve.v1 import generation_pb2 as pb
from pdserve.worker_errors import WorkerReason
from tests.doubles.mock_worker import MockBehavior, MockWorker, WorkerMethod
from tests.doubles.router_cluster import error_details, router_cluster
from tests.integration.test_router_mock_workers_faults import assert_quiet, failure, request


def cluster_workers(d0: MockBehavior, d1: MockBehavior | None = None) -> list[MockWorker]:
    workers = [MockWorker("p0", Role.PREFILL), MockWorker("d0", Role.DECODE, d0)]
    if d1 is not None:
        workers.append(MockWorker("d1", Role.DECODE, d1))
    return workers


def recomputes(cluster, reason: str) -> float | None:
    registry = cluster.router.metrics.registry
    return registry.get_sample_value("pdserve_request_recomputes_total", {"reason": reason})


def tokens(responses: list[pb.GenerateResponse]) -> list[int]:
    return [t for r in responses if r.HasField("chunk") for t in r.chunk.token_ids]


@pytest.mark.parametrize("reason", [WorkerReason.KV_TRANSFER_FAILED, WorkerReason.KV_LEASE_EXPIRED])
async def test_unusable_kv_is_recomputed_on_the_same_decode_worker(smollm2_dir, reason):
    async with router_cluster(smollm2_dir, cluster_workers(MockBehavior(kv_failure=reason))) as c:
        responses = await c.generate(request(6))
        final = responses[-1].final
        assert final.decode_worker_id == "d0"
        assert len(tokens(responses)) == 6 and final.usage.completion_tokens == 6
        decodes = c.workers["d0"].calls_of(WorkerMethod.DECODE)
        assert len(decodes) == 2  # the handed-off leg, then the recompute
        assert recomputes(c, reason.value) == 1
        await assert_quiet(c)


async def test_a_decode_worker_failing_before_its_first_token_is_replaced(smollm2_dir):
    workers = cluster_workers(MockBehavior(fail_decode_after=0), MockBehavior())
    async with router_cluster(smollm2_dir, workers, routing_policy="round_robin") as c:
        for _ in range(4):  # round robin sends some to d0
            responses = await c.generate(request(5))
            assert responses[-1].final.decode_worker_id == "d1"
            assert len(tokens(responses)) == 5
        assert recomputes(c, "WORKER_LOST") >= 1
        await assert_quiet(c)


async def test_with_policy_fail_the_client_gets_the_reason_and_the_worker(smollm2_dir):
    d0 = MockBehavior(kv_failure=WorkerReason.KV_LEASE_EXPIRED)
    async with router_cluster(smollm2_dir, cluster_workers(d0), kv_failure_policy="fail") as c:
        error = await failure(c, request(6))
        assert error.code() is grpc.StatusCode.UNAVAILABLE
        info = error_details(error)["ErrorInfo"]
        assert info.reason == "KV_LEASE_EXPIRED"
        assert info.metadata["worker_id"] == "d0" and info.metadata["request_id"]
        assert recomputes(c, "KV_LEASE_EXPIRED") is None
        await assert_quiet(c)


async def test_a_lost_decode_worker_is_named_in_the_error(smollm2_dir):
    async with router_cluster(smollm2_dir, cluster_workers(MockBehavior(fail_decode_after=2))) as c:
        error = await failure(c, request(10))
        info = error_details(error)["ErrorInfo"]
        assert (info.reason, info.metadata["worker_id"]) == ("WORKER_LOST", "d0")
        await assert_quiet(c)


@pytest.mark.parametrize("policy", ["fail", "recompute"])
async def test_a_full_decode_worker_after_token_1_is_lost_not_retry_later(smollm2_dir, policy):
    full = MockBehavior(num_pages=1)  # no room for any handed-off request
    async with router_cluster(smollm2_dir, cluster_workers(full), kv_failure_policy=policy) as c:
        error = await failure(c, request(6))
        info = error_details(error)["ErrorInfo"]
        assert error.code() is grpc.StatusCode.UNAVAILABLE  # the client already has token #1
        assert (info.reason, info.metadata["worker_id"]) == ("WORKER_LOST", "d0")
        await assert_quiet(c)
