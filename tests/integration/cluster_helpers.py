"""Starting real local clusters in tests and checking they hold nothing once idle."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc

from pdserve import client
from pdserve.config import ClusterConfig
from pdserve.launch import BackgroundCluster
from pdserve.v1 import generation_pb2, worker_pb2, worker_pb2_grpc


def start_cluster(**overrides) -> BackgroundCluster:
    # On cpu unless a test asks for cuda: a GPU box checks what CI checks (with device auto its
    # workers would hold cuda_ipc too, and pairs would move KV over it instead of shm).
    settings = {"port": 0, "dtype": "float32", "kv_cache_mib": 64, "device": "cpu"} | overrides
    return BackgroundCluster(ClusterConfig(**settings)).start()


MIXED_PROMPT_LENS = (5, 16, 17, 40, 64, 100, 129, 250)  # within, at and across page bounds


def mixed_prompts(seed: int) -> list[list[int]]:
    """One seeded random prompt of each of MIXED_PROMPT_LENS tokens."""
    rng = random.Random(seed)
    return [[rng.randrange(3, 49152) for _ in range(n)] for n in MIXED_PROMPT_LENS]


def token_request(
    prompt: Sequence[int], max_tokens: int, **sampling
) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        tokens=generation_pb2.TokenInput(token_ids=list(prompt)),
        sampling=generation_pb2.SamplingParams(max_tokens=max_tokens, **sampling),
    )


def generate_all(
    address: str, requests: Sequence[generation_pb2.GenerateRequest]
) -> list[client.Completion]:
    """Sends every request at once (the cluster batches them) and returns in order."""
    channel, stub = client.connect(address)
    try:
        with ThreadPoolExecutor(max_workers=len(requests)) as pool:
            return list(pool.map(lambda request: client.generate(stub, request, 300), requests))
    finally:
        channel.close()


def greedy_tokens(address: str, prompts: Sequence[list[int]], max_tokens: int) -> list[list[int]]:
    """Each prompt's greedy tokens (exactly max_tokens, EOS ignored), all sent at once."""
    requests = [token_request(p, max_tokens, temperature=0.0, ignore_eos=True) for p in prompts]
    return [completion.token_ids for completion in generate_all(address, requests)]


def worker_stats(cluster: BackgroundCluster) -> dict[str, worker_pb2.WorkerStats]:
    stats = {}
    for worker_id, handle in cluster.cluster.workers.items():
        with grpc.insecure_channel(handle.identity.address) as channel:
            stub = worker_pb2_grpc.WorkerStub(channel)
            stats[worker_id] = stub.GetStats(worker_pb2.GetStatsRequest(), timeout=10)
    return stats


def wait_until_idle(
    cluster: BackgroundCluster, timeout_s: float = 15.0
) -> dict[str, worker_pb2.WorkerStats]:
    """Every worker: integrity holds, no request or lease holds a page, no transfer runs."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = worker_stats(cluster)
        busy = {worker_id: s.info for worker_id, s in stats.items() if not _is_idle(s.info)}
        if not busy:
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"workers not idle after {timeout_s} s: {busy}")
        time.sleep(0.1)


def _is_idle(info: generation_pb2.WorkerInfo) -> bool:
    return (
        info.integrity_ok
        and info.request_pages == 0
        and info.leases_outstanding == 0
        and info.transfers_in_flight == 0
        and info.queue_len == 0
        and info.running == 0
    )
