"""The PNG figures of a load run, drawn with matplotlib's Agg backend (no display needed).

  run         latency CDFs of one run: TTFT, TPOT and end-to-end, OK requests only
  sweep       over offered rates: goodput and achieved rate (left), p90 TTFT (right)
  arms run    the run's CDFs, one line per arm (--ratios/--colocated)
  arms sweep  goodput, p90 TTFT and p90 TPOT over offered rates, one line per arm

matplotlib is imported inside the writers, so `import loadtest` stays light.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from loadtest.metrics import e2e_s, tpot_s, ttft_s
from loadtest.runner import RequestRecord

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from loadtest.sweep import RatePoint

_CDF_LATENCIES: dict[str, Callable[[RequestRecord], float | None]] = {
    "TTFT": ttft_s,
    "TPOT": tpot_s,
    "end-to-end": e2e_s,
}


def write_run_figure(path: Path, records: Sequence[RequestRecord]) -> None:
    """One panel per latency: the fraction of OK requests at or under each value (ms)."""
    num_ok = sum(r.ok for r in records)
    title = f"latency CDFs ({num_ok} of {len(records)} requests OK)"
    _write_cdfs(path, {"": records}, title)


def write_arms_run_figure(
    path: Path, records_by_arm: Mapping[str, Sequence[RequestRecord]]
) -> None:
    """The run figure with one line per arm, labelled with the arm's name."""
    _write_cdfs(path, records_by_arm, "latency CDFs per arm (OK requests)")


def _write_cdfs(
    path: Path, records_by_line: Mapping[str, Sequence[RequestRecord]], title: str
) -> None:
    figure, axes = _figure(len(_CDF_LATENCIES))
    for ax, (name, latency_s) in zip(axes, _CDF_LATENCIES.items(), strict=True):
        for label, records in records_by_line.items():
            values_s = [t for r in records if r.ok and (t := latency_s(r)) is not None]
            _plot_cdf(ax, label, values_s)
        ax.set(title=name, xlabel="ms", ylabel="fraction of requests", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        if len(records_by_line) > 1:
            ax.legend()
    figure.suptitle(title)
    _save(figure, path)


def _plot_cdf(ax: Axes, label: str, values_s: Sequence[float]) -> None:
    ordered_ms = sorted(v * 1000 for v in values_s)
    fractions = [(i + 1) / len(ordered_ms) for i in range(len(ordered_ms))]
    ax.step(ordered_ms, fractions, where="post", label=label)


def write_sweep_figure(path: Path, points: Sequence[RatePoint]) -> None:
    """Goodput (when an SLO was given) and achieved rate against the offered rate, beside
    p90 TTFT against the offered rate: where the curve bends is the deployment's capacity."""
    offered = [p.rate for p in points]
    figure, (rates_ax, ttft_ax) = _figure(2)
    rates_ax.plot(offered, offered, ":", color="grey", label="offered")
    rates_ax.plot(offered, [p.summary.request_rate for p in points], "o-", label="achieved")
    if all(p.summary.goodput is not None for p in points):
        rates_ax.plot(offered, [p.summary.goodput for p in points], "s-", label="goodput")
    rates_ax.set(title="throughput", xlabel="offered rate (req/s)", ylabel="req/s")
    rates_ax.legend()
    ttft_ax.plot(offered, [p.summary.ttft.p90 * 1000 for p in points], "o-")
    ttft_ax.set(title="p90 TTFT", xlabel="offered rate (req/s)", ylabel="ms")
    for ax in (rates_ax, ttft_ax):
        ax.grid(alpha=0.3)
    figure.suptitle("rate sweep")
    _save(figure, path)


def write_arms_sweep_figure(path: Path, points_by_arm: Mapping[str, Sequence[RatePoint]]) -> None:
    """Against the offered rate, one line per arm: goodput (the achieved rate without an
    SLO), p90 TTFT and p90 TPOT. The arm whose goodput bends last serves the most within
    the SLO."""
    has_slo = all(p.summary.goodput is not None for ps in points_by_arm.values() for p in ps)
    figure, (rates_ax, ttft_ax, tpot_ax) = _figure(3)
    for name, points in points_by_arm.items():
        offered = [p.rate for p in points]
        summaries = [p.summary for p in points]
        rates = [s.goodput if has_slo else s.request_rate for s in summaries]
        rates_ax.plot(offered, rates, "o-", label=name)
        ttft_ax.plot(offered, [s.ttft.p90 * 1000 for s in summaries], "o-", label=name)
        tpot_ax.plot(offered, [s.tpot.p90 * 1000 for s in summaries], "o-", label=name)
    rates_ax.set(title="goodput" if has_slo else "achieved rate", ylabel="req/s")
    ttft_ax.set(title="p90 TTFT", ylabel="ms")
    tpot_ax.set(title="p90 TPOT", ylabel="ms")
    for ax in (rates_ax, ttft_ax, tpot_ax):
        ax.set(xlabel="offered rate (req/s)")
        ax.grid(alpha=0.3)
        ax.legend()
    figure.suptitle("rate sweep per arm")
    _save(figure, path)


def _figure(num_panels: int) -> tuple[Figure, list[Axes]]:
    from matplotlib.figure import Figure  # heavy: only when drawing

    # A bare Figure (not pyplot) draws with Agg and keeps no global state between calls.
    figure = Figure(figsize=(5 * num_panels, 4), layout="constrained")
    return figure, list(figure.subplots(1, num_panels))


def _save(figure: Figure, path: Path) -> None:
    figure.savefig(path, format="png", dpi=100)
