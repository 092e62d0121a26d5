"""What every benchmark shares: its result record, interleaved A/B repeats, robust summaries,
and the description of the machine it ran on (BENCHMARKS.md, the rules at the top)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


class BenchUnavailable(Exception):
    """Raised by a benchmark's run() when this machine cannot run it (e.g. it has no GPU)."""


@dataclass(slots=True)
class BenchResult:
    """One benchmark's outcome: a headline ratio against its target, plus everything measured."""

    id: str
    name: str
    value: float
    target: float
    details: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.value >= self.target

    def headline(self) -> str:
        return f"{self.id}: {self.name} = {self.value:.3g} (target ≥ {self.target:g})"

    def write(self, results_dir: Path = RESULTS_DIR) -> Path:
        results_dir.mkdir(parents=True, exist_ok=True)
        path = results_dir / f"{self.id}.json"
        path.write_text(json.dumps(asdict(self) | {"passed": self.passed}, indent=2) + "\n")
        return path


@dataclass(frozen=True, slots=True)
class Summary:
    """Median with min–max of repeated measurements."""

    median: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, samples: list[float]) -> Summary:
        return cls(statistics.median(samples), min(samples), max(samples), len(samples))

    def scaled(self, factor: float) -> dict[str, float]:
        """The summary in other units (e.g. 1e3 for ms), as a JSON-ready dict."""
        return {"median": self.median * factor, "min": self.min * factor, "max": self.max * factor}


def interleave(
    arms: dict[str, Callable[[], float]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Runs the arms in turn (A, B, A, B, …) for `warmup` discarded rounds and then `repeats`
    kept ones; each arm returns one measurement. Interleaving spreads machine drift evenly."""
    samples: dict[str, list[float]] = {name: [] for name in arms}
    for round_index in range(warmup + repeats):
        for name, arm in arms.items():
            value = arm()
            if round_index >= warmup:
                samples[name].append(value)
    return samples


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (0–100), nearest rank: an observed value, not an interpolation."""
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def pin_to_core(core: int) -> None:
    """Pins this process to one core when the machine has it (2-core boxes: 0 and 1)."""
    if hasattr(os, "sched_setaffinity") and core in os.sched_getaffinity(0):
        os.sched_setaffinity(0, {core})


def machine_info() -> dict[str, Any]:
    import torch

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def bench_device() -> torch.device:
    """Where a benchmark with both a CPU and a GPU form runs its models: the GPU when torch
    sees one, else the CPU. Picked once per run, so the CPU form never depends on it twice."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_info(device: torch.device) -> dict[str, Any]:
    """The accelerator a benchmark ran on, for its machine record; nothing for the CPU."""
    import torch

    if device.type != "cuda":
        return {}
    props = torch.cuda.get_device_properties(device)
    return {
        "gpu": torch.cuda.get_device_name(device),
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "cuda": torch.version.cuda,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
