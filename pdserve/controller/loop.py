"""The controller's loop: one tick every period, each pool's decision logged and exported.

One tick, in order:
  1. read every router's /metrics (`scrape_of`: the --metrics-url list, or each address of
     --metrics-service resolved anew); the rates since the last good read come from
     `SignalWindow` (the first read is only a baseline: hold, warmup)
  2. read both Deployments (`DeploymentPools.read`); unreadable: hold, kube_error
  3. a router unreadable, or the Service not resolved: hold, no_signal (a partial sum would
     under-size the pools)
  4. desired sizes from the rates and the per-worker capacities (`sizing.desired_sizes`)
  5. per pool, the stabilizer's action: pending pods, warm-up, hysteresis, cooldown; a
     settled pool's interval then refines its per-worker capacity (`CapacityEstimate`), used
     from the next tick on
  6. a change: dry-run shows it (recommend) and changes nothing, so no cooldown starts and
     the recommendation repeats each tick while it stands; --apply patches the Deployment's
     scale once and starts the pool's cooldown and warm-up; a failed patch is a hold
     (kube_error)
  7. one log line and the metrics per pool
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from kv_transfer.pages import Role
from pdserve.controller.capacity import CapacityEstimate
from pdserve.controller.config import ControllerConfig
from pdserve.controller.decisions import Decision, Stabilizer, hold, is_settled_sample
from pdserve.controller.discovery import Resolver, resolve_ips
from pdserve.controller.kube import DeploymentPools, KubeError
from pdserve.controller.metrics import ControllerMetrics
from pdserve.controller.pools import POOLS, ByPool, PoolStatus
from pdserve.controller.reasons import Action, Reason
from pdserve.controller.scrape import RouterTotals, ScrapeError, scrape_routers
from pdserve.controller.signals import Signals, SignalWindow
from pdserve.controller.sizing import desired_sizes, pool_demands

log = logging.getLogger(__name__)

Scrape = Callable[[], dict[str, RouterTotals]]  # raises ScrapeError
ReadRouters = Callable[[Sequence[str], float], dict[str, RouterTotals]]  # urls, timeout_s


def scrape_of(
    config: ControllerConfig, resolve: Resolver = resolve_ips, read: ReadRouters = scrape_routers
) -> Scrape:
    """One read of every router, by URL: the fixed metrics_urls, or metrics_service's
    addresses as they are at this read (a name that does not resolve is a ScrapeError, as an
    unreadable router is)."""
    service, timeout_s = config.router_service, config.scrape_timeout_s
    if service is None:
        return lambda: read(config.metrics_urls, timeout_s)
    return lambda: read(service.urls(resolve), timeout_s)


class Controller:
    """Owns the controller's state (signal window, capacity estimates, stabilizer); `tick`
    is the only thing that advances it, one period at a time."""

    def __init__(
        self,
        config: ControllerConfig,
        pools: DeploymentPools,
        metrics: ControllerMetrics,
        scrape: Scrape | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._pools = pools
        self._metrics = metrics
        self._scrape = scrape or scrape_of(config)
        self._clock = clock
        self._window = SignalWindow(config.slo)
        self._capacity = CapacityEstimate(
            config.configured_capacity, config.capacity_alpha, config.slo_attainment_target
        )
        self._stabilizer = Stabilizer(config.stabilizer_policy)
        self._sizing = config.sizing_policy

    def tick(self) -> ByPool[Decision]:
        """One read, one decision per pool (applied with --apply), logged and exported."""
        now_s = self._clock()
        signals = self._read_signals(now_s)
        try:
            statuses = self._pools.read()
        except KubeError as exc:
            log.warning("deployments unreadable: %s", exc)
            return self._report(ByPool(*(hold(p, Reason.KUBE_ERROR, None) for p in POOLS)), None)
        if isinstance(signals, Reason):
            holds = (hold(p, signals, statuses.of(p).replicas) for p in POOLS)
            return self._report(ByPool(*holds), None)
        return self._report(self._decide(signals, statuses, now_s), signals)

    def _read_signals(self, now_s: float) -> Signals | Reason:
        """The rates since the last good read, or why there are none: no_signal (a router
        unreadable, or the Service listing them), warmup (the first read, or one sharing no
        router with the last: only a baseline)."""
        try:
            totals = self._scrape()
        except ScrapeError as exc:
            log.warning("router metrics unreadable: %s", exc)
            return Reason.NO_SIGNAL
        signals = self._window.advance(totals, now_s)
        return Reason.WARMUP if signals is None else signals

    def _decide(
        self, signals: Signals, statuses: ByPool[PoolStatus], now_s: float
    ) -> ByPool[Decision]:
        current = ByPool(statuses.prefill.replicas, statuses.decode.replicas)
        desired = desired_sizes(signals, current, self._capacity.current, self._sizing)
        demands = pool_demands(signals)
        decisions = []
        for pool in POOLS:
            status = statuses.of(pool)
            decision = self._stabilizer.decide(desired.of(pool), status, pool, now_s)
            if is_settled_sample(decision):
                self._capacity.observe(pool, demands.of(pool), status.ready_replicas)
            decisions.append(self._act(decision, now_s))
        return ByPool(*decisions)

    def _act(self, decision: Decision, now_s: float) -> Decision:
        if not decision.is_change or decision.target is None:
            return decision
        if not self._config.apply:
            return decision.as_recommendation()
        try:
            self._pools.scale(decision.pool, decision.target)
        except KubeError as exc:
            log.error("%s: %s", decision.pool, exc)
            return hold(decision.pool, Reason.KUBE_ERROR, decision.current, decision.desired)
        self._stabilizer.record_change(decision.pool, now_s)
        return decision

    def _report(self, decisions: ByPool[Decision], signals: Signals | None) -> ByPool[Decision]:
        for pool in POOLS:
            decision = decisions.of(pool)
            log.info("%s", describe(decision, signals, self._config.target_utilization))
            self._metrics.record(decision)
            self._metrics.set_capacity(pool, self._capacity.current.of(pool))
        return decisions


def describe(decision: Decision, signals: Signals | None, target_utilization: float) -> str:
    """The decision's log line: pool, action, sizes, reason, and the numbers behind it."""
    if decision.is_change or decision.action is Action.RECOMMEND:
        sizes = f"{_count(decision.current)}→{_count(decision.target)}"
    else:
        sizes = f"at {_count(decision.current)}"
    line = f"{decision.pool} {decision.action} {sizes} ({decision.reason})"
    desired = decision.desired
    if desired is None or signals is None:
        return line
    demand = desired.demand
    what = "uncached prompt" if decision.pool is Role.PREFILL else "generated"
    slo = "ttft" if decision.pool is Role.PREFILL else "tpot"
    attainment = "n/a" if demand.attainment is None else f"{demand.attainment:.3f}"
    return (
        f"{line}: desired {desired.replicas} (load {desired.load_replicas}: {what} "
        f"{demand.tokens_per_s:.1f} tok/s ÷ ({desired.capacity_tokens_per_s:.1f} tok/s/worker × "
        f"{target_utilization:g})); {slo} attainment {attainment}; "
        f"{signals.request_rate:.2f} req/s, in {signals.mean_input_len:.0f} tok "
        f"(prefix hits {signals.prefix_hit_ratio:.0%}), out {signals.mean_output_len:.0f} tok, "
        f"queue {_seconds(signals.mean_queue_s)}"
    )


def _count(replicas: int | None) -> str:
    return "?" if replicas is None else str(replicas)


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} s"


def run_loop(controller: Controller, period_s: float, stop: threading.Event) -> None:
    """Ticks every `period_s` (from one tick's start to the next) until `stop` is set."""
    while not stop.is_set():
        started_s = time.monotonic()
        controller.tick()
        stop.wait(max(period_s - (time.monotonic() - started_s), 0.0))
