"""`pdserve worker`'s settings: one worker actor of a role, its Ray cluster and its registry.

One model for the service: every field of the role configs (prefill_worker/config.py,
decode_worker/config.py, their shared pdserve/worker_config.py — inherited, not repeated)
plus what the process itself needs (role, Ray address, Redis registry). The engine settings
are given flat, in `pdserve up`'s vocabulary (pdserve/config.py: model, dtype, page_size,
kv_cache_mib, threads_per_worker, …; their fields are ClusterConfig's), and folded into the
role config's `engine`; the Helm chart's worker.yaml uses the same keys. Read from flags > env
PDSERVE_* (PDSERVE_KV_CACHE_MIB; sections as PDSERVE_INTERNAL_TLS__CA_FILE) > `--config` YAML
> defaults (pdserve/layered_config.py); `actor_config()` is the config the actor runs with.
"""

from __future__ import annotations

import copy
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from decode_worker.config import DecodeWorkerConfig
from engine.builder import EngineConfig, RunnerKind
from kv_transfer.pages import Role
from pdserve.config import ClusterConfig
from pdserve.token_files import InternalTokenFile
from pdserve.worker_main import DEFAULT_KV_PORT, DEFAULT_PORT
from prefill_worker.config import PrefillWorkerConfig

REDIS_URL_ENV = "PDSERVE_REDIS_URL"
# Flat setting (pdserve up's name) → EngineConfig field.
ENGINE_KEYS = {
    "model": "model",
    "model_cache_dir": "model_cache_dir",
    "dtype": "dtype",
    "device": "device",
    "attention": "attention",
    "cuda_graphs": "cuda_graphs",
    "page_size": "page_size",
    "kv_cache_mib": "kv_cache_mib",
    "threads_per_worker": "num_threads",
    "max_num_batched_tokens": "max_num_batched_tokens",
    "runner": "runner",
    "mock_prefill_s_per_token": "mock_prefill_s_per_token",
    "mock_decode_s_per_step": "mock_decode_s_per_step",
}


def _as_in_up(name: str) -> Any:
    """`pdserve up`'s field `name` (type checks, default, description), for a flat setting."""
    return copy.copy(ClusterConfig.model_fields[name])


class WorkerServiceConfig(InternalTokenFile, DecodeWorkerConfig, PrefillWorkerConfig):
    """Cross-checked at construction, the role's config included (`actor_config`)."""

    model_config = SettingsConfigDict(
        env_prefix="PDSERVE_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    role: Role = Field(description="prefill, decode or both (prefills and decodes).")
    worker_id: str = Field(
        "",
        description="Unique worker name in the cluster; empty = <role>-<host name> (on "
        "Kubernetes the pod's name, unique among live pods).",
    )
    port: int = Field(DEFAULT_PORT, ge=0, le=65535, description="Internal gRPC port.")
    kv_tcp_port: int | None = Field(
        DEFAULT_KV_PORT,
        ge=0,
        le=65535,
        description="The tcp KV backend, which pairs workers of different machines (no KV "
        "group): a prefill worker serves exported KV on host:kv_tcp_port; null = none, "
        "which leaves only peers of this machine (shm).",
    )
    max_grpc_threads: int | None = Field(
        None,
        ge=4,
        description="Concurrent internal RPCs; unset = the role's default (prefill 64, "
        "decode and both 128).",
    )
    ray_address: str | None = Field(
        None,
        description="GCS address (host:port) of the Ray cluster to place the worker actor "
        "in; this machine joins it (`ray start`) unless a Ray node of it already runs here. "
        "Unset = a Ray instance of this process's own (one machine, for trying it out).",
    )
    redis_url: str = Field(
        "",
        description="Redis holding the shared worker registry the routers read "
        "(redis://[:password@]host:port/db, rediss:// for TLS). Required: routers find "
        f"this worker only there. Env {REDIS_URL_ENV}.",
    )
    registry_ttl_s: float = Field(
        10.0,
        gt=0,
        description="The worker's registry record expires this long after its last refresh "
        "(by it or by a router's poll). Give routers the same registry_ttl_s.",
    )
    registry_refresh_s: float = Field(
        2.0,
        gt=0,
        description="How often the worker rewrites its record (its load, and the TTL); at "
        "most a third of registry_ttl_s, so two lost refreshes do not expire it.",
    )
    model: str = _as_in_up("model")
    model_cache_dir: Path = _as_in_up("model_cache_dir")
    dtype: Literal["float32", "bfloat16"] = _as_in_up("dtype")
    device: Literal["auto", "cpu", "cuda"] = _as_in_up("device")
    attention: Literal["auto", "torch", "triton"] = _as_in_up("attention")
    cuda_graphs: bool = _as_in_up("cuda_graphs")
    page_size: int = _as_in_up("page_size")
    kv_cache_mib: int = _as_in_up("kv_cache_mib")
    threads_per_worker: int = _as_in_up("threads_per_worker")
    max_num_batched_tokens: int = _as_in_up("max_num_batched_tokens")
    runner: RunnerKind = _as_in_up("runner")
    mock_prefill_s_per_token: float = _as_in_up("mock_prefill_s_per_token")
    mock_decode_s_per_step: float = _as_in_up("mock_decode_s_per_step")
    engine: EngineConfig = Field(
        default_factory=EngineConfig,
        description="Built from the flat engine settings above; not a setting of its own.",
    )

    @model_validator(mode="before")
    @classmethod
    def _engine_is_not_a_setting(cls, data: Any) -> Any:
        if isinstance(data, dict) and "engine" in data:
            raise ValueError(
                "engine: give the engine settings flat, as `pdserve up` takes them "
                f"({', '.join(ENGINE_KEYS)})"
            )
        return data

    @model_validator(mode="after")
    def _engine_from_flat_settings(self) -> WorkerServiceConfig:
        engine = EngineConfig(**{field: getattr(self, key) for key, field in ENGINE_KEYS.items()})
        object.__setattr__(self, "engine", engine)  # frozen: set once, here
        return self

    @model_validator(mode="after")
    def _threads_left_for_work(self) -> WorkerServiceConfig:
        return self  # checked on the role's config, whose default applies (`actor_config`)

    @model_validator(mode="after")
    def _service_checks(self) -> WorkerServiceConfig:
        if not self.redis_url:
            raise ValueError(
                f"redis_url: set {REDIS_URL_ENV} — routers discover workers only through "
                "the shared registry"
            )
        if self.registry_refresh_s * 3 > self.registry_ttl_s:
            raise ValueError(
                f"registry_refresh_s: {self.registry_refresh_s} s is more than a third of "
                f"registry_ttl_s ({self.registry_ttl_s} s)"
            )
        if self.kv_group is not None:
            raise ValueError("kv_group: a `pdserve worker` joins no KV group (gloo/nccl)")
        self.actor_config()  # the role's own checks, e.g. control_grpc_threads
        return self

    @property
    def registered_id(self) -> str:
        return self.worker_id or f"{self.role.value}-{socket.gethostname()}"

    def actor_config(self) -> PrefillWorkerConfig | DecodeWorkerConfig:
        """The role's config, every field given (so no PDSERVE_PREFILL_*/DECODE_* is read)."""
        target = PrefillWorkerConfig if self.role is Role.PREFILL else DecodeWorkerConfig
        values = {name: getattr(self, name) for name in target.model_fields}
        values["worker_id"] = self.registered_id
        if self.max_grpc_threads is None:
            values["max_grpc_threads"] = target.model_fields["max_grpc_threads"].default
        return target(**values)
