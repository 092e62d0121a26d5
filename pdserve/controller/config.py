"""The ratio controller's settings: read once (flags > env `PDSERVE_CONTROLLER_*` > defaults)
into a frozen object; the parts below get the derived views they need."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pdserve.controller.decisions import StabilizerPolicy
from pdserve.controller.discovery import MetricsService
from pdserve.controller.pools import ByPool
from pdserve.controller.signals import SloBounds
from pdserve.controller.sizing import PoolBounds, SizingPolicy


class ControllerConfig(BaseSettings):
    """Every knob of `pdserve controller`. Cross-checked at construction; an error names the
    setting at fault."""

    model_config = SettingsConfigDict(env_prefix="PDSERVE_CONTROLLER_", frozen=True)

    metrics_urls: tuple[str, ...] = Field(
        (),
        description="Every router replica's Prometheus endpoint (http://router:9090/metrics); "
        "their rates are summed. One that cannot be read holds every pool (no_signal). "
        "Give this or metrics_service.",
    )
    metrics_service: str | None = Field(
        None,
        description="host:port of a headless Service listing every ready router "
        "(pdserve-router-metrics:9090): resolved at each read, each address (IPv4 or IPv6) "
        "read as http://<ip>:<port>/metrics. Give this or metrics_urls.",
    )
    period_s: float = Field(30.0, gt=0, description="Seconds between two reads and decisions.")
    scrape_timeout_s: float = Field(5.0, gt=0, description="Timeout of one router's read.")
    ttft_slo_s: float = Field(
        1.0,
        gt=0,
        description="TTFT objective; attainment counts the router's largest histogram bucket "
        "at or under it (a bucket bound, e.g. 0.5 or 1.0, counts exactly).",
    )
    tpot_slo_s: float = Field(0.1, gt=0, description="TPOT objective, read the same way.")
    slo_attainment_target: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Fraction of requests within an objective below which its pool gets "
        "one worker more (TTFT: prefill, TPOT: decode).",
    )
    target_utilization: float = Field(
        0.8, gt=0, le=1, description="Fraction of a worker's capacity the sizing plans for."
    )
    prefill_tokens_per_s_per_worker: float = Field(
        4000.0,
        gt=0,
        description="Uncached prompt tokens/s one prefill worker sustains; learned from busy "
        "intervals when capacity_alpha > 0.",
    )
    decode_tokens_per_s_per_worker: float = Field(
        500.0,
        gt=0,
        description="Generated tokens/s one decode worker sustains at the TPOT objective; "
        "learned from busy intervals when capacity_alpha > 0.",
    )
    capacity_alpha: float = Field(
        0.3,
        ge=0,
        le=1,
        description="EWMA weight of a new capacity sample; 0 keeps the configured capacities.",
    )
    min_prefill: int = Field(1, ge=1, description="Fewest prefill workers (never 0).")
    max_prefill: int = Field(16, ge=1, description="Most prefill workers.")
    min_decode: int = Field(1, ge=1, description="Fewest decode workers (never 0).")
    max_decode: int = Field(16, ge=1, description="Most decode workers.")
    max_total_workers: int | None = Field(
        None,
        ge=2,
        description="Budget of prefill + decode workers; over it, split by the desired ratio. "
        "Unset: no budget.",
    )
    cooldown_s: float = Field(
        120.0, ge=0, description="After a pool changes, no other change of it for this long."
    )
    scale_down_stable_s: float = Field(
        300.0,
        ge=0,
        description="A pool shrinks only once its desired size stayed below its size this long.",
    )
    warmup_samples: int = Field(
        2,
        ge=0,
        description="Samples of a settled pool excluded after start and after each change.",
    )
    apply: bool = Field(
        False, description="Patch the Deployments; unset: dry-run (log and export only)."
    )
    namespace: str = Field("default", description="Namespace of both Deployments.")
    prefill_deployment: str = Field("pdserve-prefill", description="The prefill Deployment.")
    decode_deployment: str = Field("pdserve-decode", description="The decode Deployment.")
    metrics_host: str = Field(
        "0.0.0.0", description="Interface of the controller's /metrics (all: scraped in-pod)."
    )
    metrics_port: int | None = Field(
        9095, ge=0, le=65535, description="The controller's /metrics port; 0 = ephemeral."
    )

    @field_validator("metrics_urls")
    @classmethod
    def _http_urls(cls, urls: tuple[str, ...]) -> tuple[str, ...]:
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"expected an http(s):// URL; got {url!r}")
        return urls

    @field_validator("metrics_service")
    @classmethod
    def _host_port(cls, address: str | None) -> str | None:
        if address is not None:
            MetricsService.parse(address)
        return address

    @model_validator(mode="after")
    def _one_router_source(self) -> ControllerConfig:
        if self.metrics_urls and self.metrics_service is not None:
            raise ValueError("metrics_service: give metrics_service or metrics_urls, not both")
        if not self.metrics_urls and self.metrics_service is None:
            raise ValueError("metrics_urls: give metrics_urls or metrics_service (one is required)")
        return self

    @model_validator(mode="after")
    def _bounds_fit(self) -> ControllerConfig:
        for pool in ("prefill", "decode"):
            low, high = getattr(self, f"min_{pool}"), getattr(self, f"max_{pool}")
            if low > high:
                raise ValueError(f"max_{pool}: must be ≥ min_{pool} ({low}); got {high}")
        budget = self.max_total_workers
        if budget is not None and budget < self.min_prefill + self.min_decode:
            raise ValueError(
                f"max_total_workers: must be ≥ min_prefill + min_decode "
                f"({self.min_prefill + self.min_decode}); got {budget}"
            )
        return self

    @property
    def router_service(self) -> MetricsService | None:
        """metrics_service parsed; None when the routers are the fixed metrics_urls."""
        return None if self.metrics_service is None else MetricsService.parse(self.metrics_service)

    @property
    def slo(self) -> SloBounds:
        return SloBounds(self.ttft_slo_s, self.tpot_slo_s)

    @property
    def sizing_policy(self) -> SizingPolicy:
        return SizingPolicy(
            target_utilization=self.target_utilization,
            slo_attainment_target=self.slo_attainment_target,
            bounds=ByPool(
                prefill=PoolBounds(self.min_prefill, self.max_prefill),
                decode=PoolBounds(self.min_decode, self.max_decode),
            ),
            max_total_workers=self.max_total_workers,
        )

    @property
    def stabilizer_policy(self) -> StabilizerPolicy:
        return StabilizerPolicy(self.cooldown_s, self.scale_down_stable_s, self.warmup_samples)

    @property
    def configured_capacity(self) -> ByPool[float]:
        return ByPool(self.prefill_tokens_per_s_per_worker, self.decode_tokens_per_s_per_worker)

    @property
    def deployments(self) -> ByPool[str]:
        return ByPool(self.prefill_deployment, self.decode_deployment)
