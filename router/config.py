"""The router's configuration: read once (flags/env `PDSERVE_ROUTER_*`) into a frozen object.

Nothing below the entry point reads the environment; modules receive this object or the
small derived views (`policy`, `limits`) they need.
"""

from __future__ import annotations

import enum
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kv_transfer.pages import TransportBackend
from pdserve.tls import TLSConfig

MIB = 2**20


class PolicyName(enum.StrEnum):
    PREFIX_AWARE = "prefix_aware"
    LEAST_LOAD = "least_load"
    ROUND_ROBIN = "round_robin"


class KVFailurePolicy(enum.StrEnum):
    RECOMPUTE = "recompute"
    FAIL = "fail"


class RouterConfig(BaseSettings):
    """Every knob of the router process. Cross-checked at construction."""

    model_config = SettingsConfigDict(env_prefix="PDSERVE_ROUTER_", frozen=True)

    host: str = Field("127.0.0.1", description="Interface the public gRPC server binds.")
    port: int = Field(50051, ge=0, le=65535, description="Public gRPC port; 0 = ephemeral.")
    model_name: str = Field(
        "", description="Name clients may put in GenerateRequest.model; empty = model_dir's name."
    )
    model_dir: Path = Field(
        description="Converted HF-format model dir: tokenizer.json, tokenizer_config.json, "
        "config.json."
    )
    max_tokens_default: int = Field(256, ge=1, description="max_tokens when a request sets none.")
    max_tokens_limit: int = Field(4096, ge=1, description="Largest max_tokens a request may ask.")
    max_prompt_bytes: int = Field(
        MIB,
        ge=1,
        description="Largest prompt (or chat content) in UTF-8 bytes; beyond it the "
        "request is INVALID_ARGUMENT on `prompt`.",
    )
    grpc_max_message_bytes: int = Field(
        8 * MIB,
        ge=1,
        description="Hard cap on any gRPC message; larger ones are rejected by "
        "gRPC itself (RESOURCE_EXHAUSTED). Must exceed max_prompt_bytes.",
    )
    max_stop_strings: int = Field(16, ge=0, description="Most stop strings per request.")
    max_stop_len: int = Field(256, ge=1, description="Longest stop string, in characters.")
    max_stop_token_ids: int = Field(64, ge=0, description="Most stop token ids per request.")
    colocate_threshold_tokens: int = Field(
        32,
        ge=0,
        description="A prompt whose uncached remainder on a `both` (or, with "
        "conditional_disaggregation, a `decode`) worker is at most this long is prefilled "
        "there instead of paying the KV handoff. 0 with no cache hit: never.",
    )
    conditional_disaggregation: bool = Field(
        True, description="Decode workers may prefill a short uncached remainder themselves."
    )
    routing_policy: PolicyName = Field(
        PolicyName.PREFIX_AWARE,
        description="How a worker (pair) is picked: prefix_aware (uncached tokens + queued "
        "prefill work), least_load or round_robin.",
    )
    max_route_attempts: int = Field(
        2,
        ge=1,
        description="Routes one request may take: a worker that fails or is full before the "
        "client saw a token is left out and the request routed again (1 = never).",
    )
    kv_failure_policy: KVFailurePolicy = Field(
        KVFailurePolicy.RECOMPUTE,
        description="When a decode worker cannot use the handed-off KV (the pull failed, the "
        "lease ended first, the pool was full) or fails before its first token: recompute = "
        "prefill the prompt and token #1 again on a decode worker and go on streaming; fail = "
        "end the request UNAVAILABLE with the reason (KV_TRANSFER_FAILED, KV_LEASE_EXPIRED, …).",
    )
    prefix_balance_tokens: int = Field(
        2048,
        ge=0,
        description="prefix_aware: a worker holding a prompt's prefix keeps getting it while its "
        "cost (uncached + queued prefill tokens) is within this many tokens of the cheapest.",
    )
    redis_url: str = Field(
        "",
        description="Redis for the shared registry and prefix index (redis://[:password@]host:"
        "port/db, rediss:// for TLS); empty = the embedded in-memory ones (one router).",
    )
    registry_ttl_s: float = Field(
        10.0,
        gt=0,
        description="A worker's registry record and index entries expire this long after its "
        "last successful stats poll by any router; a worker dead this long is dropped.",
    )
    redis_timeout_s: float = Field(
        0.05, gt=0, description="Longest wait for a prefix lookup before routing goes without."
    )
    redis_write_timeout_s: float = Field(
        2.0,
        gt=0,
        description="Longest wait for any other Redis call (index updates, e.g. a worker's "
        "whole snapshot; registry heartbeats) before it counts as a failure.",
    )
    redis_breaker_failures: int = Field(
        3, ge=1, description="Consecutive Redis failures that open its circuit breaker."
    )
    redis_breaker_reset_s: float = Field(
        2.0, gt=0, description="How long an open breaker waits before one trial call."
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
        description="Plaintext port serving only grpc.health.v1 (the same statuses as `port`), "
        "for probes that cannot speak TLS; 0 = ephemeral, unset = off.",
    )
    kv_backend: TransportBackend | None = Field(
        None,
        description="KV backend of every (prefill, decode) pair instead of the topology's "
        "choice (same node: shm, across nodes: gloo); a pair it cannot serve is not routed.",
    )
    stats_poll_period_s: float = Field(1.0, gt=0, description="GetStats period per worker.")
    worker_dead_after_failures: int = Field(
        3, ge=1, description="Consecutive failed GetStats polls before a worker is marked dead."
    )
    control_rpc_timeout_s: float = Field(
        2.0, gt=0, description="Timeout of GetStats, Abort and ReleaseLease calls to workers."
    )
    prefill_timeout_s: float = Field(
        120.0, gt=0, description="Longest Prefill call when the client set no shorter deadline."
    )
    decode_timeout_s: float = Field(
        1800.0, gt=0, description="Longest Decode stream when the client set no shorter deadline."
    )
    max_concurrent_requests: int = Field(
        256, ge=1, description="Requests in flight at once; beyond it RESOURCE_EXHAUSTED."
    )
    overload_retry_after_s: float = Field(
        0.5, gt=0, description="Retry hint (RetryInfo) sent with RESOURCE_EXHAUSTED."
    )
    shutdown_grace_s: float = Field(
        10.0, ge=0, description="How long `serve` lets streams finish on shutdown."
    )
    tls: TLSConfig | None = Field(
        None,
        description="TLS of the public API (needs cert_file and key_file; with "
        "require_client_cert, mTLS against ca_file); unset = plaintext.",
    )
    auth_token: SecretStr | None = Field(
        None,
        description="Bearer token every public call must carry (`authorization: Bearer …`), "
        "health and reflection excepted; unset = none asked.",
    )
    internal_tls: TLSConfig | None = Field(
        None,
        description="TLS of the router's channels to workers: ca_file verifies them, "
        "cert_file/key_file are presented for their mTLS; unset = plaintext.",
    )
    internal_auth_token: SecretStr | None = Field(
        None, description="Bearer token sent on every call to a worker; unset = none."
    )

    @model_validator(mode="after")
    def _cross_check(self) -> RouterConfig:
        if self.max_tokens_default > self.max_tokens_limit:
            raise ValueError("max_tokens_default must be <= max_tokens_limit")
        if self.max_prompt_bytes >= self.grpc_max_message_bytes:
            raise ValueError("grpc_max_message_bytes must exceed max_prompt_bytes")
        if self.tls is not None and not self.tls.can_serve:
            raise ValueError("tls.cert_file: the public server needs a certificate and its key")
        return self

    @property
    def served_model(self) -> str:
        """The model name this router serves and reports."""
        return self.model_name or self.model_dir.name

    @property
    def bind_address(self) -> str:
        return f"{self.host}:{self.port}"
