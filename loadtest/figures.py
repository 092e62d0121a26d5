"""The PNG figures of a load run, drawn with matplotlib's Agg backend (no display needed).

  run    latency CDFs of one run: TTFT, TPOT and end-to-end, OK requests only
  sweep  over offered rates: goodput and achieved rate (left), p90 TTFT (right)

matplotlib is imported inside the writers, so `import loadtest` stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from loadtest.metrics import e2e_s, tpot_s, ttft_s
from loadtest.runner import RequestRecord

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from loadtest.sweep import RatePoint


def write_run_figure(path: Path, records: Sequence[RequestRecord]) -> None:
    """One panel per latency: the fraction of OK requests at or under each value (ms)."""
    ok = [r for r in records if r.ok]
    latencies_s = {
        "TTFT": [t for r in ok if (t := ttft_s(r)) is not None],
        "TPOT": [t for r in ok if (t := tpot_s(r)) is not None],
        "end-to-end": [e2e_s(r) for r in ok],
    }
    figure, axes = _figure(len(latencies_s))
    for ax, (name, values_s) in zip(axes, latencies_s.items(), strict=True):
        _plot_cdf(ax, name, values_s)
    figure.suptitle(f"latency CDFs ({len(ok)} of {len(records)} requests OK)")
    _save(figure, path)


def _plot_cdf(ax: Axes, name: str, values_s: Sequence[float]) -> None:
    ordered_ms = sorted(v * 1000 for v in values_s)
    fractions = [(i + 1) / len(ordered_ms) for i in range(len(ordered_ms))]
    ax.step(ordered_ms, fractions, where="post")
    ax.set(title=name, xlabel="ms", ylabel="fraction of requests", ylim=(0, 1.02))
    ax.grid(alpha=0.3)


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


def _figure(num_panels: int) -> tuple[Figure, list[Axes]]:
    from matplotlib.figure import Figure  # heavy: only when drawing

    # A bare Figure (not pyplot) draws with Agg and keeps no global state between calls.
    figure = Figure(figsize=(5 * num_panels, 4), layout="constrained")
    return figure, list(figure.subplots(1, num_panels))


def _save(figure: Figure, path: Path) -> None:
    figure.savefig(path, format="png", dpi=100)
