"""What both worker roles share at their edge: identity, stats message, gRPC server start
(the internal server and, with `health_port`, the plaintext health-only one).

Both worker packages import this module; they never import each other.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1.health import HealthServicer
from pydantic import SecretStr

from engine.core import EngineStats
from engine.request import SamplingParams
from kv_transfer.faults import FaultKind
from kv_transfer.pages import KVLayout, Role, TransportBackend
from kv_transfer.topology import DeviceKind
from kv_transfer.wire import layout_to_proto
from pdserve.auth import TokenServerInterceptor
from pdserve.channels import message_size_options
from pdserve.health_port import start_health_server
from pdserve.metrics_export import MetricsExporter
from pdserve.tls import TLSConfig, bind
from pdserve.v1 import generation_pb2, worker_pb2, worker_pb2_grpc
from pdserve.worker_config import WorkerConfig

# Internal messages carry KV handles, never KV bytes, but prompts can be long.
MAX_MESSAGE_BYTES = 64 * 2**20


@dataclass(frozen=True, slots=True)
class WorkerIdentity:
    """Who a worker is; a restarted worker gets a new epoch."""

    worker_id: str
    role: Role
    address: str
    epoch: int
    pid: int
    node: str
    layout: KVLayout
    transport: TransportBackend  # the default KV backend, for requests that name none
    kv_backends: tuple[TransportBackend, ...]  # every backend it can export or fetch through
    device: DeviceKind  # where its KV cache lives: the router's topology of its pairs


def new_epoch() -> int:
    return time.time_ns()


@dataclass(frozen=True, slots=True)
class ServingState:
    draining: bool = False
    drained: bool = False
    metrics_port: int = 0


@dataclass(frozen=True, slots=True)
class TransferStats:
    leases_outstanding: int = 0
    transfers_in_flight: int = 0
    num_exports: Mapping[TransportBackend, int] = field(default_factory=dict)
    num_fetches: Mapping[TransportBackend, int] = field(default_factory=dict)
    faults_injected: Mapping[FaultKind, int] = field(default_factory=dict)  # chaos testing
    leases_expired: int = 0  # ended unacked: the decode side never pulled or never acked


def worker_stats_proto(
    identity: WorkerIdentity,
    engine: EngineStats,
    transfers: TransferStats,
    serving: ServingState = ServingState(),
) -> worker_pb2.WorkerStats:
    info = generation_pb2.WorkerInfo(
        worker_id=identity.worker_id,
        role=identity.role.value,
        address=identity.address,
        pid=identity.pid,
        node=identity.node,
        epoch=identity.epoch,
        alive=True,
        pages_in_use=engine.num_pages_in_use + engine.num_pages_cached,
        pages_total=engine.num_pages_total,
        queue_len=engine.num_waiting,
        running=engine.num_running,
        leases_outstanding=transfers.leases_outstanding,
        transfers_in_flight=transfers.transfers_in_flight,
        request_pages=engine.num_pages_in_use,
        integrity_ok=engine.integrity_ok,
        transport=identity.transport.value,
        draining=serving.draining,
        queued_prefill_tokens=engine.num_queued_prefill_tokens,
        drained=serving.drained,
        metrics_port=serving.metrics_port,
        device=identity.device.value,
    )
    return worker_pb2.WorkerStats(
        info=info,
        layout=layout_to_proto(identity.layout),
        kv_backends=[backend.value for backend in identity.kv_backends],
        kv_exports={backend.value: n for backend, n in transfers.num_exports.items()},
        kv_fetches={backend.value: n for backend, n in transfers.num_fetches.items()},
        faults_injected={kind.value: n for kind, n in transfers.faults_injected.items()},
        leases_expired=transfers.leases_expired,
    )


def sampling_from_proto(msg: worker_pb2.WorkerSampling) -> SamplingParams:
    """The router validated these values; the worker takes them as they are."""
    return SamplingParams(
        temperature=msg.temperature,
        top_p=msg.top_p,
        top_k=msg.top_k,
        seed=msg.seed if msg.has_seed else None,
        max_tokens=msg.max_tokens,
        stop_token_ids=tuple(msg.stop_token_ids),
        ignore_eos=msg.ignore_eos,
    )


def serve_metrics(metrics: MetricsExporter, config: WorkerConfig) -> int:
    """Starts /metrics when the config asks for it; returns the bound port (0: off)."""
    if config.metrics_port is None:
        return 0
    return metrics.serve_http(config.host, config.metrics_port)


@dataclass(frozen=True, slots=True)
class WorkerServers:
    """A worker's running gRPC servers: the internal one and, with health_port, the
    health-only one (pdserve/health_port.py)."""

    internal: grpc.Server
    health: grpc.Server | None = None
    health_port: int = 0  # the bound health-only port; 0 when off

    def stop(self, grace_s: float) -> None:
        """Blocks until both stopped; calls in flight get `grace_s`, and health answers
        (NOT_SERVING, once the worker's health stopped) until the internal server is down."""
        self.internal.stop(grace_s).wait()
        if self.health is not None:
            self.health.stop(0).wait()


def serve_worker(
    servicer: worker_pb2_grpc.WorkerServicer,
    config: WorkerConfig,
    role: Role,
    epoch: int,
    layout: KVLayout,
    kv_backends: tuple[TransportBackend, ...],
    health: HealthServicer,
    *,
    device: DeviceKind,
) -> tuple[WorkerServers, WorkerIdentity]:
    """Starts the internal gRPC server for `servicer` and `health` (grpc.health.v1), and the
    health-only one when config.health_port is set; describes the running worker, whose KV
    cache lives on `device`."""

    def register(server: grpc.Server) -> None:
        worker_pb2_grpc.add_WorkerServicer_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)

    server, port = start_grpc_server(
        register,
        config.host,
        config.port,
        config.max_grpc_threads,
        config.internal_tls,
        config.internal_auth_token,
    )
    servers = WorkerServers(server)
    if config.health_port is not None:
        servers = WorkerServers(
            server, *start_health_server(health, config.host, config.health_port)
        )
    identity = WorkerIdentity(
        worker_id=config.worker_id,
        role=role,
        address=f"{config.advertised_host}:{port}",
        epoch=epoch,
        pid=os.getpid(),
        node=socket.gethostname(),
        layout=layout,
        transport=config.transport,
        kv_backends=kv_backends,
        device=device,
    )
    return servers, identity


def start_grpc_server(
    register,
    host: str,
    port: int,
    max_workers: int,
    tls: TLSConfig | None = None,
    token: SecretStr | None = None,
) -> tuple[grpc.Server, int]:
    """Starts a threaded gRPC server; `register(server)` adds the servicers. Returns the bound
    port. With `tls` it serves only TLS; with `token` every call must carry it."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        interceptors=[TokenServerInterceptor(token)] if token is not None else None,
        options=[
            *message_size_options(MAX_MESSAGE_BYTES),
            # A router gone without closing its streams (a partition) is noticed, and the
            # thread serving its WatchPageEvents stream freed.
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
        ],
    )
    register(server)
    bound = bind(server, f"{host}:{port}", tls)
    server.start()
    return server, bound
