"""What one chaos scenario reports, and the table `make chaos` prints (shared/RELIABILITY.md).

A scenario test builds a `ScenarioResult` from what it observed, calls `record(result)`, then
asserts `result.failures() == []`. The chaos conftest prints every recorded row at the end of
the session; with PDSERVE_CHAOS_REPORT=<path> it also writes them there as JSON.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

# `make chaos` runs every scenario at the size RELIABILITY.md gives; `make test` at a reduced
# size that still exercises every fault (README states both).
FULL = os.environ.get("PDSERVE_CHAOS_SCALE", "ci") == "full"


def scaled(full: int, ci: int) -> int:
    """A count at the run's scale: `full` under `make chaos`, `ci` under `make test`."""
    return full if FULL else ci


@dataclass(slots=True)
class ScenarioResult:
    scenario: str  # "S1 baseline", …
    requests: int = 0
    ok: int = 0
    failed_by_status: Counter[str] = field(default_factory=Counter)  # "UNAVAILABLE/WORKER_LOST"
    without_status: int = 0  # requests that never got a terminal status (must be 0)
    corrupt_outputs: int = 0  # OK requests whose tokens differ from the reference (must be 0)
    unknown_errors: int = 0  # UNKNOWN status codes (must be 0)
    leaked_pages: int = 0
    leaked_leases: int = 0
    leaked_transfers: int = 0
    faults_injected: int = 0
    faults_verified: int = 0
    seconds: float = 0.0
    extra_failures: list[str] = field(default_factory=list)  # scenario-specific invariants

    def failures(self) -> list[str]:
        """The pass bar of every scenario, plus the scenario's own broken invariants."""
        broken = list(self.extra_failures)
        checks = {
            "requests without a terminal status": self.without_status,
            "corrupt outputs": self.corrupt_outputs,
            "UNKNOWN errors": self.unknown_errors,
            "leaked pages": self.leaked_pages,
            "leaked leases": self.leaked_leases,
            "leaked transfers": self.leaked_transfers,
        }
        broken += [f"{name}: {count}" for name, count in checks.items() if count]
        if self.faults_verified != self.faults_injected:
            broken.append(
                f"faults verified {self.faults_verified} != injected {self.faults_injected}"
            )
        if self.ok + sum(self.failed_by_status.values()) + self.without_status != self.requests:
            broken.append("outcomes do not add up to the requests sent")
        return broken

    @property
    def passed(self) -> bool:
        return not self.failures()


_RESULTS: list[ScenarioResult] = []


def record(result: ScenarioResult) -> None:
    _RESULTS.append(result)


def recorded() -> list[ScenarioResult]:
    return list(_RESULTS)


def table(results: list[ScenarioResult]) -> str:
    header = (
        "scenario",
        "requests",
        "OK",
        "failed by status",
        "leaked p/l/t",
        "faults inj/ver",
        "seconds",
        "result",
    )
    rows = [header]
    for r in results:
        failed = ", ".join(f"{k} {v}" for k, v in sorted(r.failed_by_status.items())) or "-"
        rows.append(
            (
                r.scenario,
                str(r.requests),
                str(r.ok),
                failed,
                f"{r.leaked_pages}/{r.leaked_leases}/{r.leaked_transfers}",
                f"{r.faults_injected}/{r.faults_verified}",
                f"{r.seconds:.1f}",
                "PASS" if r.passed else "FAIL: " + "; ".join(r.failures()),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(results: list[ScenarioResult], path: Path) -> None:
    # asdict rebuilds a Counter from (key, value) pairs, counting the pairs: give it plainly.
    rows = [
        asdict(r)
        | {
            "failed_by_status": dict(r.failed_by_status),
            "passed": r.passed,
            "failures": r.failures(),
        }
        for r in results
    ]
    path.write_text(json.dumps(rows, indent=2, default=dict))
