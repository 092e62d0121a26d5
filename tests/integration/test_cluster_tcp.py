"""A real local cluster with `transport=tcp` on the `tiny` preset: no KV group is formed; each
prefill worker serves its exports on a TCP port of its own, the router names tcp for every
pair, and the decode worker pulls the pages over a stream — the path Kubernetes pods take.

8 concurrent greedy requests of mixed lengths equal HF transformers greedy token for token;
the workers' own transfer counts show every handoff went over tcp and none over shm. Unlike a
gloo cluster a tcp one grows: a prefill worker added by Scale serves handoffs over tcp too,
still equal to HF. Every worker is idle afterwards.
"""

from __future__ import annotations

import grpc
import pytest

from pdserve.v1 import cluster_pb2, cluster_pb2_grpc
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
    return mixed_prompts(13)


@pytest.fixture(scope="module")
def expected(tiny_dir, prompts) -> list[list[int]]:
    return hf_greedy(tiny_dir, prompts, MAX_NEW_TOKENS, ignore_eos=True)


@pytest.fixture(scope="module")
def tcp_cluster(ray_cluster, model_cache_dir):
    cluster = start_cluster(
        model="tiny",
        model_cache_dir=model_cache_dir,
        transport="tcp",
        num_prefill=1,
        num_decode=1,
        routing_policy="round_robin",
        conditional_disaggregation=False,  # every prompt over the KV handoff
    )
    yield cluster
    cluster.stop()


def greedy(cluster, prompts) -> list[list[int]]:
    return greedy_tokens(cluster.address, prompts, MAX_NEW_TOKENS)


def test_greedy_over_tcp_equals_hf_and_every_handoff_went_over_tcp(tcp_cluster, prompts, expected):
    assert greedy(tcp_cluster, prompts) == expected
    stats = wait_until_idle(tcp_cluster)
    prefill, decode = stats["prefill-0"], stats["decode-0"]
    assert list(prefill.kv_backends) == list(decode.kv_backends) == ["shm", "tcp"]
    assert (dict(prefill.kv_exports), dict(prefill.kv_fetches)) == ({"tcp": 8}, {})
    assert (dict(decode.kv_exports), dict(decode.kv_fetches)) == ({}, {"tcp": 8})


def test_a_tcp_cluster_grows_and_the_new_prefill_worker_hands_off_over_tcp(
    tcp_cluster, prompts, expected
):
    with grpc.insecure_channel(tcp_cluster.address) as channel:
        stub = cluster_pb2_grpc.ClusterStub(channel)
        grown = stub.Scale(cluster_pb2.ScaleRequest(num_prefill=2), timeout=120)
    assert list(grown.added) == ["prefill-1"]
    before = wait_until_idle(tcp_cluster)["decode-0"].kv_fetches["tcp"]
    assert greedy(tcp_cluster, prompts) == expected
    stats = wait_until_idle(tcp_cluster)
    assert stats["decode-0"].kv_fetches["tcp"] - before == len(prompts)
    assert stats["prefill-1"].kv_exports["tcp"] > 0  # round robin: both prefills served
