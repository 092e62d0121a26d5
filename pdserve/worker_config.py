"""What both worker roles' configs share: where a worker serves, its engine, its KV transports,
its metrics and its drain. Each role's config (prefill_worker/config.py, decode_worker/config.py)
subclasses it with its own env prefix, defaults and fields.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings

from engine.builder import EngineConfig
from kv_transfer.collective import KVGroupSpec
from kv_transfer.factory import held_backends
from kv_transfer.faults import FaultPlan
from kv_transfer.pages import TransportBackend
from kv_transfer.tcp import TcpSettings
from kv_transfer.tcp_server import TcpEndpoint
from pdserve.tls import TLSConfig, ssl_client_context, ssl_server_context

_WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "")


class WorkerConfig(BaseSettings):
    worker_id: str = Field(description="Unique worker name in the cluster.")
    host: str = Field("127.0.0.1", description="Address the internal gRPC server binds.")
    port: int = Field(0, ge=0, le=65535, description="0 picks a free port.")
    advertise_host: str = Field(
        "",
        description="Host routers and peers reach this worker at: its address is "
        "advertise_host:port (on Kubernetes the pod's IP); empty = `host`, which then must "
        "not be a wildcard (0.0.0.0, ::).",
    )
    engine: EngineConfig = Field(default_factory=EngineConfig)
    transport: TransportBackend = Field(
        TransportBackend.SHM, description="KV backend of requests that name none."
    )
    kv_group: KVGroupSpec | None = Field(
        None, description="This worker's place in the cluster's KV group (gloo/nccl), if any."
    )
    kv_tcp_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Hold the tcp KV backend: point-to-point streams to peers on any node, "
        "formed on demand (no KV group, so pools can grow). A prefill worker serves its "
        "exports on host:kv_tcp_port (0 picks a free port), dialled at advertise_host, over "
        "TLS when internal_tls is set. Unset = no tcp backend.",
    )
    verify_checksum: bool = Field(
        True,
        description="Checksum the KV it exports (xxh3) and verify what it fetches; a mismatch "
        "fails the transfer closed (TransferError, pages freed unused) and is counted.",
    )
    checksum_sample_rate: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="With verify_checksum: the share of exports checksummed (1 = every one; "
        "picked by transfer id), if checksumming each costs too much. A sampled-out transfer "
        "carries no checksum and is fetched unverified.",
    )
    transfer_faults: str = Field(
        "",
        description="Chaos testing only: KV fetch faults to inject, e.g. "
        "'fail=0.05,corrupt=0.01,stall=0.01,seed=7' (kinds fail, fail_after_complete, "
        "corrupt, delay, stall; delay_s, seed); empty = none.",
    )
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Prometheus /metrics HTTP port; 0 = ephemeral, unset = off.",
    )
    health_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Plaintext port on `host` serving only grpc.health.v1 (the same statuses "
        "as `port`), for probes that cannot speak TLS; 0 = ephemeral, unset = off.",
    )
    drain_quiet_s: float = Field(
        3.0,
        gt=0,
        description="A draining worker counts as drained only after this long without a new "
        "request: longer than a router's stats period, so routes already chosen arrive first.",
    )
    drain_timeout_s: float = Field(
        60.0,
        gt=0,
        description="After SIGTERM the worker drains for at most this long, then stops and "
        "exits drained or not.",
    )
    health_period_s: float = Field(
        0.25, gt=0, description="How often grpc.health.v1 status is re-evaluated."
    )
    wedged_after_s: float = Field(
        10.0,
        gt=0,
        description="Requests waiting this long without one engine step finishing mean the "
        "page pool cannot admit work: health turns NOT_SERVING until it moves again.",
    )
    max_grpc_threads: int = Field(64, ge=4, description="Concurrent internal RPCs.")
    control_grpc_threads: int = Field(
        16,
        ge=2,
        description="Of max_grpc_threads, how many Prefill/Decode calls never take: they serve "
        "the control calls (stats, lease acks and renewals, aborts, health, page-event "
        "streams — one per router). Beyond the rest a Prefill/Decode is refused "
        "RESOURCE_EXHAUSTED (the router routes it elsewhere) instead of queueing.",
    )
    internal_tls: TLSConfig | None = Field(
        None,
        description="TLS of the internal edge: this worker's server (cert_file, key_file; "
        "require_client_cert = mTLS against ca_file) and its channels to peers; unset = "
        "plaintext.",
    )
    internal_auth_token: SecretStr | None = Field(
        None,
        description="Bearer token every internal call must carry, and that this worker "
        "sends to its peers; unset = none.",
    )

    @model_validator(mode="after")
    def _threads_left_for_work(self) -> WorkerConfig:
        if self.control_grpc_threads >= self.max_grpc_threads:
            raise ValueError(
                f"control_grpc_threads: {self.control_grpc_threads} leaves none of "
                f"max_grpc_threads ({self.max_grpc_threads}) for Prefill/Decode"
            )
        return self

    @model_validator(mode="after")
    def _reachable(self) -> WorkerConfig:
        if not self.advertise_host and self.host in _WILDCARD_HOSTS:
            raise ValueError(
                f"advertise_host: needed when host is {self.host!r}, which no peer can dial"
            )
        return self

    @property
    def advertised_host(self) -> str:
        """The host of the address this worker reports (GetStats) and is dialled at."""
        return self.advertise_host or self.host

    @model_validator(mode="after")
    def _holds_its_transport(self) -> WorkerConfig:
        # Whether the KV cache is on CUDA (cuda_ipc held) is known once the engine is built
        # (device auto; a mock runner's stays on cpu): only a cache surely on cpu fails here,
        # the rest where the worker builds its transports, with the same error.
        may_be_cuda = self.engine.device != "cpu" and self.engine.runner != "mock"
        held_backends(self.transport, self.kv_group, self.kv_tcp_port is not None, may_be_cuda)
        return self

    def tcp_settings(self, serves: bool) -> TcpSettings | None:
        """The tcp backend of this worker (None without kv_tcp_port); a source (`serves`)
        listens, a worker that only fetches does not. Build it inside the worker's process:
        it holds SSL contexts."""
        if self.kv_tcp_port is None:
            return None
        name = self.internal_tls.server_name if self.internal_tls is not None else None
        client_ssl = ssl_client_context(self.internal_tls)
        if not serves:
            return TcpSettings(client_ssl=client_ssl, server_name=name)
        return TcpSettings(
            TcpEndpoint(self.host, self.kv_tcp_port, self.advertised_host),
            ssl_server_context(self.internal_tls),
            client_ssl,
            name,
        )

    @field_validator("transfer_faults")
    @classmethod
    def _faults_parse(cls, spec: str) -> str:
        FaultPlan.parse(spec)  # a bad spec fails here, naming its key
        return spec

    @property
    def fault_plan(self) -> FaultPlan | None:
        """`transfer_faults` parsed; None when it injects nothing."""
        plan = FaultPlan.parse(self.transfer_faults)
        return plan if plan.is_active else None

    @model_validator(mode="after")
    def _can_serve_tls(self) -> WorkerConfig:
        if self.internal_tls is not None and not self.internal_tls.can_serve:
            raise ValueError("internal_tls.cert_file: a worker's server needs a certificate")
        return self
