"""Prefill worker process: one engine, its KV transports, one internal gRPC server.

The launcher runs `PrefillWorker` as a Ray actor (`ray.remote(PrefillWorker)`); tests may run
it in-process. Construction loads the model and starts serving; with a `kv_group` in the
config the launcher then calls `join_kv_group` on every worker at once; `stop()` releases every
lease and export, stops the engine and the server, and leaves the KV group. SIGTERM drains,
stops and exits the process (pdserve/worker_exit.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from engine.builder import build_engine
from kv_transfer.factory import make_worker_transports
from kv_transfer.pages import Role
from kv_transfer.topology import DeviceKind
from pdserve.worker_edge import WorkerEdge
from pdserve.worker_exit import WorkerExit
from pdserve.worker_metrics import WorkerMetrics
from pdserve.workers import (
    ServingState,
    TransferStats,
    WorkerIdentity,
    new_epoch,
    serve_metrics,
    serve_worker,
    worker_stats_proto,
)
from prefill_worker.config import PrefillWorkerConfig
from prefill_worker.leases import LeaseTable
from prefill_worker.scheduler import HandleSource, PrefillScheduler
from prefill_worker.server import PrefillServicer

log = logging.getLogger(__name__)


class PrefillWorker:
    def __init__(self, config: PrefillWorkerConfig, model_dir: str) -> None:
        torch.set_num_threads(config.engine.num_threads)
        epoch = new_epoch()
        self._edge = WorkerEdge(epoch, config, self._holds_nothing)
        self._loop, runner = build_engine(
            config.engine, Path(model_dir), config.worker_id, self._edge.events.append
        )
        self._edge.attach(self._loop)
        device = DeviceKind(runner.kv_cache.device.type)  # a mock runner's stays on cpu
        # A prefill worker only exports: it never asks a peer to send (no request_send).
        self.metrics = WorkerMetrics(config.worker_id, Role.PREFILL, self._stats)
        self._transports = make_worker_transports(
            config.transport,
            config.kv_group,
            verify_checksum=config.verify_checksum,
            checksum_sample_rate=config.checksum_sample_rate,
            observer=self.metrics,
            faults=config.fault_plan,
            tcp=config.tcp_settings(serves=True),
            cuda=device is DeviceKind.CUDA,
        )
        self._leases = LeaseTable(self._transports, self._free_pages, config.lease_ttl_s)
        self._loop.add_periodic(lambda core: self._leases.expire())
        source = HandleSource(config.worker_id, epoch, runner.layout, config.lease_ttl_s)
        scheduler = PrefillScheduler(
            self._loop, runner.kv_cache, self._transports, self._leases, source
        )
        servicer = PrefillServicer(
            scheduler, self._leases, self._transports, self._edge, self._stats
        )
        self._server, self._identity = serve_worker(
            servicer,
            config,
            Role.PREFILL,
            epoch,
            runner.layout,
            self._transports.backends,
            self._edge.health.servicer,
            device=device,
        )
        self._metrics_port = serve_metrics(self.metrics, config)
        self._exit = WorkerExit(self.drain, self._stop, config.drain_timeout_s)
        self._exit.install()
        log.info("prefill worker %s serving on %s", config.worker_id, self._identity.address)

    def identity(self) -> WorkerIdentity:
        return self._identity

    def join_kv_group(self) -> None:
        """Blocks until every worker of the KV group joined; a no-op without a group."""
        self._transports.join_group()

    def drain(self) -> bool:
        """Starts draining (idempotent); returns whether it is drained (safe to stop)."""
        return self._edge.drain().drained

    def stop(self, grace_s: float = 1.0) -> None:
        self._exit.stop(grace_s)

    def _stop(self, grace_s: float) -> None:
        self._edge.close()
        self._server.stop(grace_s)
        self._leases.release_all()
        self._loop.stop()
        self._transports.close()
        self.metrics.close()

    def _holds_nothing(self) -> bool:
        return len(self._leases) == 0 and self._transports.num_exported() == 0

    def _free_pages(self, page_ids: list[int]) -> None:
        self._loop.post(lambda core: core.pool.free(page_ids))

    def _stats(self):
        engine = self._loop.call(lambda core: core.stats())
        transfers = TransferStats(
            leases_outstanding=len(self._leases),
            transfers_in_flight=self._transports.num_exported(),
            num_exports=self._transports.num_exports(),
            num_fetches=self._transports.num_fetches(),
            faults_injected=self._transports.faults_injected(),
            leases_expired=self._leases.num_expired,
        )
        gate = self._edge.gate
        serving = ServingState(gate.draining, gate.drained, self._metrics_port)
        self._edge.health.admission.note_integrity(engine.integrity_ok)
        return worker_stats_proto(self._identity, engine, transfers, serving)
