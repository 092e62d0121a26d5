"""S3 (shared/RELIABILITY.md): two prefill workers SIGKILLed under load.

A real local cluster (3 prefill + 2 decode mock-runner workers, prefill slow enough that
each has a queue); 2,000 requests (300 under `make test`) at concurrency 32, half
shared-prefix. A third and two thirds of the way in, a prefill worker with work is
SIGKILLed (two different ones). Must hold: a request whose prefill leg died before its
handoff is routed again (`max_route_attempts`) and succeeds; a request already handed off
whose KV source died is recomputed on its decode worker (the router's `kv_failure_policy`,
"recompute") and succeeds; so every request ends OK with the reference tokens; the decode
workers (and the surviving prefill worker) hold no page, lease or transfer once quiet, and
the dead ones left no KV segment behind.
"""

from __future__ import annotations

import asyncio

from kv_transfer.pages import Role
from tests.chaos.harness import ChaosSetup, chaos_cluster
from tests.chaos.leaks import scenario_result
from tests.chaos.load import make_workload, run_load
from tests.chaos.report import record, scaled

NUM_REQUESTS = scaled(full=2000, ci=300)
CONCURRENCY = 32
SETUP = ChaosSetup(num_prefill=3, num_decode=2, mock_prefill_s_per_token=0.0005)


def test_s3_prefill_killed_requests_are_retried_and_succeed(ray_cluster, tiny_dir, model_cache_dir):
    with chaos_cluster(SETUP, model_cache_dir) as cluster:
        victims = cluster.worker_ids(Role.PREFILL)[:2]
        actions, verified = cluster.kills_during(victims, NUM_REQUESTS)
        specs = make_workload(NUM_REQUESTS, cluster.vocab_size, cluster.eos_token_ids, seed=3)
        run = asyncio.run(run_load(cluster.address, specs, CONCURRENCY, actions))
        leaks = cluster.quiesce()
    result = scenario_result(
        "S3 prefill killed", run.outcomes, leaks, run.seconds, 2, sum(verified)
    )
    result.extra_failures += [
        f"request {o.index}: {o.status_key} after {len(o.tokens)} tokens" for o in run.failed
    ]
    record(result)
    assert result.failures() == []
