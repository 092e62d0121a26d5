"""S2 (shared/RELIABILITY.md): two decode workers SIGKILLed mid-stream.

A real local cluster (2 prefill + 3 decode mock-runner workers); 2,000 requests (300 under
`make test`) at concurrency 32, half shared-prefix. A third and two thirds of the way in, a
decode worker that is streaming at that moment is SIGKILLed (two different ones). Must hold:
every request ends with a status; the only failures are streams on a killed worker, ended
`UNAVAILABLE` (WORKER_LOST, its ErrorInfo naming that worker) after delivering
a prefix of the reference tokens; every other request is OK and exact; the surviving
workers hold nothing once quiet, and the dead ones left no KV segment behind.
"""

from __future__ import annotations

import asyncio

from kv_transfer.pages import Role
from tests.chaos.harness import ChaosCluster, ChaosSetup, chaos_cluster
from tests.chaos.leaks import scenario_result
from tests.chaos.load import Outcome, make_workload, run_load
from tests.chaos.report import record, scaled

NUM_REQUESTS = scaled(full=2000, ci=300)
CONCURRENCY = 32
SETUP = ChaosSetup(num_prefill=2, num_decode=3)


def test_s2_decode_killed_mid_stream_fails_only_its_streams(ray_cluster, tiny_dir, model_cache_dir):
    with chaos_cluster(SETUP, model_cache_dir) as cluster:
        victims = cluster.worker_ids(Role.DECODE)[:2]
        actions, verified = cluster.kills_during(victims, NUM_REQUESTS)
        specs = make_workload(NUM_REQUESTS, cluster.vocab_size, cluster.eos_token_ids, seed=2)
        run = asyncio.run(run_load(cluster.address, specs, CONCURRENCY, actions))
        leaks = cluster.quiesce()
        result = scenario_result(
            "S2 decode killed", run.outcomes, leaks, run.seconds, 2, sum(verified)
        )
        result.extra_failures += failures_off_the_killed_workers(cluster, run.failed)
    record(result)
    assert result.failures() == []


def failures_off_the_killed_workers(cluster: ChaosCluster, failed: list[Outcome]) -> list[str]:
    """Each failure must be a stream on a killed worker, cut short after a correct prefix."""
    broken = []
    for o in failed:
        named = o.metadata.get("worker_id")
        if o.code != "UNAVAILABLE" or o.reason != "WORKER_LOST" or not o.matches_reference:
            broken.append(f"request {o.index}: {o.status_key}, exact prefix {o.matches_reference}")
        elif named not in cluster.killed:
            broken.append(f"request {o.index} failed on {named!r}, which was not killed")
    return broken
