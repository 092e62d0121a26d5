"""`--ratios`/`--colocated`: the same workload against several cluster shapes (arms), each a
fresh local `pdserve up` started here, one arm after another.

  1. `arm_shapes`   the flags → one ClusterShape per arm: each PREFILL:DECODE of --ratios
                    (xPyD), then N colocated workers (role both) for --colocated N
  2. `run_arms`     per arm, in order: start its cluster (ClusterProcess) → send the
                    `Measurement` (the requests and plans a run against --address would send)
                    → stop the cluster → print the arm's table under its name
  3. reports        `print_comparison` (one row per arm), `arms_json`, `write_figure`

A cluster that does not come up raises ClusterStartError out of `run_arms`; every cluster
started before it has been stopped by then (each lives inside its own `with`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from loadtest import figures, report, sweep
from loadtest.clusters import ClusterProcess, ClusterShape
from loadtest.live import run_plans
from loadtest.metrics import Slo, Summary, summarize
from loadtest.report import RunParams
from loadtest.runner import LoadPlan, RequestRecord
from loadtest.sweep import RatePoint
from loadtest.workloads import LoadRequest
from pdserve import auth_flags

StartCluster = Callable[[ClusterShape, Sequence[str]], AbstractContextManager[str]]


def colocated_threads(
    num_colocated: int, threads_per_worker: int, first_ratio: ClusterShape | None
) -> int:
    """Threads per colocated worker when --colocated-threads is not given: the first xPyD
    arm's total ((P + D) × threads per worker) spread over the N workers, at least 1, so the
    A/B runs on equal cores; without an xPyD arm, --threads-per-worker."""
    if first_ratio is None:
        return threads_per_worker
    num_workers = first_ratio.num_prefill + first_ratio.num_decode
    return max(1, num_workers * threads_per_worker // num_colocated)


def arm_shapes(
    ratios: Sequence[ClusterShape],
    num_colocated: int | None,
    threads_per_worker: int,
    threads_per_colocated: int | None,
) -> tuple[ClusterShape, ...]:
    """Each ratio's shape with `threads_per_worker`, then the colocated arm if asked for."""
    shapes = [dataclasses.replace(s, threads_per_worker=threads_per_worker) for s in ratios]
    if num_colocated is not None:
        first = ratios[0] if ratios else None
        threads = threads_per_colocated or colocated_threads(
            num_colocated, threads_per_worker, first
        )
        shapes.append(ClusterShape(num_colocated=num_colocated, threads_per_worker=threads))
    return tuple(shapes)


@dataclass(frozen=True, slots=True)
class ArmsSpec:
    """The arms to run: their shapes, in order, and the `pdserve up` flags (model, dtype,
    config) every arm's cluster gets besides its shape's own."""

    shapes: tuple[ClusterShape, ...]
    up_flags: tuple[str, ...]

    def params_json(self) -> list[dict[str, Any]]:
        return [
            {"name": s.name, "shape": asdict(s), "up_flags": [*self.up_flags, *s.up_flags()]}
            for s in self.shapes
        ]


@dataclass(frozen=True, slots=True)
class Measured:
    """One address's figures: a single run (`summary`, with its `records` for the CDFs) or a
    sweep (`points`, one per offered rate, in the order run)."""

    summary: Summary | None = None
    records: tuple[RequestRecord, ...] = ()
    points: tuple[RatePoint, ...] = ()

    @property
    def is_sweep(self) -> bool:
        return self.summary is None

    @property
    def summaries(self) -> list[Summary]:
        if self.summary is not None:
            return [self.summary]
        return [point.summary for point in self.points]


@dataclass(frozen=True, slots=True)
class Measurement:
    """What every arm (or the one --address) is sent: the same requests, afresh per plan."""

    security: auth_flags.ClientSecurity
    requests: list[LoadRequest]
    plans: list[LoadPlan]  # one, or one per rate of a sweep
    rates: tuple[float, ...] | None  # a sweep's offered rates; None for a single run
    slo: Slo | None

    def run(self, address: str) -> Measured:
        results = asyncio.run(run_plans(address, self.security, self.requests, self.plans))
        if self.rates:
            return Measured(points=tuple(sweep.assemble(self.rates, results, self.slo)))
        [result] = results
        summary = summarize(result.records, result.duration_s, self.slo)
        return Measured(summary=summary, records=tuple(result.records))


@dataclass(frozen=True, slots=True)
class ArmResult:
    shape: ClusterShape
    measured: Measured


def print_measured(measured: Measured, console: Console | None = None) -> None:
    if measured.summary is None:
        sweep.print_sweep_table(measured.points, console)
    else:
        report.print_summary(measured.summary, console)


def run_arms(
    spec: ArmsSpec,
    measure: Callable[[str], Measured],
    start: StartCluster = ClusterProcess,
    console: Console | None = None,
) -> list[ArmResult]:
    """Runs the arms in order, each against its own cluster, stopped before the next starts.

    Raises ClusterStartError (its message has the cluster's log tail) for an arm whose
    cluster did not come up; the arms before it have printed their tables."""
    console = console or Console()
    results = []
    for shape in spec.shapes:
        console.rule(f"arm {shape.name}")
        console.print(f"starting a {shape.name} cluster…")
        with start(shape, spec.up_flags) as address:
            measured = measure(address)
        print_measured(measured, console)
        results.append(ArmResult(shape, measured))
    return results


def print_comparison(results: Sequence[ArmResult], console: Console | None = None) -> None:
    if results and results[0].measured.is_sweep:
        points = {r.shape.name: r.measured.points for r in results}
        sweep.print_arms_sweep_table(points, console)
    else:
        summaries = {r.shape.name: r.measured.summaries[0] for r in results}
        report.print_arms_table(summaries, console)


def arms_json(
    params: RunParams, spec: ArmsSpec, results: Sequence[ArmResult], rates: tuple[float, ...] | None
) -> dict[str, Any]:
    """`params` as for one run plus every arm's name, shape and up flags (and a sweep's
    rates); under `arms`, per arm the `results` of one run or the `sweep` of every rate."""
    run_params = report.params_json(params) | {"arms": spec.params_json()}
    if rates:
        run_params["rates"] = list(rates)
    document = {
        "format_version": report.FORMAT_VERSION,
        "params": run_params,
        "arms": [_arm_json(result) for result in results],
    }
    return report.finite(document)


def _arm_json(result: ArmResult) -> dict[str, Any]:
    head = {"name": result.shape.name, "shape": asdict(result.shape)}
    measured = result.measured
    if measured.summary is not None:
        return head | {"results": report.results_json(measured.summary)}
    capacity = sweep.max_rate_meeting_slo(measured.points)
    return head | {"sweep": sweep.sweep_entries(measured.points), "max_rate_at_slo": capacity}


def write_arms_json(
    path: Path,
    params: RunParams,
    spec: ArmsSpec,
    results: Sequence[ArmResult],
    rates: tuple[float, ...] | None,
) -> None:
    path.write_text(json.dumps(arms_json(params, spec, results, rates), indent=2) + "\n")


def write_figure(path: Path, results: Sequence[ArmResult]) -> None:
    """A sweep's curves, or a single run's latency CDFs, one line per arm."""
    if results and results[0].measured.is_sweep:
        figures.write_arms_sweep_figure(path, {r.shape.name: r.measured.points for r in results})
    else:
        figures.write_arms_run_figure(path, {r.shape.name: r.measured.records for r in results})
