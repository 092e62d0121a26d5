"""B5's PNG: SLO attainment against offered rate, one panel per regime, one line per arm
(the median over repeats, the repeats' range shaded), the 90 % line, and each arm's goodput
marked. Drawn from the result's `details`, so a B5.json can be drawn again later:

    python -m bench.goodput_figure bench/results/B5.json docs/figures/b5_goodput.png
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

_TITLES = {"tight_tpot": "tight TPOT", "tight_ttft": "tight TTFT"}


def write(path: Path, details: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    rates = details["rates"]
    figure, axes = pyplot.subplots(1, len(_TITLES), figsize=(11, 4), sharey=True)
    for ax, (regime, title) in zip(axes, _TITLES.items(), strict=True):
        objective = details["objectives"][regime]
        for arm, repeats in details["attainment"][regime].items():
            by_rate = list(zip(*repeats, strict=True))
            median = [statistics.median(values) for values in by_rate]
            line = ax.plot(rates, median, marker="o", label=arm)[0]
            ax.fill_between(
                rates, [min(v) for v in by_rate], [max(v) for v in by_rate], alpha=0.15,
                color=line.get_color(),
            )  # fmt: skip
            goodput = statistics.median(details["goodput_req_per_s"][regime][arm])
            ax.axvline(goodput, color=line.get_color(), linestyle=":")
        ax.axhline(0.9, color="gray", linewidth=0.8)
        ax.set_title(
            f"{title}: TTFT ≤ {objective['ttft_s']:.2f} s, TPOT ≤ {objective['tpot_s'] * 1e3:.0f} ms"
        )
        ax.set_xlabel("offered rate (requests/s)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("SLO attainment")
    axes[0].legend(title="dotted: goodput")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


if __name__ == "__main__":
    source, target = sys.argv[1:3]
    write(Path(target), json.loads(Path(source).read_text())["details"])
