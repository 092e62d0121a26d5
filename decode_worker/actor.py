"""Decode worker process: one engine, its KV transports, one internal gRPC server.

The launcher runs `DecodeWorker` as a Ray actor (`ray.remote(DecodeWorker)`); tests may run it
in-process. Construction loads the model and starts serving; with a `kv_group` in the config
the launcher then calls `join_kv_group` on every worker at once; `stop()` ends the streams,
the engine and the server, and leaves the KV group. SIGTERM drains, stops and exits the
process (pdserve/worker_exit.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from decode_worker.config import DecodeWorkerConfig
from decode_worker.prefill_peers import PrefillPeers
from decode_worker.scheduler import DecodeScheduler
from decode_worker.server import DecodeServicer
from engine.builder import build_engine
from kv_transfer.factory import make_worker_transports
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

log = logging.getLogger(__name__)


class DecodeWorker:
    def __init__(self, config: DecodeWorkerConfig, model_dir: str) -> None:
        torch.set_num_threads(config.engine.num_threads)
        self._edge = WorkerEdge(new_epoch(), config, lambda: True)
        self._loop, runner = build_engine(
            config.engine, Path(model_dir), config.worker_id, self._edge.events.append
        )
        self._edge.attach(self._loop)
        device = DeviceKind(runner.kv_cache.device.type)  # a mock runner's stays on cpu
        self._peers = PrefillPeers(
            config.ack_timeout_s, config.internal_tls, config.internal_auth_token
        )
        self.metrics = WorkerMetrics(config.worker_id, config.role, self._stats)
        self._transports = make_worker_transports(
            config.transport,
            config.kv_group,
            verify_checksum=config.verify_checksum,
            checksum_sample_rate=config.checksum_sample_rate,
            request_send=self._peers.request_send,
            observer=self.metrics,
            faults=config.fault_plan,
            tcp=config.tcp_settings(serves=False),
            cuda=device is DeviceKind.CUDA,
        )
        self._scheduler = DecodeScheduler(
            self._loop,
            runner.kv_cache,
            runner.layout,
            self._transports,
            self._peers,
            transfer_timeout_s=config.transfer_timeout_s,
            page_wait_s=config.page_wait_s,
        )
        servicer = DecodeServicer(self._scheduler, self._edge, self._stats)
        self._server, self._identity = serve_worker(
            servicer,
            config,
            config.role,
            self._edge.epoch,
            runner.layout,
            self._transports.backends,
            self._edge.health.servicer,
            device=device,
        )
        self._metrics_port = serve_metrics(self.metrics, config)
        self._exit = WorkerExit(self.drain, self._stop, config.drain_timeout_s)
        self._exit.install()
        log.info("decode worker %s serving on %s", config.worker_id, self._identity.address)

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
        self._loop.stop()
        self._peers.close()
        self._transports.close()
        self.metrics.close()

    def _stats(self):
        engine = self._loop.call(lambda core: core.stats())
        transfers = TransferStats(
            transfers_in_flight=self._scheduler.num_transfers_in_flight,
            num_exports=self._transports.num_exports(),
            num_fetches=self._transports.num_fetches(),
            faults_injected=self._transports.faults_injected(),
        )
        gate = self._edge.gate
        serving = ServingState(gate.draining, gate.drained, self._metrics_port)
        self._edge.health.admission.note_integrity(engine.integrity_ok)
        return worker_stats_proto(self._identity, engine, transfers, serving)
