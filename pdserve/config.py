"""The local cluster's configuration: flags > environment (PDSERVE_*) > YAML file > defaults.

Read once by the CLI into a frozen object; nothing below the CLI reads the environment.

The pools are sized either directly (num_prefill, num_decode) or by `ratio` with
`num_workers`, which set num_prefill and num_decode (see `split_ratio`); num_colocated adds
to either. The two ways exclude each other: when both are given, the one from the
higher-precedence source wins (`load`); given together in one source, it is an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from engine.builder import DEFAULT_MODEL_CACHE, RunnerKind
from kv_transfer.faults import FaultPlan
from kv_transfer.pages import TransportBackend
from pdserve.ratio import parse_ratio, split_ratio
from pdserve.tls import TLSConfig
from pdserve.token_files import TokenFiles
from router.config import PolicyName

_DIRECT_SIZES = ("num_prefill", "num_decode")
_RATIO_SIZES = ("ratio", "num_workers")


class ClusterConfig(TokenFiles, BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PDSERVE_", frozen=True, extra="forbid")

    model: str = Field("smollm2-135m", description="Model alias, local HF directory or .gguf file.")
    model_cache_dir: Path = Field(
        DEFAULT_MODEL_CACHE, description="Where converted models are kept."
    )
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="Weights and KV dtype.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Workers' device; auto: cuda when a GPU is visible to them."
    )
    attention: Literal["auto", "torch", "triton"] = Field(
        "auto", description="Attention backend; auto: triton on cuda, torch elsewhere."
    )
    cuda_graphs: bool = Field(True, description="Replay decode steps from CUDA graphs on cuda.")
    num_prefill: int = Field(1, ge=0, description="Prefill workers.")
    num_decode: int = Field(1, ge=0, description="Decode workers.")
    num_colocated: int = Field(0, ge=0, description="Workers that prefill and decode (role both).")
    ratio: str | None = Field(
        None,
        description="Prefill:decode ratio, e.g. 1:3; with num_workers it sets num_prefill and "
        "num_decode instead of giving them.",
    )
    num_workers: int | None = Field(
        None, ge=2, description="Prefill plus decode workers to split by `ratio`."
    )
    host: str = Field("127.0.0.1", description="Router bind address.")
    port: int = Field(50051, ge=0, le=65535, description="Router port (0 picks a free one).")
    page_size: int = Field(16, ge=1, le=1024, description="Tokens per KV page.")
    kv_cache_mib: int = Field(512, ge=1, description="KV cache of each worker.")
    threads_per_worker: int = Field(1, ge=1, description="torch threads of each worker.")
    max_num_batched_tokens: int = Field(512, ge=1, description="Token budget per engine step.")
    runner: RunnerKind = Field(
        "model",
        description="Workers' model runner: model (the weights), or mock (no weights; tokens a "
        "hash of the context read through the KV cache, for tests and chaos runs).",
    )
    mock_prefill_s_per_token: float = Field(
        0.0, ge=0, description="Mock runner: modelled seconds per prompt token."
    )
    mock_decode_s_per_step: float = Field(
        0.0, ge=0, description="Mock runner: modelled seconds per engine step."
    )
    transport: TransportBackend = Field(
        TransportBackend.SHM,
        description="KV transfer backend: shm (pairs chosen by topology: shm on one node, "
        "cuda_ipc between two CUDA caches of one node), gloo (every worker joins one KV group "
        "and every pair uses it), tcp (every worker holds point-to-point streams and every "
        "pair uses them; no group, so pools can grow), or cuda_ipc (CUDA workers only).",
    )
    lease_ttl_s: float = Field(30.0, gt=0, description="Pins of handed-off pages without an ack.")
    transfer_timeout_s: float = Field(
        10.0, gt=0, description="Deadline of one KV fetch on a decode worker."
    )
    verify_checksum: bool = Field(
        True,
        description="Workers checksum the KV they export and verify what they fetch; a "
        "mismatch fails the request closed.",
    )
    checksum_sample_rate: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="The share of transfers checksummed (1 = every one), if that costs too much.",
    )
    transfer_faults: str = Field(
        "",
        description="Chaos testing only: KV fetch faults every worker injects, e.g. "
        "'fail=0.05,corrupt=0.01,stall=0.01,seed=7' (kv_transfer/faults.py); empty = none.",
    )
    max_concurrent_requests: int = Field(256, ge=1, description="Router admission bound.")
    routing_policy: PolicyName = Field(
        PolicyName.PREFIX_AWARE,
        description="How the router picks workers: prefix_aware, least_load or round_robin.",
    )
    conditional_disaggregation: bool = Field(
        True,
        description="Decode workers may prefill a short (or mostly cached) prompt themselves "
        "instead of taking it from a prefill worker.",
    )
    redis_url: str = Field(
        "",
        description="Redis for the router's shared registry and prefix index "
        "(redis://[:password@]host:port/db, rediss:// for TLS); empty = in-memory.",
    )
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="The router's Prometheus /metrics HTTP port; 0 = ephemeral, unset = off.",
    )
    worker_metrics: bool = Field(
        False,
        description="Every worker serves /metrics on an ephemeral port (`pdserve status` "
        "shows which).",
    )
    drain_quiet_s: float = Field(
        3.0,
        gt=0,
        description="A draining worker counts as drained after this long without a new "
        "request (longer than the router's 1 s stats period).",
    )
    drain_timeout_s: float = Field(
        60.0,
        gt=0,
        description="`pdserve scale` stops a worker this long after asking it to drain, "
        "drained or not (the reply says which).",
    )
    ray_address: str | None = Field(
        None, description="Join this Ray cluster instead of starting one."
    )
    tls: TLSConfig | None = Field(
        None,
        description="TLS of the public API (cert_file, key_file; ca_file + require_client_cert "
        "for mTLS); unset = plaintext.",
    )
    auth_token: SecretStr | None = Field(
        None, description="Bearer token every public call must carry; unset = none asked."
    )
    internal_tls: TLSConfig | None = Field(
        None,
        description="TLS between router and workers and between workers, the same files on "
        "every side (the certificate needs both server and client use for mTLS); unset = "
        "plaintext.",
    )
    internal_auth_token: SecretStr | None = Field(
        None, description="Bearer token of every router → worker and worker → worker call."
    )

    @model_validator(mode="before")
    @classmethod
    def _sizes_from_ratio(cls, data: Any) -> Any:
        """ratio + num_workers → num_prefill + num_decode. A size given as None counts as not
        given (how `load` lets a higher source's ratio replace a lower one's sizes)."""
        if not isinstance(data, dict):
            return data
        data = {k: v for k, v in data.items() if not (k in _DIRECT_SIZES and v is None)}
        ratio, total = data.get("ratio"), data.get("num_workers")
        if ratio is None and total is None:
            return data
        if ratio is None:
            raise ValueError("num_workers: needs a ratio to split it by (e.g. ratio 1:3)")
        if total is None:
            raise ValueError(f"ratio: needs num_workers, the total to split by {ratio}")
        given = [key for key in _DIRECT_SIZES if key in data]
        if given:
            raise ValueError(f"ratio: give ratio with num_workers or {'/'.join(given)}, not both")
        data["num_prefill"], data["num_decode"] = split_ratio(
            parse_ratio(ratio), _parse_total(total)
        )
        return data

    @model_validator(mode="after")
    def _has_a_route(self) -> ClusterConfig:
        disaggregated = self.num_prefill > 0 and self.num_decode > 0
        if not disaggregated and self.num_colocated == 0:
            raise ValueError("num_prefill/num_decode: need ≥ 1 of each, or num_colocated ≥ 1")
        return self

    @model_validator(mode="after")
    def _local_transport(self) -> ClusterConfig:
        # Workers in separate processes of one node: local is in-process only, nccl spans
        # nodes; cuda_ipc needs the KV caches on CUDA (with device auto, a worker that ends up
        # on cpu fails at its start, naming `transport`).
        if self.transport not in (
            TransportBackend.SHM,
            TransportBackend.GLOO,
            TransportBackend.TCP,
            TransportBackend.CUDA_IPC,
        ):
            raise ValueError(
                "transport: a local cluster moves KV over shm, gloo, tcp or cuda_ipc, "
                f"not {self.transport}"
            )
        if self.transport == TransportBackend.CUDA_IPC and self.device == "cpu":
            raise ValueError("transport: cuda_ipc moves CUDA KV caches; device is cpu")
        if self.transport == TransportBackend.CUDA_IPC and self.runner == "mock":
            raise ValueError("transport: cuda_ipc moves CUDA KV caches; the mock runner's is cpu")
        return self

    @model_validator(mode="after")
    def _faults_parse(self) -> ClusterConfig:
        FaultPlan.parse(self.transfer_faults)  # a bad spec fails here, naming its key
        return self

    @model_validator(mode="after")
    def _tls_can_serve(self) -> ClusterConfig:
        for name, tls in (("tls", self.tls), ("internal_tls", self.internal_tls)):
            if tls is not None and not tls.can_serve:
                raise ValueError(f"{name}.cert_file: its servers need a certificate and its key")
        return self

    @property
    def worker_metrics_port(self) -> int | None:
        """What each worker's metrics_port is set to: ephemeral, or off."""
        return 0 if self.worker_metrics else None

    @classmethod
    def load(cls, config_file: Path | None = None, **flags: Any) -> ClusterConfig:
        """Merges the sources; flags that are None count as not given."""
        file_values = _read_yaml(config_file) if config_file else {}
        unknown = set(file_values) - set(cls.model_fields)
        if unknown:
            raise ValueError(f"{config_file}: unknown settings {sorted(unknown)}")
        env_values = EnvSettingsSource(cls)()  # raw PDSERVE_* values, checked below
        given = {key: value for key, value in flags.items() if value is not None}
        merged: dict[str, Any] = {}
        for source in (file_values, env_values, given):
            merged = _merged(merged, _sizes_overridden_by(source) | source)
        return cls(**merged)


def _parse_total(total: Any) -> int:
    try:
        return int(total)
    except (TypeError, ValueError):
        raise ValueError(f"num_workers: expected a whole number; got {total!r}") from None


def _merged(lower: dict[str, Any], higher: dict[str, Any]) -> dict[str, Any]:
    """`higher` over `lower`; a section given in both (tls) is merged key by key."""
    merged = lower | higher
    for key, value in higher.items():
        if isinstance(value, dict) and isinstance(lower.get(key), dict):
            merged[key] = lower[key] | value
    return merged


def _sizes_overridden_by(source: dict[str, Any]) -> dict[str, None]:
    """A source that sizes the pools one way un-gives what lower sources said the other way."""
    if any(key in source for key in _RATIO_SIZES):
        return dict.fromkeys(_DIRECT_SIZES)
    if any(key in source for key in _DIRECT_SIZES):
        return dict.fromkeys(_RATIO_SIZES)
    return {}


def _read_yaml(path: Path) -> dict[str, Any]:
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of settings")
    return values
