"""A real local cluster for chaos scenarios: mock-runner workers as Ray actors, the router in
this process, signals to hurt the workers, and the leak check that follows a run.

A scenario, in order:
  1. `with chaos_cluster(ChaosSetup(...), model_cache_dir) as cluster:` starts
     pdserve.launch.BackgroundCluster (model "tiny", runner "mock", shm transport, a small
     KV cache, short lease and stats period) inside the session's Ray runtime (tests that use
     it request the `ray_cluster` fixture), and stops it on the way out.
  2. load.run_load(cluster.address, make_workload(...), C, actions=[...]): actions call
     `cluster.kill(worker_id)` (SIGKILL, waits until the process is gone) or
     `cluster.signal(worker_id, SIGSTOP/SIGCONT/SIGTERM)`; `await cluster.stats(worker_id)`
     reads a live worker's GetStats.
  3. `cluster.quiesce()` waits (one lease period + slack) until every live worker holds no
     request page, lease or transfer, and its integrity check passes; what is left counts as
     leaked, as do KV segments in /dev/shm left by this cluster's dead workers.
  4. `leaks.scenario_result(...)` folds outcomes, leaks and faults into a ScenarioResult;
     the test records it and asserts `result.failures() == []`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from engine.config import ModelConfig
from kv_transfer.pages import Role
from kv_transfer.shm_segments import SEGMENT_PREFIX, SHM_DIR
from pdserve.config import ClusterConfig
from pdserve.launch import BackgroundCluster, LocalCluster
from pdserve.v1 import generation_pb2, worker_pb2, worker_pb2_grpc
from pdserve.workers import WorkerIdentity
from router.config import RouterConfig
from tests.chaos.leaks import Leaks, holds_something, leaks_of
from tests.chaos.load import Action

_STATS_TIMEOUT_S = 2.0
_QUIESCE_SLACK_S = 5.0


@dataclass(frozen=True, slots=True)
class ChaosSetup:
    """The cluster a scenario runs on. Costs are the mock runner's (engine/mock_runner.py)."""

    num_prefill: int = 2
    num_decode: int = 2
    lease_ttl_s: float = 5.0
    kv_cache_mib: int = 8  # 1,024 pages of 16 tokens of the `tiny` model
    mock_prefill_s_per_token: float = 0.0001
    mock_decode_s_per_step: float = 0.004
    stats_poll_period_s: float = 0.2  # how soon the router sees a worker die
    max_route_attempts: int = 3  # one per prefill worker a scenario may kill, plus one
    # Every request takes a prefill leg and a handoff, so both are exercised and fault-able.
    conditional_disaggregation: bool = False
    max_concurrent_requests: int = 256  # the router's admission bound
    redis_url: str = ""  # the router's registry and prefix index; "" = in-memory

    def cluster_config(self, model_cache_dir: Path) -> ClusterConfig:
        return ClusterConfig(
            model="tiny",
            model_cache_dir=model_cache_dir,
            port=0,
            dtype="float32",
            num_prefill=self.num_prefill,
            num_decode=self.num_decode,
            kv_cache_mib=self.kv_cache_mib,
            runner="mock",
            mock_prefill_s_per_token=self.mock_prefill_s_per_token,
            mock_decode_s_per_step=self.mock_decode_s_per_step,
            lease_ttl_s=self.lease_ttl_s,
            conditional_disaggregation=self.conditional_disaggregation,
            max_concurrent_requests=self.max_concurrent_requests,
            redis_url=self.redis_url,
        )


class _ChaosLocalCluster(LocalCluster):
    """LocalCluster whose router polls faster and retries more than `pdserve up`'s does."""

    def __init__(self, config: ClusterConfig, setup: ChaosSetup) -> None:
        super().__init__(config)
        self._setup = setup

    def _router_config(self) -> RouterConfig:
        faster = {
            "stats_poll_period_s": self._setup.stats_poll_period_s,
            "max_route_attempts": self._setup.max_route_attempts,
        }
        return super()._router_config().model_copy(update=faster)


class ChaosCluster:
    """A started cluster and what was done to it: `signalled` (worker id -> signals sent).

    Workers are processes on this machine (Ray actors), so signals go straight to their pids.
    """

    def __init__(self, setup: ChaosSetup, model_cache_dir: Path) -> None:
        self.setup = setup
        self.background = BackgroundCluster(setup.cluster_config(model_cache_dir))
        # Not started yet: swap in the LocalCluster whose router polls and retries faster.
        self.background.cluster = _ChaosLocalCluster(self.background.cluster.config, setup)
        self.signalled: dict[str, list[signal.Signals]] = {}
        self.model: ModelConfig | None = None
        # The workers as started: the launcher forgets one that died, the harness does not.
        self.identities: dict[str, WorkerIdentity] = {}

    @property
    def address(self) -> str:
        return self.background.address

    @property
    def vocab_size(self) -> int:
        assert self.model is not None, "cluster not started"
        return self.model.vocab_size

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        assert self.model is not None, "cluster not started"
        return self.model.eos_token_ids

    def worker_ids(self, role: Role | None = None) -> list[str]:
        return [wid for wid, i in self.identities.items() if role is None or i.role is role]

    def pid(self, worker_id: str) -> int:
        return self.identities[worker_id].pid

    def is_alive(self, worker_id: str) -> bool:
        """The worker's process exists and is not a zombie (killed, not yet reaped)."""
        try:
            stat = Path(f"/proc/{self.pid(worker_id)}/stat").read_text()
        except FileNotFoundError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"  # the state follows "(comm)"

    def live_worker_ids(self) -> list[str]:
        return [wid for wid in self.worker_ids() if self.is_alive(wid)]

    def signal(self, worker_id: str, sig: signal.Signals) -> None:
        os.kill(self.pid(worker_id), sig)
        self.signalled.setdefault(worker_id, []).append(sig)

    async def kill(self, worker_id: str, timeout_s: float = 10.0) -> bool:
        """SIGKILL; returns whether the process was gone within `timeout_s` (the fault
        verified)."""
        self.signal(worker_id, signal.SIGKILL)
        deadline = time.monotonic() + timeout_s
        while self.is_alive(worker_id) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return not self.is_alive(worker_id)

    async def kill_when_busy(self, worker_id: str, timeout_s: float = 10.0) -> bool:
        """SIGKILL once the worker has work (running or queued requests); returns whether it
        had work and then died: the fault verified."""
        deadline = time.monotonic() + timeout_s
        while not _is_busy(await self.stats(worker_id)):
            if time.monotonic() > deadline:
                await self.kill(worker_id)
                return False
            await asyncio.sleep(0.01)
        return await self.kill(worker_id)

    def kills_during(
        self, victims: list[str], num_requests: int
    ) -> tuple[list[Action], list[bool]]:
        """Actions that SIGKILL each victim once it is busy, spread evenly over a load of
        `num_requests`, and the list each kill's verification lands in."""
        verified: list[bool] = []

        def kill(worker_id: str) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                verified.append(await self.kill_when_busy(worker_id))

            return run

        step = num_requests // (len(victims) + 1)
        actions = [
            Action(kill(wid), after_requests=step * (i + 1)) for i, wid in enumerate(victims)
        ]
        return actions, verified

    @property
    def killed(self) -> list[str]:
        return [wid for wid, sigs in self.signalled.items() if signal.SIGKILL in sigs]

    async def stats(self, worker_id: str) -> generation_pb2.WorkerInfo:
        return await asyncio.to_thread(self.stats_sync, worker_id)

    def stats_sync(self, worker_id: str) -> generation_pb2.WorkerInfo:
        address = self.identities[worker_id].address
        with grpc.insecure_channel(address) as channel:
            stub = worker_pb2_grpc.WorkerStub(channel)
            request = worker_pb2.GetStatsRequest()
            return stub.GetStats(request, timeout=_STATS_TIMEOUT_S).info

    def _stats_or_none(self, worker_id: str) -> generation_pb2.WorkerInfo | None:
        try:
            return self.stats_sync(worker_id)
        except grpc.RpcError:
            return None  # alive but not answering (stopped, wedged)

    def quiesce(self, timeout_s: float | None = None) -> Leaks:
        """Waits until every live worker is idle (bounded); returns what is left."""
        if timeout_s is None:
            timeout_s = self.setup.lease_ttl_s + _QUIESCE_SLACK_S
        deadline = time.monotonic() + timeout_s
        while True:
            infos = {wid: self._stats_or_none(wid) for wid in self.live_worker_ids()}
            busy = {wid: info for wid, info in infos.items() if holds_something(info)}
            orphans = self.orphan_segments()
            if (not busy and not orphans) or time.monotonic() > deadline:
                return leaks_of(busy, orphans)
            time.sleep(0.1)

    def orphan_segments(self) -> list[str]:
        """KV segments in /dev/shm created by this cluster's workers that are dead."""
        dead = {str(self.pid(wid)) for wid in self.worker_ids() if not self.is_alive(wid)}
        return [
            path.name
            for path in SHM_DIR.glob(f"{SEGMENT_PREFIX}*")
            if path.name.removeprefix(SEGMENT_PREFIX).split("-")[0] in dead
        ]


@contextmanager
def chaos_cluster(setup: ChaosSetup, model_cache_dir: Path) -> Iterator[ChaosCluster]:
    """A started ChaosCluster, stopped on the way out (dead workers included)."""
    cluster = ChaosCluster(setup, model_cache_dir)
    cluster.background.start()
    try:
        cluster.model = ModelConfig.from_dir(cluster.background.cluster.model_dir)
        workers = cluster.background.cluster.workers
        cluster.identities = {wid: handle.identity for wid, handle in workers.items()}
        yield cluster
    finally:
        cluster.background.stop()


def _is_busy(info: generation_pb2.WorkerInfo) -> bool:
    return info.running > 0 or info.queue_len > 0
