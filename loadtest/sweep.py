"""`--rates`: the same workload (same seed) sent open loop once per offered rate, one after
another against the same address, and the goodput-vs-rate curve those runs make.

  1. `parse_rates`   "1,2,4" → (1.0, 2.0, 4.0), each positive and finite
  2. `sweep_plans`   the base plan with its rate replaced, once per rate
  3. (the runs)      `live.run_plans`, in the order given
  4. `assemble`      one `RatePoint` (offered rate + summary) per run
  5. reports         JSON `sweep: [...]`, the sweep figure, a one-line-per-rate table; with
                     arms (`--ratios`), one row per arm: goodput per rate and the highest
                     rate meeting the SLO for 90 % of requests
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from loadtest.metrics import Slo, Summary, summarize
from loadtest.report import (
    FORMAT_VERSION,
    RunParams,
    finite,
    goodput_cells,
    params_json,
    results_json,
)
from loadtest.runner import LoadPlan, LoadResult

SLO_ATTAINMENT_TARGET = 0.9  # DistServe's: 90 % of requests within the SLO


def parse_rates(text: str) -> tuple[float, ...]:
    """ "1,2,4" → (1.0, 2.0, 4.0); ValueError naming the rate at fault."""
    rates = []
    for raw in filter(None, (part.strip() for part in text.split(","))):
        try:
            rate = float(raw)
        except ValueError:
            raise ValueError(f"--rates: {raw!r} is not a number of requests/s") from None
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"--rates: each rate must be positive and finite, got {raw!r}")
        rates.append(rate)
    if not rates:
        raise ValueError("--rates: give at least one rate, e.g. 1,2,4")
    return tuple(rates)


def sweep_plans(base: LoadPlan, rates: Sequence[float]) -> list[LoadPlan]:
    """Open-loop plans differing only in rate: the seed, and so the arrivals' shape and the
    prompts, stay the same across the sweep."""
    return [dataclasses.replace(base, rate=rate, concurrency=None) for rate in rates]


@dataclass(frozen=True, slots=True)
class RatePoint:
    rate: float  # offered, requests/s
    summary: Summary


def assemble(
    rates: Sequence[float], results: Sequence[LoadResult], slo: Slo | None
) -> list[RatePoint]:
    """One point per rate, in the order run; `results[i]` is the run at `rates[i]`."""
    if len(rates) != len(results):
        raise ValueError(f"{len(rates)} rates but {len(results)} results")
    return [
        RatePoint(rate, summarize(result.records, result.duration_s, slo))
        for rate, result in zip(rates, results, strict=True)
    ]


def sweep_json(params: RunParams, points: Sequence[RatePoint]) -> dict[str, Any]:
    """`params` as for one run (its plan at the first rate) plus every rate; one entry per
    rate under `sweep`, each with the same figures a single run's `results` has."""
    document = {
        "format_version": FORMAT_VERSION,
        "params": params_json(params) | {"rates": [p.rate for p in points]},
        "sweep": sweep_entries(points),
    }
    return finite(document)


def sweep_entries(points: Sequence[RatePoint]) -> list[dict[str, Any]]:
    return [{"rate": p.rate, "results": results_json(p.summary)} for p in points]


def max_rate_meeting_slo(points: Sequence[RatePoint]) -> float | None:
    """DistServe's goodput: the highest offered rate at which at least 90 % of the requests
    sent met the SLO; None without an SLO, or when no rate did."""
    met = [p.rate for p in points if (p.summary.slo_attainment or 0.0) >= SLO_ATTAINMENT_TARGET]
    return max(met, default=None)


def write_sweep_json(path: Path, params: RunParams, points: Sequence[RatePoint]) -> None:
    path.write_text(json.dumps(sweep_json(params, points), indent=2) + "\n")


def print_sweep_table(points: Sequence[RatePoint], console: Console | None = None) -> None:
    table = Table(title="rate sweep (rates in req/s, latencies in ms)")
    columns = ("offered", "achieved", "goodput", "SLO met", "ok/fail")
    for column in (*columns, "TTFT p50", "TTFT p90", "TPOT p90", "e2e p90"):
        table.add_column(column, justify="right")
    for point in points:
        table.add_row(*_sweep_row(point.rate, point.summary))
    (console or Console()).print(table)


def _sweep_row(rate: float, summary: Summary) -> list[str]:
    goodput, attainment = goodput_cells(summary)
    latencies_s = (summary.ttft.p50, summary.ttft.p90, summary.tpot.p90, summary.e2e.p90)
    return [
        f"{rate:g}",
        f"{summary.request_rate:.2f}",
        goodput,
        attainment,
        f"{summary.num_ok}/{summary.num_failed}",
        *(f"{value * 1000:.1f}" for value in latencies_s),
    ]


def print_arms_sweep_table(
    points_by_arm: Mapping[str, Sequence[RatePoint]], console: Console | None = None
) -> None:
    """One column per arm: its goodput at each offered rate (the achieved rate without an
    SLO), then the highest rate at which 90 % of requests met the SLO."""
    first = next(iter(points_by_arm.values()), ())
    has_slo = all(p.summary.goodput is not None for p in first)
    figure = "goodput" if has_slo else "achieved rate"
    table = Table(title=f"arms: {figure} by offered rate (req/s)")
    table.add_column("offered")
    for name in points_by_arm:
        table.add_column(name, justify="right", no_wrap=True)
    for i, point in enumerate(first):
        summaries = [points[i].summary for points in points_by_arm.values()]
        values = [s.goodput if has_slo else s.request_rate for s in summaries]
        table.add_row(f"{point.rate:g}", *(f"{value:.2f}" for value in values))
    capacities = [max_rate_meeting_slo(points) for points in points_by_arm.values()]
    cells = ("-" if rate is None else f"{rate:g}" for rate in capacities)
    table.add_section()
    table.add_row("max rate, ≥ 90 % SLO", *cells)
    (console or Console()).print(table)
