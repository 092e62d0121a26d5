"""Prefill worker configuration (built once by the launcher, read-only afterwards)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from pdserve.worker_config import WorkerConfig


class PrefillWorkerConfig(WorkerConfig):
    model_config = SettingsConfigDict(env_prefix="PDSERVE_PREFILL_", frozen=True, extra="forbid")

    worker_id: str = Field("prefill-0", description="Unique worker name in the cluster.")
    lease_ttl_s: float = Field(
        30.0, gt=0, description="How long handed-off pages stay pinned unacked."
    )
