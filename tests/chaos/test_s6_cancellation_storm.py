"""S6 (shared/RELIABILITY.md): a cancellation storm.

A real local cluster (2 prefill + 2 decode mock-runner workers); 1,000 requests (300 under
`make test`) at concurrency 32; the client cancels 20 % of them at random points of two
kinds: 10 % while the prompt is being prefilled (a timed cancel 15–35 ms after sending a
prompt whose prefill alone takes ≥ 50 ms), 10 % while decoding (after 2 … max_tokens/2
tokens were received). Must hold: the router counts the cancellations by the lifecycle phase
they came in (`pdserve_request_cancellations_total{phase}`) exactly as injected — the first
kind in the phases before token #1 (or not at all, when the cancel overtook the request and
the router never started the call: those are the requests missing from its
`pdserve_requests_total`), the second in `decoding` —, every other request is OK
and exact, and the cancelled requests leave nothing behind on any worker (the cancel reached
every leg; a handed-off lease was released).
"""

from __future__ import annotations

import asyncio
import random

from router.lifecycle import Phase
from tests.chaos.harness import ChaosCluster, ChaosSetup, chaos_cluster
from tests.chaos.leaks import scenario_result
from tests.chaos.load import LoadRun, RequestSpec, make_workload, run_load
from tests.chaos.report import record, scaled

NUM_REQUESTS = scaled(full=1000, ci=300)
CONCURRENCY = 32
# A unique prompt (≥ 52 tokens) takes ≥ 52 ms to prefill: a cancel at 15–35 ms comes first.
SETUP = ChaosSetup(mock_prefill_s_per_token=0.001, mock_decode_s_per_step=0.004)
PREFILL_CANCEL_S = (0.015, 0.035)
BEFORE_TOKEN_1 = (Phase.RECEIVED, Phase.ROUTING, Phase.PREFILLING)


def plan_cancels(specs: list[RequestSpec], seed: int) -> tuple[dict[int, float], dict[int, int]]:
    """10 % timed cancels among unique prompts (no cached prefix shortens their prefill),
    10 % token-count cancels among requests with at least 16 tokens to go."""
    rng = random.Random(seed)
    count = len(specs) // 10
    unique = [s.index for s in specs if not s.shared]
    timed = {i: rng.uniform(*PREFILL_CANCEL_S) for i in rng.sample(unique, count)}
    long = [s for s in specs if s.max_tokens >= 16 and s.index not in timed]
    by_tokens = {s.index: rng.randint(2, s.max_tokens // 2) for s in rng.sample(long, count)}
    return timed, by_tokens


def router_counts(cluster: ChaosCluster) -> tuple[dict[Phase, int], int]:
    """The router's cancellations by phase, and how many requests it saw end (any status)."""
    registry = cluster.background.cluster.router.metrics.registry
    cancellations = {}
    for phase in Phase:
        value = registry.get_sample_value(
            "pdserve_request_cancellations_total", {"phase": phase.value}
        )
        cancellations[phase] = int(value or 0)
    ended = sum(
        sample.value
        for metric in registry.collect()
        if metric.name == "pdserve_requests"
        for sample in metric.samples
        if sample.name == "pdserve_requests_total"
    )
    return cancellations, int(ended)


def test_s6_cancellations_are_counted_per_phase_and_leak_nothing(
    ray_cluster, tiny_dir, model_cache_dir
):
    with chaos_cluster(SETUP, model_cache_dir) as cluster:
        specs = make_workload(NUM_REQUESTS, cluster.vocab_size, cluster.eos_token_ids, seed=6)
        timed, by_tokens = plan_cancels(specs, seed=6)
        load = run_load(
            cluster.address, specs, CONCURRENCY, cancel_after_tokens=by_tokens,
            cancel_after_s=timed,
        )  # fmt: skip
        run = asyncio.run(load)
        leaks = cluster.quiesce()
        counted, seen_by_router = router_counts(cluster)
    injected = injected_by_phase(run)
    # A cancel that overtakes its request (the router had not started the call) is never
    # seen there: it stops the request before any worker, so it counts before token #1.
    counted[Phase.RECEIVED] += len(run.outcomes) - seen_by_router
    result = scenario_result(
        "S6 cancellation storm", run.outcomes, leaks, run.seconds,
        faults_injected=len(timed) + len(by_tokens),
        faults_verified=sum(injected.values()),
    )  # fmt: skip
    result.extra_failures += phase_mismatches(injected, counted)
    result.extra_failures += [
        f"request {o.index}: {o.status_key}"
        for o in run.outcomes
        if not o.cancelled_by_client and not o.ok
    ]
    record(result)
    assert result.failures() == []


def injected_by_phase(run: LoadRun) -> dict[str, int]:
    """The client's cancels that reached the router before the request ended, by when: before
    it had any token, or after ≥ 2 decode tokens. A cancel that found the call already done is
    no injection (it is then OK, and not counted)."""
    injected = {"before token #1": 0, "decoding": 0, "ambiguous": 0}
    for outcome in run.outcomes:
        if not outcome.cancelled_by_client or outcome.code != "CANCELLED":
            continue
        seen = outcome.tokens_at_cancel if outcome.tokens_at_cancel >= 0 else len(outcome.tokens)
        if seen == 0:
            injected["before token #1"] += 1
        elif seen >= 2:
            injected["decoding"] += 1
        else:
            injected["ambiguous"] += 1
    return injected


def phase_mismatches(injected: dict[str, int], counted: dict[Phase, int]) -> list[str]:
    router_before = sum(counted[p] for p in BEFORE_TOKEN_1)
    pairs = {
        "before token #1": (injected["before token #1"], router_before),
        "decoding": (injected["decoding"], counted[Phase.DECODING]),
        "transferring/recomputing/ambiguous": (
            injected["ambiguous"],
            counted[Phase.TRANSFERRING] + counted[Phase.RECOMPUTING],
        ),
    }
    broken = [
        f"cancellations {name}: injected {sent}, router counted {seen}"
        for name, (sent, seen) in pairs.items()
        if sent != seen
    ]
    if injected["ambiguous"]:
        broken.append(f"{injected['ambiguous']} cancels landed between token #1 and #2")
    return broken
