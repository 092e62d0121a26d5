"""A real local cluster with `transport=gloo` on the `tiny` preset: both workers join one gloo
KV group, the router names gloo for the pair, the prefill worker exports through it, and the
decode worker pulls over it (SendKV to the source, then a tagged gloo receive).

8 concurrent greedy requests of mixed lengths equal HF transformers greedy token for token; the
workers' own transfer counts show every handoff went over gloo and none over shm; every worker
is idle afterwards. SendKV and Prefill refuse what the worker cannot serve, by status.
"""

from __future__ import annotations

import grpc
import pytest

from pdserve.v1 import worker_pb2, worker_pb2_grpc
from pdserve.worker_errors import WorkerReason, failure_reason
from tests.hf_reference import hf_greedy
from tests.integration.cluster_helpers import (
    greedy_tokens,
    mixed_prompts,
    start_cluster,
    wait_until_idle,
)

MAX_NEW_TOKENS = 16


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    return mixed_prompts(11)


@pytest.fixture(scope="module")
def gloo_cluster(ray_cluster, model_cache_dir):
    cluster = start_cluster(
        model="tiny",
        model_cache_dir=model_cache_dir,
        transport="gloo",
        num_prefill=1,
        num_decode=1,
        conditional_disaggregation=False,  # every prompt over the KV handoff
    )
    yield cluster
    cluster.stop()


def worker_stub(cluster, worker_id: str) -> tuple[grpc.Channel, worker_pb2_grpc.WorkerStub]:
    channel = grpc.insecure_channel(cluster.cluster.workers[worker_id].identity.address)
    return channel, worker_pb2_grpc.WorkerStub(channel)


def test_greedy_over_gloo_equals_hf_and_every_handoff_went_over_gloo(
    gloo_cluster, prompts, tiny_dir
):
    outputs = greedy_tokens(gloo_cluster.address, prompts, MAX_NEW_TOKENS)
    assert outputs == hf_greedy(tiny_dir, prompts, MAX_NEW_TOKENS, ignore_eos=True)
    stats = wait_until_idle(gloo_cluster)
    prefill, decode = stats["prefill-0"], stats["decode-0"]
    assert list(prefill.kv_backends) == list(decode.kv_backends) == ["shm", "gloo"]
    assert (dict(prefill.kv_exports), dict(prefill.kv_fetches)) == ({"gloo": 8}, {})
    assert (dict(decode.kv_exports), dict(decode.kv_fetches)) == ({}, {"gloo": 8})


@pytest.mark.parametrize(
    "backend, code",
    [
        ("gloo", grpc.StatusCode.NOT_FOUND),  # no such transfer (or already released)
        ("shm", grpc.StatusCode.FAILED_PRECONDITION),  # shm is not pulled by rank
        ("carrier-pigeon", grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_send_kv_refuses_what_the_source_cannot_send(gloo_cluster, backend, code):
    channel, stub = worker_stub(gloo_cluster, "prefill-0")
    request = worker_pb2.SendKVRequest(transfer_id="prefill-0-unknown", backend=backend, dst_rank=1)
    with channel, pytest.raises(grpc.RpcError) as refused:
        stub.SendKV(request, timeout=10)
    assert refused.value.code() is code


def test_prefill_through_a_backend_the_worker_lacks_fails_before_any_work(gloo_cluster):
    channel, stub = worker_stub(gloo_cluster, "prefill-0")
    request = worker_pb2.PrefillRequest(
        request_id="no-nccl",
        prompt_token_ids=[5, 6, 7],
        sampling=worker_pb2.WorkerSampling(max_tokens=4),
        kv_backend="nccl",
    )
    with channel, pytest.raises(grpc.RpcError) as refused:
        stub.Prefill(request, timeout=10)
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert failure_reason(refused.value) is WorkerReason.KV_BACKEND_UNAVAILABLE
    wait_until_idle(gloo_cluster)
