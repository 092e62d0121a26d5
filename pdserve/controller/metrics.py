"""The controller's own Prometheus metrics, served on --metrics-port:

pdserve_controller_desired_replicas{pool}       gauge    the sizing's last desired size
pdserve_controller_current_replicas{pool}       gauge    the Deployment's spec.replicas
pdserve_controller_decisions_total{pool,action,reason}
                                                counter  one per pool per tick; action:
                                                         hold | scale_up | scale_down |
                                                         recommend (dry-run)
pdserve_controller_capacity_tokens_per_s{pool}  gauge    per-worker capacity sized with
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from kv_transfer.pages import Role
from pdserve.controller.decisions import Decision
from pdserve.metrics_export import MetricsExporter


class ControllerMetrics(MetricsExporter):
    """One controller's metrics, in its own registry; each method only sets or adds."""

    def __init__(self) -> None:
        super().__init__()
        by_pool = ["pool"]
        self._desired = Gauge(
            "pdserve_controller_desired_replicas",
            "Desired replicas of the pool, from the last sizing.",
            by_pool,
            registry=self.registry,
        )
        self._current = Gauge(
            "pdserve_controller_current_replicas",
            "Replicas the pool's Deployment asks for (spec.replicas).",
            by_pool,
            registry=self.registry,
        )
        self._decisions = Counter(
            "pdserve_controller_decisions",
            "Decisions per pool per tick, by action and reason.",
            ["pool", "action", "reason"],
            registry=self.registry,
        )
        self._capacity = Gauge(
            "pdserve_controller_capacity_tokens_per_s",
            "Tokens/s one worker of the pool is taken to sustain (configured or learned).",
            by_pool,
            registry=self.registry,
        )

    def record(self, decision: Decision) -> None:
        pool = decision.pool.value
        self._decisions.labels(
            pool=pool, action=decision.action.value, reason=decision.reason.value
        ).inc()
        if decision.current is not None:
            self._current.labels(pool=pool).set(decision.current)
        if decision.desired is not None:
            self._desired.labels(pool=pool).set(decision.desired.replicas)

    def set_capacity(self, pool: Role, tokens_per_s: float) -> None:
        self._capacity.labels(pool=pool.value).set(tokens_per_s)
