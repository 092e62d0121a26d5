"""S10 (shared/RELIABILITY.md): soak — 10,000 requests at concurrency 64 through 8 random faults.

Runs only under `make soak` (PDSERVE_SOAK=1; 1,000 requests unless PDSERVE_CHAOS_SCALE=full),
never under `make test` or `make chaos`: it takes minutes.

A real local cluster (4 prefill + 4 decode mock-runner workers, so two of each survive the
kills; leases of 2 s, fetch timeout 3 s) whose router keeps its registry and prefix index on
a real redis-server. Throughout, the workers inject KV transfer faults at a low rate (S4).
Eight faults, drawn with a seeded RNG (each kind once, three more at random, at most two
kills per role), are spaced evenly over the run:
  - S2 decode killed:  SIGKILL a decode worker with work; verified: it had work, then was gone;
  - S3 prefill killed: the same for a prefill worker;
  - S5 decode paused:  SIGSTOP a streaming decode worker for three leases, then SIGCONT;
                       verified: state T seen, and prefill-side leases expired meanwhile;
  - S9 Redis outage:   redis-server SIGKILLed for 8 s, then restarted empty; verified: the
                       router's prefix-index breaker opened, then closed again.
The transfer faults count as a ninth fault, verified as S4 does: each planned kind injected,
the workers' ledgers equal their metrics, every corruption caught by the checksum and every
fail / stall seen as an error / timeout (extra errors and timeouts the kills and the pause
explain). Must hold: the pass bar (every request has a terminal status, 0 corrupt outputs,
0 UNKNOWN, 0 leaks once quiet, every fault verified); the only failures are streams on a
killed decode worker, UNAVAILABLE/WORKER_LOST naming it, after an exact prefix of the
reference; every other request OK with exactly the reference tokens.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import os
import random
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from kv_transfer.faults import FaultKind, FaultPlan, verify_faults
from kv_transfer.pages import Role
from kv_transfer.transport import TransferFailure
from router.breaker import BreakerState
from tests.chaos.harness import ChaosCluster, chaos_cluster
from tests.chaos.leaks import scenario_result
from tests.chaos.load import Action, Outcome, make_workload, run_load
from tests.chaos.report import record, scaled
from tests.chaos.test_s4_transfer_faults import FaultTally, FaultySetup, worker_stats
from tests.chaos.test_s5_decode_paused import process_state
from tests.redis_server import RedisServer

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("PDSERVE_SOAK") != "1",
        reason="S10 soak runs only under `make soak` (PDSERVE_SOAK=1): it takes minutes",
    ),
    pytest.mark.timeout(1800),  # beyond the suite's 600 s: 10,000 requests on a small box
]

NUM_REQUESTS = scaled(full=10_000, ci=1_000)
CONCURRENCY = 64
NUM_FAULTS = 8
SEED = 10
MAX_KILLS_PER_ROLE = 2  # of 4 workers per role: two survive
TRANSFER_FAULTS = "fail=0.01,corrupt=0.003,stall=0.002,seed=10"
SETUP = FaultySetup(
    num_prefill=4,
    num_decode=4,
    transfer_faults=TRANSFER_FAULTS,
    mock_prefill_s_per_token=0.0003,  # prefill workers have queues to be killed with
)
PAUSE_S = 3 * SETUP.lease_ttl_s
OUTAGE_S = 8.0
RECOVERY_TIMEOUT_S = 15.0


class Fault(enum.StrEnum):
    DECODE_KILLED = "S2 decode SIGKILL"
    PREFILL_KILLED = "S3 prefill SIGKILL"
    DECODE_PAUSED = "S5 decode SIGSTOP/SIGCONT"
    REDIS_OUTAGE = "S9 Redis outage"


KILLS = {Fault.DECODE_KILLED: Role.DECODE, Fault.PREFILL_KILLED: Role.PREFILL}


@dataclass(slots=True)
class Injected:
    fault: str
    target: str
    verified: bool
    evidence: str


def draw_faults(rng: random.Random) -> list[Fault]:
    """Each kind once, the rest at random (no more than MAX_KILLS_PER_ROLE kills per role),
    in a random order."""
    faults = list(Fault)
    while len(faults) < NUM_FAULTS:
        kind = rng.choice(list(Fault))
        if kind not in KILLS or faults.count(kind) < MAX_KILLS_PER_ROLE:
            faults.append(kind)
    rng.shuffle(faults)
    return faults


@dataclass
class FaultInjector:
    """Injects the drawn faults into one cluster and its Redis, and keeps what it saw."""

    cluster: ChaosCluster
    redis: RedisServer
    breaker_states: list[BreakerState] = field(default_factory=list)
    paused: set[str] = field(default_factory=set)
    log: list[Injected] = field(default_factory=list)

    def __post_init__(self) -> None:
        router = self.cluster.background.cluster.router
        assert router is not None
        self.breaker = router.index.breaker
        self.breaker.add_listener(lambda old, new: self.breaker_states.append(new))

    async def inject(self, fault: Fault) -> None:
        if fault in KILLS:
            await self.kill(fault, KILLS[fault])
        elif fault is Fault.DECODE_PAUSED:
            await self.pause()
        else:
            await self.redis_outage()

    def target(self, role: Role) -> str:
        """A live worker of the role that is not paused; two of each survive every draw."""
        live = self.cluster.live_worker_ids()
        return next(w for w in self.cluster.worker_ids(role) if w in live and w not in self.paused)

    async def kill(self, fault: Fault, role: Role) -> None:
        victim = self.target(role)
        verified = await self.cluster.kill_when_busy(victim)
        evidence = f"pid {self.cluster.pid(victim)} " + (
            "had work, then was gone" if verified else "idle or still alive when killed"
        )
        self.log.append(Injected(fault, victim, verified, evidence))

    async def pause(self) -> None:
        victim = self.target(Role.DECODE)
        self.paused.add(victim)
        while not (await self.cluster.stats(victim)).running:
            await asyncio.sleep(0.01)
        expired_before = await asyncio.to_thread(leases_expired, self.cluster)
        self.cluster.signal(victim, signal.SIGSTOP)
        try:  # never leave it stopped: quiesce would count it as holding everything
            await asyncio.sleep(0.05)
            state = process_state(self.cluster.pid(victim))
            await asyncio.sleep(PAUSE_S)
            expired = await asyncio.to_thread(leases_expired, self.cluster) - expired_before
        finally:
            self.cluster.signal(victim, signal.SIGCONT)
            self.paused.discard(victim)
        evidence = f"state {state}, {expired} prefill leases expired during the pause"
        self.log.append(
            Injected(Fault.DECODE_PAUSED, victim, state == "T" and expired > 0, evidence)
        )

    async def redis_outage(self) -> None:
        mark = len(self.breaker_states)
        await asyncio.to_thread(self.redis.kill)
        await asyncio.sleep(OUTAGE_S)
        await asyncio.to_thread(self.redis.restart)
        deadline = time.monotonic() + RECOVERY_TIMEOUT_S
        while self.breaker.state is not BreakerState.CLOSED and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        states = self.breaker_states[mark:]
        verified = BreakerState.OPEN in states and self.breaker.state is BreakerState.CLOSED
        evidence = f"index breaker went {' -> '.join(states)}"
        self.log.append(
            Injected(Fault.REDIS_OUTAGE, f"redis :{self.redis.port}", verified, evidence)
        )


def leases_expired(cluster: ChaosCluster) -> int:
    """Leases the live prefill workers ended by expiry, summed."""
    live = cluster.live_worker_ids()
    prefills = [w for w in cluster.worker_ids(Role.PREFILL) if w in live]
    return sum(worker_stats(cluster, w).leases_expired for w in prefills)


def transfer_fault_check(cluster: ChaosCluster) -> Injected:
    """S4's verification over the live workers (a killed worker's ledger and failure counts
    died with it). Errors and timeouts beyond the injected ones are the kills' and pause's."""
    tally = FaultTally()
    for worker_id in cluster.live_worker_ids():
        tally.add_worker(worker_stats(cluster, worker_id))
    verdict = verify_faults(tally.injected, tally.failures)
    planned = [k for k, p in FaultPlan.parse(TRANSFER_FAULTS).probabilities.items() if p > 0]
    checks = {
        "each planned kind injected": all(tally.injected[kind] for kind in planned),
        "ledgers equal metrics": tally.injected == tally.injected_scraped,
        "every corruption caught": tally.injected[FaultKind.CORRUPT]
        == tally.failures[TransferFailure.CHECKSUM],
        "every fault seen as its failure": verdict.all_verified,
    }
    evidence = (
        f"injected {_plain(tally.injected)}, fetch failures {_plain(tally.failures)}, "
        f"beyond those (kills, pause) {_plain(verdict.unexplained)}; "
        + ", ".join(f"{name}: {ok}" for name, ok in checks.items())
    )
    return Injected("S4 transfer faults", "every worker", all(checks.values()), evidence)


def _plain(counts: Mapping[enum.StrEnum, int]) -> dict[str, int]:
    return {str(key): n for key, n in sorted(counts.items())}


def failures_off_killed_decode(cluster: ChaosCluster, failed: list[Outcome]) -> list[str]:
    """Each failure must be a stream on a killed decode worker, cut after an exact prefix."""
    killed = set(cluster.killed) & set(cluster.worker_ids(Role.DECODE))
    broken = []
    for o in failed:
        named = o.metadata.get("worker_id")
        if o.status_key != "UNAVAILABLE/WORKER_LOST" or not o.matches_reference:
            broken.append(f"request {o.index}: {o.status_key}, exact prefix {o.matches_reference}")
        elif named not in killed:
            broken.append(f"request {o.index} failed on {named!r}, not a killed decode worker")
    return broken


def test_s10_soak_survives_eight_random_faults(
    ray_cluster, tiny_dir, model_cache_dir, redis_server, redis_url
):
    faults = draw_faults(random.Random(SEED))
    setup = dataclasses.replace(SETUP, redis_url=redis_url)
    with chaos_cluster(setup, model_cache_dir) as cluster:
        injector = FaultInjector(cluster, redis_server)
        spacing = NUM_REQUESTS // (NUM_FAULTS + 1)
        actions = [
            Action(lambda f=f: injector.inject(f), after_requests=(i + 1) * spacing)
            for i, f in enumerate(faults)
        ]
        specs = make_workload(NUM_REQUESTS, cluster.vocab_size, cluster.eos_token_ids, seed=10)
        run = asyncio.run(run_load(cluster.address, specs, CONCURRENCY, actions))
        leaks = cluster.quiesce()
        log = [*injector.log, transfer_fault_check(cluster)]
    result = scenario_result(
        "S10 soak", run.outcomes, leaks, run.seconds, len(log), sum(i.verified for i in log)
    )
    result.extra_failures += failures_off_killed_decode(cluster, run.failed)
    for injected in log:
        print(f"S10 fault {injected.fault} on {injected.target}: verified {injected.verified}; "
              f"{injected.evidence}")  # fmt: skip
    record(result)
    assert result.failures() == []
