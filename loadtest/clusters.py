"""Local clusters of given shapes, for `pdserve loadtest --ratios/--colocated` and bench B5.

Each cluster is a `pdserve up` subprocess on a free port, with its own Ray, router and
workers, so the load generator never shares a process (or a GIL) with the router it measures.

    shapes = parse_ratios("1:1,2:1,1:2")              # 1P1D, 2P1D, 1P2D
    with ClusterProcess(shape, up_flags) as address:  # waits for "pdserve ready on …"
        ...                                           # SIGTERM on exit, SIGKILL if it hangs

Lifecycle: start (spawned in its own session, output to a log file) → ready (the ready line
names the address) → stop (SIGTERM: `pdserve up` drains, stops its workers and Ray; after
`stop_timeout_s` the whole process group is killed). A cluster that exits or stays silent
past `ready_timeout_s` raises ClusterStartError with the tail of its log.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_READY = re.compile(r"pdserve ready on (\S+)")
_RATIO = re.compile(r"\s*(\d+)\s*:\s*(\d+)\s*")


class ClusterStartError(RuntimeError):
    """A cluster did not come up; the message carries the tail of its log."""


@dataclass(frozen=True, slots=True)
class ClusterShape:
    """Pool sizes of one arm: xPyD, or colocated workers (role both)."""

    num_prefill: int = 0
    num_decode: int = 0
    num_colocated: int = 0
    threads_per_worker: int | None = None  # None: the up flags' (or pdserve's) default

    def __post_init__(self) -> None:
        if min(self.num_prefill, self.num_decode, self.num_colocated) < 0:
            raise ValueError(f"pool sizes must be >= 0, got {self}")
        disaggregated = self.num_prefill > 0 and self.num_decode > 0
        if not (disaggregated or self.num_colocated > 0):
            raise ValueError("a cluster needs a prefill and a decode worker, or a colocated one")

    @property
    def name(self) -> str:
        parts = []
        if self.num_prefill or self.num_decode:
            parts.append(f"{self.num_prefill}P{self.num_decode}D")
        if self.num_colocated:
            parts.append(f"{self.num_colocated}C")
        threads = "" if self.threads_per_worker is None else f"x{self.threads_per_worker}t"
        return "+".join(parts) + threads

    def up_flags(self) -> list[str]:
        flags = [
            f"--prefill={self.num_prefill}",
            f"--decode={self.num_decode}",
            f"--colocated={self.num_colocated}",
        ]
        if self.threads_per_worker is not None:
            flags.append(f"--threads-per-worker={self.threads_per_worker}")
        return flags


def parse_ratios(text: str) -> tuple[ClusterShape, ...]:
    """ "1:1,2:1" → (1P1D, 2P1D); ValueError naming the entry at fault."""
    shapes = []
    for raw in filter(None, (part.strip() for part in text.split(","))):
        match = _RATIO.fullmatch(raw)
        if match is None:
            raise ValueError(f"--ratios: {raw!r} is not PREFILL:DECODE, e.g. 1:2")
        prefill, decode = int(match[1]), int(match[2])
        if prefill < 1 or decode < 1:
            raise ValueError(f"--ratios: {raw!r} needs at least one worker of each role")
        shapes.append(ClusterShape(num_prefill=prefill, num_decode=decode))
    if not shapes:
        raise ValueError("--ratios: give at least one PREFILL:DECODE, e.g. 1:1,2:1")
    return tuple(shapes)


class ClusterProcess:
    """One `pdserve up` of `shape` with `up_flags` (model, dtype, …) on a free port."""

    def __init__(
        self,
        shape: ClusterShape,
        up_flags: Sequence[str] = (),
        ready_timeout_s: float = 600.0,
        stop_timeout_s: float = 60.0,
    ) -> None:
        self.shape = shape
        self._command = [
            sys.executable, "-m", "pdserve", "up", "--port=0", *up_flags, *shape.up_flags()
        ]  # fmt: skip
        self._ready_timeout_s = ready_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._log_dir = tempfile.TemporaryDirectory(prefix="pdserve-cluster-")
        self._log_path = Path(self._log_dir.name) / "up.log"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> str:
        """Returns the router's address once it serves."""
        with self._log_path.open("wb") as log:
            self._process = subprocess.Popen(
                self._command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=os.environ | {"PYTHONUNBUFFERED": "1"},
            )
        try:
            return self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(self._stop_timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self._log_dir.cleanup()

    def log_tail(self, lines: int = 20) -> str:
        text = self._log_path.read_text(errors="replace") if self._log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _wait_ready(self) -> str:
        assert self._process is not None
        deadline = time.monotonic() + self._ready_timeout_s
        while time.monotonic() < deadline:
            if match := _READY.search(self._log_path.read_text(errors="replace")):
                return match[1]
            if self._process.poll() is not None:
                raise ClusterStartError(
                    f"cluster {self.shape.name} exited with code {self._process.returncode}:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.2)
        raise ClusterStartError(
            f"cluster {self.shape.name} not ready after {self._ready_timeout_s:.0f} s:\n"
            f"{self.log_tail()}"
        )
