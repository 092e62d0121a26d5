"""Decode worker configuration (built once by the launcher, read-only afterwards)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from kv_transfer.pages import Role
from pdserve.worker_config import WorkerConfig


class DecodeWorkerConfig(WorkerConfig):
    model_config = SettingsConfigDict(env_prefix="PDSERVE_DECODE_", frozen=True, extra="forbid")

    worker_id: str = Field("decode-0", description="Unique worker name in the cluster.")
    role: Role = Field(
        Role.DECODE, description="decode, or both (also prefills colocated requests)."
    )
    transfer_timeout_s: float = Field(10.0, gt=0, description="Deadline of one KV fetch.")
    page_wait_s: float = Field(5.0, ge=0, description="How long an arrival waits for free pages.")
    ack_timeout_s: float = Field(
        2.0, gt=0, description="Deadline of the ReleaseLease ack to a prefill worker."
    )
    max_grpc_threads: int = Field(128, ge=4, description="Concurrent internal RPCs (streams).")
