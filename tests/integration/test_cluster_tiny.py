"""A real local cluster (Ray actors, shm KV handoff, gRPC router) on the `tiny` preset.

Disaggregated output == colocated output == HF transformers greedy, token for token, for 16
concurrent requests of mixed lengths at page sizes 1, 16 and 7; and every worker holds no
request page, lease or transfer once the requests are done.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time

import grpc
import pytest

from pdserve import client
from tests.hf_reference import hf_greedy
from tests.integration.cluster_helpers import (
    generate_all,
    greedy_tokens,
    start_cluster,
    token_request,
    wait_until_idle,
)

NUM_REQUESTS = 16
MAX_NEW_TOKENS = 24
# Every prompt over the KV handoff: no decode-side prefill of short prompts.
DISAGGREGATED = {
    "num_prefill": 1,
    "num_decode": 1,
    "num_colocated": 0,
    "conditional_disaggregation": False,
}
COLOCATED = {"num_prefill": 0, "num_decode": 0, "num_colocated": 1}


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    rng = random.Random(7)
    lengths = [5, 9, 16, 17, 31, 33, 48, 64, 65, 100, 127, 128, 129, 200, 255, 300]
    return [[rng.randrange(3, 49152) for _ in range(n)] for n in lengths[:NUM_REQUESTS]]


@pytest.fixture(scope="module")
def hf_tokens(tiny_dir, prompts) -> list[list[int]]:
    return hf_greedy(tiny_dir, prompts, MAX_NEW_TOKENS, ignore_eos=True)


@pytest.fixture(scope="module")
def disaggregated(ray_cluster, model_cache_dir):
    cluster = start_cluster(model="tiny", model_cache_dir=model_cache_dir, **DISAGGREGATED)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def colocated(ray_cluster, model_cache_dir):
    cluster = start_cluster(model="tiny", model_cache_dir=model_cache_dir, **COLOCATED)
    yield cluster
    cluster.stop()


@pytest.fixture(autouse=True)
def idle_after_each_test(request):
    """Whatever a test did, both module clusters end it holding no page, lease or transfer."""
    yield
    for name in ("disaggregated", "colocated"):
        if name in request.fixturenames:
            wait_until_idle(request.getfixturevalue(name))


def greedy_outputs(cluster, prompts: list[list[int]]) -> list[list[int]]:
    return greedy_tokens(cluster.address, prompts, MAX_NEW_TOKENS)


def test_disaggregated_equals_colocated_equals_hf_at_page_16(
    disaggregated, colocated, prompts, hf_tokens
):
    assert greedy_outputs(disaggregated, prompts) == hf_tokens
    assert greedy_outputs(colocated, prompts) == hf_tokens
    wait_until_idle(disaggregated)
    wait_until_idle(colocated)


@pytest.mark.parametrize("page_size", [1, 7])
def test_fidelity_holds_at_other_page_sizes(
    ray_cluster, model_cache_dir, page_size, prompts, hf_tokens
):
    for shape in (DISAGGREGATED, COLOCATED):
        cluster = start_cluster(
            model="tiny", model_cache_dir=model_cache_dir, page_size=page_size, **shape
        )
        try:
            assert greedy_outputs(cluster, prompts) == hf_tokens, shape
            wait_until_idle(cluster)
        finally:
            cluster.stop()


def test_seeded_sampling_is_the_same_disaggregated_and_colocated(disaggregated, colocated, prompts):
    """Token #1 is sampled on the prefill worker, the rest on the decode worker: a seeded
    request must still draw exactly what one colocated engine draws."""
    requests = [
        token_request(p, 16, temperature=0.9, top_p=0.95, seed=1234 + i)
        for i, p in enumerate(prompts[:6])
    ]
    split = [c.token_ids for c in generate_all(disaggregated.address, requests)]
    together = [c.token_ids for c in generate_all(colocated.address, requests)]
    assert split == together
    assert len({tuple(tokens) for tokens in split}) == 6


def test_final_timing_splits_a_handoff_into_transfer_decode_step_and_handover(
    disaggregated, colocated, prompts
):
    request = token_request(prompts[-1], 4, ignore_eos=True)
    [split] = generate_all(disaggregated.address, [request])
    [together] = generate_all(colocated.address, [request])
    timing = split.final.timing
    assert timing.first_token_unix_s <= time.time()
    assert 0 < timing.decode_step_s < timing.e2e_s
    # Token #1 → token #2 spans at least the KV transfer, less nothing else of the step.
    assert timing.kv_transfer_s <= timing.handover_s < timing.e2e_s
    colocated_timing = together.final.timing
    assert (colocated_timing.first_token_unix_s, colocated_timing.handover_s) == (0, 0)


def test_cancelled_stream_leaves_no_pages_behind(disaggregated, prompts):
    channel, stub = client.connect(disaggregated.address)
    responses = stub.Generate(token_request(prompts[-1], 1500, ignore_eos=True))
    received = [next(responses) for _ in range(3)]
    responses.cancel()
    channel.close()
    assert all(r.HasField("chunk") for r in received)
    wait_until_idle(disaggregated)


def test_deadline_exceeded_mid_stream_frees_both_legs(disaggregated, prompts):
    channel, stub = client.connect(disaggregated.address)
    with pytest.raises(grpc.RpcError) as failure:
        client.generate(stub, token_request(prompts[-1], 1500, ignore_eos=True), timeout_s=0.5)
    channel.close()
    assert failure.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until_idle(disaggregated)


def test_prompt_filling_the_context_is_rejected_naming_the_field(disaggregated):
    channel, stub = client.connect(disaggregated.address)
    with pytest.raises(grpc.RpcError) as failure:
        client.generate(stub, token_request([5] * 2048, 8), timeout_s=30)
    channel.close()
    assert failure.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.value.details().startswith("tokens.token_ids:")


def test_cli_generate_streams_text_and_status_reports_idle_workers(disaggregated):
    cli = [sys.executable, "-m", "pdserve.cli"]
    gen = subprocess.run(
        [
            *cli,
            "generate",
            "--prompt",
            "Hello there",
            "--max-tokens",
            "8",
            "--address",
            disaggregated.address,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert gen.returncode == 0, gen.stderr
    assert gen.stdout.strip() and "ttft" in gen.stderr
    wait_until_idle(disaggregated)
    time.sleep(1.5)  # the router refreshes worker stats every second
    status = subprocess.run(
        [*cli, "status", "--json", "--address", disaggregated.address],
        capture_output=True,
        text=True,
        timeout=60,
    )
    workers = json.loads(status.stdout)["workers"]
    assert sorted(w["role"] for w in workers) == ["decode", "prefill"]
    assert all(w.get("requestPages", 0) == 0 and w["integrityOk"] and w["alive"] for w in workers)


def test_cli_generate_failure_prints_the_status_code_and_exits_nonzero(disaggregated):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pdserve.cli",
            "generate",
            "--prompt",
            "hi",
            "--max-tokens",
            "0",
            "--address",
            disaggregated.address,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "INVALID_ARGUMENT" in result.stderr
