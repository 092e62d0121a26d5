"""A run's results: the JSON file (every figure, the run's parameters and seed) and the
terminal summary (rich tables); with arms (`--ratios/--colocated`), one row per arm."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from loadtest.metrics import Percentiles, Summary
from loadtest.runner import LoadPlan
from loadtest.workloads import WorkloadKind, WorkloadShape

FORMAT_VERSION = 1
_LATENCIES = ("ttft", "tpot", "itl", "e2e")


@dataclass(frozen=True, slots=True)
class RunParams:
    """What was run, recorded beside the figures so a result can be reproduced."""

    address: str | None  # None: each arm's own cluster (--ratios/--colocated)
    workload: WorkloadKind
    shape: WorkloadShape
    plan: LoadPlan


def to_json(params: RunParams, summary: Summary) -> dict[str, Any]:
    document = {
        "format_version": FORMAT_VERSION,
        "params": params_json(params),
        "results": results_json(summary),
    }
    return finite(document)


def params_json(params: RunParams) -> dict[str, Any]:
    return {
        "address": params.address,
        "workload": params.workload.value,
        "shape": asdict(params.shape),
        "plan": asdict(params.plan),
        "seed": params.plan.seed,
    }


def results_json(summary: Summary) -> dict[str, Any]:
    figures = asdict(summary)
    figures["slo"] = None if summary.slo is None else asdict(summary.slo)
    return figures


def finite(value: Any) -> Any:
    """JSON has no Infinity: an infinite rate ("send all at once") is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def write_json(path: Path, params: RunParams, summary: Summary) -> None:
    path.write_text(json.dumps(to_json(params, summary), indent=2) + "\n")


def print_summary(summary: Summary, console: Console | None = None) -> None:
    console = console or Console()
    console.print(_latency_table(summary))
    console.print(_totals_table(summary))


def _latency_table(summary: Summary) -> Table:
    table = Table(title="latency (ms)")
    for column in ("metric", "count", "mean", "p50", "p90", "p99"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name in _LATENCIES:
        figures: Percentiles = getattr(summary, name)
        values = (figures.mean, figures.p50, figures.p90, figures.p99)
        table.add_row(name.upper(), str(figures.count), *(f"{v * 1000:.1f}" for v in values))
    return table


def _totals_table(summary: Summary) -> Table:
    table = Table(title="throughput and outcomes", show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("requests (ok / failed)", f"{summary.num_ok} / {summary.num_failed}"),
        ("duration", f"{summary.duration_s:.2f} s"),
        ("request rate", f"{summary.request_rate:.2f} req/s"),
        ("input tokens/s", f"{summary.input_tokens_per_s:.1f}"),
        ("output tokens/s", f"{summary.output_tokens_per_s:.1f}"),
        ("prefix hit ratio", f"{summary.prefix_hit_ratio:.1%}"),
    ]
    if summary.slo is not None and summary.goodput is not None:
        slo = f"ttft ≤ {summary.slo.ttft_s} s, tpot ≤ {summary.slo.tpot_s} s"
        rows.append((f"goodput ({slo})", f"{summary.goodput:.2f} req/s"))
        rows.append(("SLO attainment", f"{summary.slo_attainment:.1%}"))
    rows += [(f"status {key}", str(count)) for key, count in sorted(summary.by_reason.items())]
    for row in rows:
        table.add_row(*row)
    return table


def print_arms_table(summaries: Mapping[str, Summary], console: Console | None = None) -> None:
    """The figures an A/B of cluster shapes is decided on, one column per arm (named)."""
    table = Table(title="arms compared")
    table.add_column("figure")
    for name in summaries:
        table.add_column(name, justify="right", no_wrap=True)
    rows = [_arm_rows(summary) for summary in summaries.values()]
    for label, *cells in zip(_ARM_FIGURES, *rows, strict=True):
        table.add_row(label, *cells)
    (console or Console()).print(table)


_ARM_FIGURES = (
    "achieved (req/s)", "goodput (req/s)", "SLO attainment", "TTFT p50 (ms)", "TTFT p90 (ms)",
    "TPOT p50 (ms)", "TPOT p90 (ms)", "output tokens/s", "ok / failed",
)  # fmt: skip


def _arm_rows(summary: Summary) -> list[str]:
    """One arm's cells, in the order of _ARM_FIGURES."""
    goodput, attainment = goodput_cells(summary)
    latencies_s = (summary.ttft.p50, summary.ttft.p90, summary.tpot.p50, summary.tpot.p90)
    return [
        f"{summary.request_rate:.2f}",
        goodput,
        attainment,
        *(f"{value * 1000:.1f}" for value in latencies_s),
        f"{summary.output_tokens_per_s:.1f}",
        f"{summary.num_ok} / {summary.num_failed}",
    ]


def goodput_cells(summary: Summary) -> tuple[str, str]:
    """Goodput (req/s) and SLO attainment as table cells; "-" each without an SLO."""
    goodput = "-" if summary.goodput is None else f"{summary.goodput:.2f}"
    attainment = "-" if summary.slo_attainment is None else f"{summary.slo_attainment:.1%}"
    return goodput, attainment
