"""The local cluster's configuration: flags > environment (PDSERVE_*) > YAML file > defaults.

Read once by the CLI into a frozen object; nothing below the CLI reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.builder import DEFAULT_MODEL_CACHE
from kv_transfer.pages import TransportBackend


class ClusterConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PDSERVE_", frozen=True, extra="forbid")

    model: str = Field("smollm2-135m", description="Model alias, local HF directory or .gguf file.")
    model_cache_dir: Path = Field(
        DEFAULT_MODEL_CACHE, description="Where converted models are kept."
    )
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="Weights and KV dtype.")
    num_prefill: int = Field(1, ge=0, description="Prefill workers.")
    num_decode: int = Field(1, ge=0, description="Decode workers.")
    num_colocated: int = Field(0, ge=0, description="Workers that prefill and decode (role both).")
    host: str = Field("127.0.0.1", description="Router bind address.")
    port: int = Field(50051, ge=0, le=65535, description="Router port (0 picks a free one).")
    page_size: int = Field(16, ge=1, le=1024, description="Tokens per KV page.")
    kv_cache_mib: int = Field(512, ge=1, description="KV cache of each worker.")
    threads_per_worker: int = Field(1, ge=1, description="torch threads of each worker.")
    max_num_batched_tokens: int = Field(512, ge=1, description="Token budget per engine step.")
    transport: TransportBackend = Field(
        TransportBackend.SHM,
        description="KV transfer backend: shm (pairs chosen by topology: shm on one node), or "
        "gloo (every worker joins one KV group and every pair uses it).",
    )
    lease_ttl_s: float = Field(30.0, gt=0, description="Pins of handed-off pages without an ack.")
    max_concurrent_requests: int = Field(256, ge=1, description="Router admission bound.")
    ray_address: str | None = Field(
        None, description="Join this Ray cluster instead of starting one."
    )

    @model_validator(mode="after")
    def _has_a_route(self) -> ClusterConfig:
        disaggregated = self.num_prefill > 0 and self.num_decode > 0
        if not disaggregated and self.num_colocated == 0:
            raise ValueError("num_prefill/num_decode: need ≥ 1 of each, or num_colocated ≥ 1")
        return self

    @model_validator(mode="after")
    def _local_transport(self) -> ClusterConfig:
        # CPU workers in separate processes: local is in-process only, cuda_ipc/nccl need GPUs.
        if self.transport not in (TransportBackend.SHM, TransportBackend.GLOO):
            raise ValueError(
                f"transport: a local cluster moves KV over shm or gloo, not {self.transport}"
            )
        return self

    @classmethod
    def load(cls, config_file: Path | None = None, **flags: Any) -> ClusterConfig:
        """Merges the sources; flags that are None count as not given."""
        file_values = _read_yaml(config_file) if config_file else {}
        unknown = set(file_values) - set(cls.model_fields)
        if unknown:
            raise ValueError(f"{config_file}: unknown settings {sorted(unknown)}")
        from_env = cls()  # defaults and PDSERVE_* only; fields_set names what the env set
        env_values = {key: getattr(from_env, key) for key in from_env.model_fields_set}
        given = {key: value for key, value in flags.items() if value is not None}
        return cls(**{**file_values, **env_values, **given})


def _read_yaml(path: Path) -> dict[str, Any]:
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of settings")
    return values
