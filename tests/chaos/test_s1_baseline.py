"""S1 (shared/RELIABILITY.md): baseline, no fault.

A real local cluster (2 prefill + 2 decode mock-runner workers as Ray actors, shm KV
transfer, the router in-process); 2,000 requests (300 under `make test`) at concurrency 32,
half of them extending one of 8 shared prefixes. Must hold: every request ends OK with
exactly the mock runner's reference tokens (so every handoff moved the right KV into the
right pages), and once quiet no worker holds a request page, a lease or a transfer.
"""

from __future__ import annotations

import asyncio

from tests.chaos.harness import ChaosSetup, chaos_cluster
from tests.chaos.leaks import scenario_result
from tests.chaos.load import make_workload, run_load
from tests.chaos.report import record, scaled

NUM_REQUESTS = scaled(full=2000, ci=300)
CONCURRENCY = 32


def test_s1_baseline_all_ok_exact_and_nothing_leaks(ray_cluster, tiny_dir, model_cache_dir):
    with chaos_cluster(ChaosSetup(), model_cache_dir) as cluster:
        specs = make_workload(NUM_REQUESTS, cluster.vocab_size, cluster.eos_token_ids, seed=1)
        run = asyncio.run(run_load(cluster.address, specs, CONCURRENCY))
        leaks = cluster.quiesce()
    result = scenario_result("S1 baseline", run.outcomes, leaks, run.seconds)
    if result.ok != NUM_REQUESTS:
        result.extra_failures.append(f"{NUM_REQUESTS - result.ok} requests not OK")
    record(result)
    assert result.failures() == []
