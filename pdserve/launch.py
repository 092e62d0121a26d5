"""A local cluster on this machine: Ray, the worker actors, and the router in this process.

`pdserve up` runs one until Ctrl-C or SIGTERM; tests and the demo start one in-process.
Start: resolve the model (converted once, with a progress bar) → Ray → every worker actor
in parallel (each loads the model and serves the internal gRPC API) → with `transport` gloo,
every worker joins one KV group (ranks 0..n-1 in plan order), all at once → the router, with
every worker registered, and pdserve.v1.Cluster served beside it (pdserve/scaling.py: Scale
grows pools through `spawn` and shrinks them by draining, then `stop_worker`). Stop runs the
same steps backwards (each worker leaves the group as it stops); Ray is shut down only if we
started it. The router gets `shutdown_grace_s` to let its streams finish. Meanwhile
cluster_upkeep.py forgets workers that exited on their own and unlinks dead ones' KV segments.

Worker ids are `prefill-N`, `decode-N`, `both-N`, N counting up per role from 0 and never
reused, so a worker started by a Scale is always told apart from one that left.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Sequence
from pathlib import Path

import ray

from decode_worker.actor import DecodeWorker
from decode_worker.config import DecodeWorkerConfig
from engine.builder import EngineConfig
from engine.weights import resolve_model
from kv_transfer.collective import KVGroupSpec
from kv_transfer.factory import COLLECTIVE_BACKENDS
from kv_transfer.pages import Role, TransportBackend
from pdserve.cluster_upkeep import ClusterUpkeep, WorkerHandle
from pdserve.config import ClusterConfig
from pdserve.scaling import PoolScaler, PoolSizes, cluster_service
from prefill_worker.actor import PrefillWorker
from prefill_worker.config import PrefillWorkerConfig
from router.config import RouterConfig
from router.server import RouterServer

log = logging.getLogger(__name__)


_ID_PREFIX = {Role.PREFILL: "prefill", Role.DECODE: "decode", Role.BOTH: "both"}


class LocalCluster:
    """Owns the worker actors (`workers`, in start order) and the router; implements
    scaling.WorkerPools. Every method runs on the event loop `start` ran on."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.workers: dict[str, WorkerHandle] = {}
        self.router: RouterServer | None = None
        self.scaler: PoolScaler | None = None
        self.model_dir: Path | None = None
        self._owns_ray = False
        self._next_index = dict.fromkeys(Role, 0)
        self._upkeep = ClusterUpkeep(self.workers)

    @property
    def address(self) -> str:
        assert self.router is not None, "cluster not started"
        return f"{self.config.host}:{self.router.port}"

    async def start(self) -> None:
        self.model_dir = resolve_model(self.config.model, self.config.model_cache_dir)
        self._start_ray()
        config = self.config
        roles = [Role.PREFILL] * config.num_prefill + [Role.DECODE] * config.num_decode
        roles += [Role.BOTH] * config.num_colocated
        started = await self.spawn(
            roles, [self._kv_group(r, len(roles)) for r in range(len(roles))]
        )
        if self._forms_kv_group:
            # Joining is collective: each actor's one call blocks until every rank's is in.
            await asyncio.gather(*(h.actor.join_kv_group.remote() for h in self.workers.values()))
        self.router = RouterServer(self._router_config(), extra_services=self._serve_cluster_api)
        self.scaler = PoolScaler(self, self.router, config.drain_timeout_s)
        for _, address in started:
            await self.router.add_worker(address)
        await self.router.start()
        self._upkeep.start()
        log.info(
            "pdserve serving %s on %s with %s%s",
            config.model,
            self.address,
            ", ".join(self.workers),
            f"; router metrics on port {self.router.metrics_port}"
            if self.router.metrics_port
            else "",
        )

    async def stop(self) -> None:
        await self._upkeep.stop()
        if self.scaler is not None:
            await self.scaler.close()
        if self.router is not None:
            await self.router.stop(self.router.config.shutdown_grace_s)
        await asyncio.gather(
            *(h.actor.stop.remote() for h in self.workers.values()), return_exceptions=True
        )
        for handle in self.workers.values():
            ray.kill(handle.actor)
        self.workers.clear()
        if self._owns_ray:
            ray.shutdown()

    @property
    def can_grow(self) -> bool:
        return not self._forms_kv_group

    def sizes(self) -> PoolSizes:
        return PoolSizes.of_roles([h.identity.role for h in self.workers.values()])

    def worker_ids(self) -> list[str]:
        return list(self.workers)

    def newest(self, role: Role, count: int) -> list[str]:
        of_role = [wid for wid, h in self.workers.items() if h.identity.role is role]
        return of_role[::-1][: max(count, 0)]

    async def spawn(
        self, roles: Sequence[Role], kv_groups: Sequence[KVGroupSpec | None] = ()
    ) -> list[tuple[str, str]]:
        """Starts one worker per role (fresh ids, in parallel) and records each once it
        serves; returns their (worker_id, address). If any fails to start, every actor of
        this call is killed and the error raised."""
        groups = list(kv_groups) or [None] * len(roles)
        actors = [self._spawn(role, group) for role, group in zip(roles, groups, strict=True)]
        try:
            identities = await asyncio.gather(*(actor.identity.remote() for actor in actors))
        except BaseException:
            for actor in actors:
                ray.kill(actor)
            raise
        for identity, actor in zip(identities, actors, strict=True):
            self.workers[identity.worker_id] = WorkerHandle(identity, actor)
        return [(identity.worker_id, identity.address) for identity in identities]

    async def stop_worker(self, worker_id: str) -> None:
        """Stops with no grace: the drain (or its timeout) before this was the grace. A worker
        that already exited on its own is gone already."""
        handle = self.workers.pop(worker_id, None)
        if handle is None:
            return
        try:
            await handle.actor.stop.remote(0.0)
        except Exception as exc:  # it is killed next either way
            log.warning("worker %s did not stop cleanly: %s", worker_id, type(exc).__name__)
        finally:
            ray.kill(handle.actor)

    def _serve_cluster_api(self, server) -> None:
        assert self.scaler is not None
        cluster_service(self.scaler)(server)

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

    @property
    def _forms_kv_group(self) -> bool:
        return self.config.transport in COLLECTIVE_BACKENDS

    def _kv_group(self, rank: int, world_size: int) -> KVGroupSpec | None:
        if not self._forms_kv_group:
            return None
        return KVGroupSpec(self.config.transport, world_size, rank)

    def _spawn(self, role: Role, kv_group: KVGroupSpec | None) -> ray.actor.ActorHandle:
        worker_id = f"{_ID_PREFIX[role]}-{self._next_index[role]}"
        self._next_index[role] += 1
        common = {
            "worker_id": worker_id,
            "engine": self._engine_config(),
            "transport": self.config.transport,
            "kv_group": kv_group,
            "kv_tcp_port": 0 if self.config.transport == TransportBackend.TCP else None,
            "metrics_port": self.config.worker_metrics_port,
            "drain_quiet_s": self.config.drain_quiet_s,
            "drain_timeout_s": self.config.drain_timeout_s,
            "verify_checksum": self.config.verify_checksum,
            "checksum_sample_rate": self.config.checksum_sample_rate,
            "transfer_faults": self.config.transfer_faults,
            "internal_tls": self.config.internal_tls,
            "internal_auth_token": self.config.internal_auth_token,
        }
        if role is Role.PREFILL:
            config = PrefillWorkerConfig(**common, lease_ttl_s=self.config.lease_ttl_s)
            actor_class = PrefillWorker
        else:
            config = DecodeWorkerConfig(
                **common, role=role, transfer_timeout_s=self.config.transfer_timeout_s
            )
            actor_class = DecodeWorker
        # Workers take no Ray CPU slot: their torch threads are set by threads_per_worker.
        return ray.remote(actor_class).options(num_cpus=0).remote(config, str(self.model_dir))

    def _engine_config(self) -> EngineConfig:
        return EngineConfig(
            model=self.config.model,
            model_cache_dir=self.config.model_cache_dir,
            dtype=self.config.dtype,
            device=self.config.device,
            attention=self.config.attention,
            cuda_graphs=self.config.cuda_graphs,
            page_size=self.config.page_size,
            kv_cache_mib=self.config.kv_cache_mib,
            num_threads=self.config.threads_per_worker,
            max_num_batched_tokens=self.config.max_num_batched_tokens,
            runner=self.config.runner,
            mock_prefill_s_per_token=self.config.mock_prefill_s_per_token,
            mock_decode_s_per_step=self.config.mock_decode_s_per_step,
        )

    def _router_config(self) -> RouterConfig:
        return RouterConfig(
            model_dir=self.model_dir,
            model_name=self.config.model,
            host=self.config.host,
            port=self.config.port,
            max_concurrent_requests=self.config.max_concurrent_requests,
            routing_policy=self.config.routing_policy,
            conditional_disaggregation=self.config.conditional_disaggregation,
            redis_url=self.config.redis_url,
            metrics_port=self.config.metrics_port,
            tls=self.config.tls,
            auth_token=self.config.auth_token,
            internal_tls=self.config.internal_tls,
            internal_auth_token=self.config.internal_auth_token,
            # A KV group (or tcp) is configured to be used: every pair moves KV over it.
            # Otherwise the topology decides per pair (shm between workers of this node).
            kv_backend=None
            if self.config.transport == TransportBackend.SHM
            else self.config.transport,
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
    await cluster.start()
    # After start: ray.init installs its own SIGTERM handler, which would replace ours.
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
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
