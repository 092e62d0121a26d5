"""Live scaling of a real local cluster (`tiny`, shm) through pdserve.v1.Cluster/Scale.

Under steady load (4 clients looping greedy requests of mixed prompt and output lengths)
and one long stream per (prefill, decode) pair, 2 prefill + 2 decode shrink to 1 + 1 — the
newest of each pool is drained, then stopped — and grow back to 2 + 1 with a fresh id.
Routing is round-robin with every request disaggregated, so each worker serves its share (a
repeated prompt would otherwise stay on the decode worker holding it). No request fails,
every output equals HF greedy, the long stream on the leaving pair outlives the start of
its drain, the removed actors are dead, the router lists exactly the workers left, and those
hold nothing once idle. A Scale while one runs is ABORTED, and bad targets are refused
naming the field — those stay here, on the same module cluster, so no second cluster starts.
The refusals that need no cluster are in `test_scale_refusals.py`.
"""

from __future__ import annotations

import random
import time

import grpc
import pytest

from pdserve import client
from pdserve.v1 import cluster_pb2, cluster_pb2_grpc
from tests.hf_reference import hf_greedy
from tests.integration.cluster_helpers import start_cluster, wait_until_idle
from tests.integration.scale_helpers import (
    LONG_OUTPUT,
    LONG_STREAM_OUTPUT,
    NUM_PROMPTS,
    SHORT_OUTPUT,
    SteadyLoad,
    assert_dead,
    max_tokens,
    server_workers,
    start_long_streams,
    wait_for_tokens,
    wait_until_draining,
)


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    """Distinct prompts of 8 to 160 tokens."""
    rng = random.Random(5)
    return [
        [rng.randrange(3, 49152) for _ in range(rng.randrange(8, 160))]
        for _ in range(NUM_PROMPTS + 2)
    ]


@pytest.fixture(scope="module")
def expected(tiny_dir, prompts) -> dict[int, list[int]]:
    """HF greedy output of each prompt index."""
    outputs = {}
    for num_tokens in (SHORT_OUTPUT, LONG_OUTPUT, LONG_STREAM_OUTPUT):
        indices = [i for i in range(len(prompts)) if max_tokens(i) == num_tokens]
        tokens = hf_greedy(tiny_dir, [prompts[i] for i in indices], num_tokens, ignore_eos=True)
        outputs |= dict(zip(indices, tokens, strict=True))
    return outputs


@pytest.fixture(scope="module")
def cluster(ray_cluster, model_cache_dir):
    cluster = start_cluster(
        model="tiny",
        model_cache_dir=model_cache_dir,
        num_prefill=2,
        num_decode=2,
        drain_quiet_s=0.5,
        drain_timeout_s=30.0,
        routing_policy="round_robin",
        conditional_disaggregation=False,
    )
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_stub(cluster):
    channel = grpc.insecure_channel(cluster.address)
    yield cluster_pb2_grpc.ClusterStub(channel)
    channel.close()


def test_scale_down_and_up_under_load_loses_no_request(cluster, cluster_stub, prompts, expected):
    leaving = {wid: cluster.cluster.workers[wid].actor for wid in ("prefill-1", "decode-1")}
    channel, stub = client.connect(cluster.address)
    long_streams = start_long_streams(stub, prompts)
    load = SteadyLoad(cluster.address, prompts[:NUM_PROMPTS]).start()
    try:
        # Well under way, far from done: shrinking must wait for the one on the leaving pair.
        wait_for_tokens(long_streams, LONG_STREAM_OUTPUT // 8)
        load.wait_for(1)
        shrink_started_s = time.monotonic()
        shrinking = cluster_stub.Scale.future(
            cluster_pb2.ScaleRequest(num_prefill=1, num_decode=1), timeout=120
        )
        wait_until_draining(cluster)
        with pytest.raises(grpc.RpcError) as busy:
            cluster_stub.Scale(cluster_pb2.ScaleRequest(num_prefill=2), timeout=30)
        shrunk = shrinking.result()
        load.wait_for(8)
        grown = cluster_stub.Scale(cluster_pb2.ScaleRequest(num_prefill=2), timeout=120)
        num_before_growth = load.num_done
        load.wait_for(8)
    finally:
        load.stop()
    long_served = {served.route: served for served in (s.result() for s in long_streams)}
    channel.close()

    assert busy.value.code() is grpc.StatusCode.ABORTED
    assert (list(shrunk.added), sorted(r.worker_id for r in shrunk.removed)) == (
        [],
        ["decode-1", "prefill-1"],
    )
    assert all(r.drained for r in shrunk.removed), shrunk.removed
    assert list(grown.added) == ["prefill-2"] and not grown.removed
    assert (grown.pools.num_prefill, grown.pools.num_decode, grown.pools.num_colocated) == (2, 1, 0)
    assert list(grown.pools.worker_ids) == ["prefill-0", "decode-0", "prefill-2"]

    assert load.failures == []
    wrong = [
        s for s in [*load.outputs, *long_served.values()] if s.token_ids != expected[s.prompt_index]
    ]
    assert not wrong, wrong
    assert sorted(long_served) == [("prefill-0", "decode-0"), ("prefill-1", "decode-1")]
    # It was running when its workers began draining: the drain waited for it.
    assert long_served["prefill-1", "decode-1"].finished_s > shrink_started_s
    routes_before = {served.route for served in load.outputs[:8]}
    assert {("prefill-0", "decode-0"), ("prefill-1", "decode-1")} <= routes_before, routes_before
    assert any(served.route[0] == "prefill-2" for served in load.outputs[num_before_growth:])
    for actor in leaving.values():
        assert_dead(actor)
    workers = server_workers(cluster)
    assert sorted(w.worker_id for w in workers) == ["decode-0", "prefill-0", "prefill-2"]
    assert all(w.alive and not w.draining for w in workers)
    assert sorted(wait_until_idle(cluster)) == ["decode-0", "prefill-0", "prefill-2"]


@pytest.mark.parametrize(
    "request_fields, field",
    [
        ({"num_prefill": -1}, "num_prefill"),
        ({"num_decode": 0}, "num_decode"),
        ({"num_prefill": 0, "num_decode": 0}, "num_prefill/num_decode"),
        ({"num_colocated": -2, "num_prefill": 1}, "num_colocated"),
    ],
)
def test_scale_to_bad_sizes_is_invalid_argument_naming_the_field(
    cluster, cluster_stub, request_fields, field
):
    before = cluster_stub.GetPools(cluster_pb2.GetPoolsRequest(), timeout=10)
    with pytest.raises(grpc.RpcError) as failure:
        cluster_stub.Scale(cluster_pb2.ScaleRequest(**request_fields), timeout=30)
    assert failure.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.value.details().startswith(f"{field}:"), failure.value.details()
    assert cluster_stub.GetPools(cluster_pb2.GetPoolsRequest(), timeout=10) == before
