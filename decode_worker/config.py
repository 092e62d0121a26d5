"""Decode worker configuration (built once by the launcher, read-only afterwards)."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.builder import EngineConfig
from kv_transfer.collective import KVGroupSpec
from kv_transfer.factory import held_backends
from kv_transfer.pages import Role, TransportBackend


class DecodeWorkerConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PDSERVE_DECODE_", frozen=True, extra="forbid")

    worker_id: str = Field("decode-0", description="Unique worker name in the cluster.")
    role: Role = Field(
        Role.DECODE, description="decode, or both (also prefills colocated requests)."
    )
    host: str = Field("127.0.0.1", description="Address the internal gRPC server binds.")
    port: int = Field(0, ge=0, le=65535, description="0 picks a free port.")
    engine: EngineConfig = Field(default_factory=EngineConfig)
    transport: TransportBackend = Field(
        TransportBackend.SHM, description="Default KV backend (fetches follow each handle's)."
    )
    kv_group: KVGroupSpec | None = Field(
        None, description="This worker's place in the cluster's KV group (gloo/nccl), if any."
    )
    verify_checksum: bool = Field(True, description="Verify each fetched KV buffer's checksum.")
    transfer_timeout_s: float = Field(10.0, gt=0, description="Deadline of one KV fetch.")
    page_wait_s: float = Field(5.0, ge=0, description="How long an arrival waits for free pages.")
    ack_timeout_s: float = Field(
        2.0, gt=0, description="Deadline of the ReleaseLease ack to a prefill worker."
    )
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Prometheus /metrics HTTP port; 0 = ephemeral, unset = off.",
    )
    drain_quiet_s: float = Field(
        3.0,
        gt=0,
        description="A draining worker counts as drained only after this long without a new "
        "request: longer than a router's stats period, so routes already chosen arrive first.",
    )
    max_grpc_threads: int = Field(128, ge=4, description="Concurrent internal RPCs (streams).")

    @model_validator(mode="after")
    def _holds_its_transport(self) -> DecodeWorkerConfig:
        held_backends(self.transport, self.kv_group)
        return self
