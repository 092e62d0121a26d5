"""GPU fidelity (`pytest -m gpu`; skipped without CUDA): a real local cluster whose workers
run on the one GPU (Triton attention, decode graphs, bf16 and float32).

Disaggregated 1P+1D, whose handoff the router sends over cuda_ipc (same node, both caches on
CUDA: kv_transfer/topology.py), gives the colocated worker's greedy tokens, token for token,
for 16 concurrent requests of mixed lengths; in float32 both equal HF transformers' greedy
tokens too. Every transfer is counted on cuda_ipc, and no page, lease or transfer is left.
"""

from __future__ import annotations

import pytest
import torch

from tests.hf_reference import hf_greedy
from tests.integration.cluster_helpers import (
    greedy_tokens,
    mixed_prompts,
    start_cluster,
    wait_until_idle,
    worker_stats,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
MAX_NEW_TOKENS = 24
SHAPES = {
    "disaggregated": {"num_prefill": 1, "num_decode": 1, "conditional_disaggregation": False},
    "colocated": {"num_prefill": 0, "num_decode": 0, "num_colocated": 1},
}


def greedy(shape: str, dtype: str, model_cache_dir, prompts: list[list[int]]):
    """The shape's greedy tokens for `prompts`, and its workers' stats after them."""
    cluster = start_cluster(
        model="tiny", model_cache_dir=model_cache_dir, dtype=dtype, device="cuda", **SHAPES[shape]
    )
    try:
        tokens = greedy_tokens(cluster.address, prompts, MAX_NEW_TOKENS)
        wait_until_idle(cluster)
        return tokens, worker_stats(cluster)
    finally:
        cluster.stop()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gpu_disaggregated_equals_colocated(ray_cluster, model_cache_dir, tiny_dir, dtype):
    prompts = mixed_prompts(3) + mixed_prompts(4)
    split, stats = greedy("disaggregated", dtype, model_cache_dir, prompts)
    together, _ = greedy("colocated", dtype, model_cache_dir, prompts)
    assert split == together
    fetches = {backend: n for s in stats.values() for backend, n in s.kv_fetches.items()}
    assert fetches == {"cuda_ipc": len(prompts)}
    if dtype == "float32":
        assert split == hf_greedy(tiny_dir, prompts, MAX_NEW_TOKENS, ignore_eos=True)
