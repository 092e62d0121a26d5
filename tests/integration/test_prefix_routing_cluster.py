"""Prefix-aware routing on a real cluster (`tiny` preset, 2 prefill + 1 decode, shm).

The workers' page pools feed the router's index through WatchPageEvents; a prompt sharing a
long prefix with an earlier one goes to the prefill worker that computed it, reuses its pages
(cached tokens reported), and still equals HF transformers' greedy output. The router and
every worker serve Prometheus /metrics, scraped over HTTP here.
"""

from __future__ import annotations

import random
import time
import urllib.request

import pytest

from kv_transfer.pages import page_hashes
from pdserve import client
from pdserve.v1 import generation_pb2
from tests.hf_reference import hf_greedy
from tests.integration.cluster_helpers import (
    generate_all,
    start_cluster,
    token_request,
    wait_until_idle,
)

PAGE_SIZE = 16
PREFIX_PAGES = 12
MAX_NEW_TOKENS = 8


@pytest.fixture(scope="module")
def cluster(ray_cluster, model_cache_dir):
    cluster = start_cluster(
        model="tiny",
        model_cache_dir=model_cache_dir,
        num_prefill=2,
        num_decode=1,
        page_size=PAGE_SIZE,
        metrics_port=0,
        worker_metrics=True,
    )
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    rng = random.Random(11)
    prefix = [rng.randrange(3, 49152) for _ in range(PREFIX_PAGES * PAGE_SIZE)]
    return [prefix + [rng.randrange(3, 49152) for _ in range(40)] for _ in range(3)]


def index_lookup(cluster, prompt: list[int]) -> dict[str, int]:
    router = cluster.cluster.router
    return cluster._run(router.index.lookup(page_hashes(prompt, PAGE_SIZE)), 10)


def wait_for_index(cluster, prompt: list[int], worker_id: str, pages: int) -> None:
    deadline = time.monotonic() + 10
    while index_lookup(cluster, prompt).get(worker_id, 0) < pages:
        assert time.monotonic() < deadline, index_lookup(cluster, prompt)
        time.sleep(0.05)


def test_a_shared_prefix_goes_to_the_worker_holding_it(cluster, prompts, tiny_dir):
    (first,) = generate_all(
        cluster.address, [token_request(prompts[0], MAX_NEW_TOKENS, ignore_eos=True)]
    )
    holder = first.final.prefill_worker_id
    assert holder.startswith("prefill-")
    wait_for_index(cluster, prompts[1], holder, PREFIX_PAGES)

    later = generate_all(
        cluster.address, [token_request(p, MAX_NEW_TOKENS, ignore_eos=True) for p in prompts[1:]]
    )
    assert [c.final.prefill_worker_id for c in later] == [holder, holder]
    assert all(c.final.usage.cached_prompt_tokens >= PREFIX_PAGES * PAGE_SIZE for c in later)
    expected = hf_greedy(tiny_dir, prompts, MAX_NEW_TOKENS, ignore_eos=True)
    assert [c.token_ids for c in [first, *later]] == expected
    wait_until_idle(cluster)

    metrics = scrape(cluster.cluster.router.metrics_port)
    assert 'pdserve_routing_decisions_total{reason="prefix_hit"} 2.0' in metrics
    hits = _sample(metrics, "pdserve_prefix_cache_hits_total")
    assert hits >= 2 * PREFIX_PAGES * PAGE_SIZE


def test_every_worker_serves_its_metrics(cluster, prompts):
    generate_all(cluster.address, [token_request(prompts[0], MAX_NEW_TOKENS, ignore_eos=True)])
    wait_until_idle(cluster)
    channel, stub = client.connect(cluster.address)
    with channel:
        info = stub.GetServerInfo(generation_pb2.GetServerInfoRequest(), timeout=10)
    assert {w.worker_id for w in info.workers} == {"prefill-0", "prefill-1", "decode-0"}
    exported = fetched = 0.0
    for worker in info.workers:
        assert worker.metrics_port > 0
        text = scrape(worker.metrics_port)
        labels = f'role="{worker.role}",worker_id="{worker.worker_id}"'
        assert f"pdserve_kv_pages_total{{{labels}}} " in text
        assert f"pdserve_leases_outstanding{{{labels}}} 0.0" in text
        exported += _labelled(
            text, 'pdserve_kv_transfer_bytes_total{backend="shm",direction="export"}'
        )
        fetched += _labelled(
            text, 'pdserve_kv_transfer_bytes_total{backend="shm",direction="fetch"}'
        )
    assert exported == fetched > 0


def scrape(port: int) -> str:
    assert port > 0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def _labelled(text: str, series: str) -> float:
    lines = [line for line in text.splitlines() if line.startswith(series + " ")]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_the_index_forgets_a_worker_that_is_removed(cluster, prompts):
    holders = index_lookup(cluster, prompts[0])
    assert holders, "the first test left pages cached"
    router = cluster.cluster.router
    victim = sorted(holders)[0]
    record = cluster._run(router.registry.get(victim), 10)
    cluster._run(router.remove_worker(victim), 10)
    assert victim not in index_lookup(cluster, prompts[0])
    cluster._run(router.add_worker(record.address), 10)  # back for other tests


def _sample(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.split()[-1])
