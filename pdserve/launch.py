"""A local cluster on this machine: Ray, the worker actors, and the router in this process.

`pdserve up` runs one until Ctrl-C or SIGTERM; tests and the demo start one in-process.
Start: resolve the model (converted once, with a progress bar) → Ray → every worker actor
in parallel (each loads the model and serves the internal gRPC API) → with `transport` gloo,
every worker joins one KV group (ranks 0..n-1 in plan order), all at once → the router, with
every worker registered. Stop runs the same steps backwards (each worker leaves the group as it
stops); Ray is shut down only if we started it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import ray

from decode_worker.actor import DecodeWorker
from decode_worker.config import DecodeWorkerConfig
from engine.builder import EngineConfig
from engine.weights import resolve_model
from kv_transfer.collective import KVGroupSpec
from kv_transfer.factory import COLLECTIVE_BACKENDS
from kv_transfer.pages import Role
from pdserve.config import ClusterConfig
from pdserve.workers import WorkerIdentity
from prefill_worker.actor import PrefillWorker
from prefill_worker.config import PrefillWorkerConfig
from router.config import RouterConfig
from router.server import RouterServer

log = logging.getLogger(__name__)


@dataclass(slots=True)
class WorkerHandle:
    identity: WorkerIdentity
    actor: ray.actor.ActorHandle


class LocalCluster:
    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.workers: dict[str, WorkerHandle] = {}
        self.router: RouterServer | None = None
        self.model_dir: Path | None = None
        self._owns_ray = False

    @property
    def address(self) -> str:
        assert self.router is not None, "cluster not started"
        return f"{self.config.host}:{self.router.port}"

    async def start(self) -> None:
        self.model_dir = resolve_model(self.config.model, self.config.model_cache_dir)
        self._start_ray()
        plan = self._plan()
        actors = [
            self._spawn(worker_id, role, self._kv_group(rank, len(plan)))
            for rank, (worker_id, role) in enumerate(plan)
        ]
        identities = await asyncio.gather(*(actor.identity.remote() for actor in actors))
        for identity, actor in zip(identities, actors, strict=True):
            self.workers[identity.worker_id] = WorkerHandle(identity, actor)
        if self._forms_kv_group:
            # Joining is collective: each actor's one call blocks until every rank's is in.
            await asyncio.gather(*(actor.join_kv_group.remote() for actor in actors))
        self.router = RouterServer(self._router_config())
        for handle in self.workers.values():
            await self.router.add_worker(handle.identity.address)
        await self.router.start()
        log.info(
            "pdserve serving %s on %s with %s",
            self.config.model,
            self.address,
            ", ".join(self.workers),
        )

    async def stop(self) -> None:
        if self.router is not None:
            await self.router.stop()
        await asyncio.gather(
            *(h.actor.stop.remote() for h in self.workers.values()), return_exceptions=True
        )
        for handle in self.workers.values():
            ray.kill(handle.actor)
        self.workers.clear()
        if self._owns_ray:
            ray.shutdown()

    def _start_ray(self) -> None:
        if ray.is_initialized():
            return
        ray.init(
            address=self.config.ray_address,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
        self._owns_ray = True

    def _plan(self) -> list[tuple[str, Role]]:
        plan = [(f"prefill-{i}", Role.PREFILL) for i in range(self.config.num_prefill)]
        plan += [(f"decode-{i}", Role.DECODE) for i in range(self.config.num_decode)]
        return plan + [(f"both-{i}", Role.BOTH) for i in range(self.config.num_colocated)]

    @property
    def _forms_kv_group(self) -> bool:
        return self.config.transport in COLLECTIVE_BACKENDS

    def _kv_group(self, rank: int, world_size: int) -> KVGroupSpec | None:
        if not self._forms_kv_group:
            return None
        return KVGroupSpec(self.config.transport, world_size, rank)

    def _spawn(
        self, worker_id: str, role: Role, kv_group: KVGroupSpec | None
    ) -> ray.actor.ActorHandle:
        common = {
            "worker_id": worker_id,
            "engine": self._engine_config(),
            "transport": self.config.transport,
            "kv_group": kv_group,
        }
        if role is Role.PREFILL:
            config = PrefillWorkerConfig(**common, lease_ttl_s=self.config.lease_ttl_s)
            actor_class = PrefillWorker
        else:
            config = DecodeWorkerConfig(**common, role=role)
            actor_class = DecodeWorker
        # Workers take no Ray CPU slot: their torch threads are set by threads_per_worker.
        return ray.remote(actor_class).options(num_cpus=0).remote(config, str(self.model_dir))

    def _engine_config(self) -> EngineConfig:
        return EngineConfig(
            model=self.config.model,
            model_cache_dir=self.config.model_cache_dir,
            dtype=self.config.dtype,
            page_size=self.config.page_size,
            kv_cache_mib=self.config.kv_cache_mib,
            num_threads=self.config.threads_per_worker,
            max_num_batched_tokens=self.config.max_num_batched_tokens,
        )

    def _router_config(self) -> RouterConfig:
        return RouterConfig(
            model_dir=self.model_dir,
            model_name=self.config.model,
            host=self.config.host,
            port=self.config.port,
            max_concurrent_requests=self.config.max_concurrent_requests,
            # A KV group is formed to be used: every pair moves KV over it. Without one the
            # topology decides per pair (shm between workers of this node).
            kv_backend=self.config.transport if self._forms_kv_group else None,
        )


def serve_forever(config: ClusterConfig) -> int:
    """`pdserve up`: runs a local cluster until SIGINT or SIGTERM."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return asyncio.run(_serve(config))


async def _serve(config: ClusterConfig) -> int:
    cluster = LocalCluster(config)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await cluster.start()
    print(
        f"pdserve ready on {cluster.address} — try: pdserve generate --chat --prompt 'Hello!'",
        flush=True,
    )
    await stopping.wait()
    print("pdserve stopping…", flush=True)
    await cluster.stop()
    return 0


class BackgroundCluster:
    """A LocalCluster on its own event-loop thread, for synchronous callers (tests, demo, bench).

    `BackgroundCluster(config).start()` returns once the router serves; `stop()` tears it down.
    """

    def __init__(self, config: ClusterConfig) -> None:
        self.cluster = LocalCluster(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="pdserve-cluster", daemon=True
        )

    def start(self, timeout_s: float = 600.0) -> BackgroundCluster:
        self._thread.start()
        try:
            self._run(self.cluster.start(), timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        if self._thread.is_alive():
            self._run(self.cluster.stop(), timeout_s)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout_s)

    @property
    def address(self) -> str:
        return self.cluster.address

    def _run(self, coro, timeout_s: float):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)
