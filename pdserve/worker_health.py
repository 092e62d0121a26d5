"""A worker's grpc.health.v1 status: SERVING, or NOT_SERVING while it drains or while its page
pool cannot admit work.

The pool cannot admit work when the engine's last integrity check failed, or when requests
have waited `wedged_after_s` without one engine step finishing. The engine's scheduler places
a waiting request as soon as pages allow and steps whenever anything runs, so waiting work
and no step means every page is held by what cannot move (requests, pinned leases): a wedged
pool. Draining is final; a wedged pool that moves again turns SERVING again.

`WorkerHealth` samples two engine counters every `period_s` on its own thread and sets the
status of "" and "pdserve.v1.Worker"; `refresh()` (drain calls it) sets it at once from what
is known, without asking the engine.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import HealthServicer

from pdserve.drain import DrainGate

log = logging.getLogger(__name__)

SERVICES = ("", "pdserve.v1.Worker")
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True, slots=True)
class PoolProgress:
    """Two cheap engine counters, read on the engine thread."""

    num_waiting: int  # requests queued for pages
    num_steps: int  # engine steps finished so far


class AdmissionWatch:
    """Whether the page pool can admit work, from PoolProgress samples over time.

    One thread calls `observe`; `note_integrity` and `can_admit` are safe from any thread.
    """

    def __init__(self, wedged_after_s: float, clock: Callable[[], float] = time.monotonic):
        self._wedged_after_s = wedged_after_s
        self._clock = clock
        self._num_steps = -1
        self._stalled_since_s: float | None = None  # waiting, and no step since then
        self._integrity_ok = True

    def observe(self, progress: PoolProgress) -> None:
        moved = progress.num_steps != self._num_steps
        self._num_steps = progress.num_steps
        if progress.num_waiting == 0:
            self._stalled_since_s = None
        elif moved or self._stalled_since_s is None:
            self._stalled_since_s = self._clock()

    def note_integrity(self, ok: bool) -> None:
        """The result of the engine's last (O(pages)) integrity check, taken elsewhere."""
        self._integrity_ok = ok

    @property
    def can_admit(self) -> bool:
        since = self._stalled_since_s
        wedged = since is not None and self._clock() - since >= self._wedged_after_s
        return self._integrity_ok and not wedged


class WorkerHealth:
    """Owns `servicer`'s status and the thread that keeps it current.

    Start it once the engine answers `probe`; `stop()` leaves every service NOT_SERVING.
    """

    def __init__(
        self,
        gate: DrainGate,
        probe: Callable[[float], PoolProgress],
        period_s: float,
        wedged_after_s: float,
    ) -> None:
        self.servicer = HealthServicer()
        self.admission = AdmissionWatch(wedged_after_s)
        self._gate = gate
        self._probe = probe  # probe(timeout_s); raises TimeoutError when the engine is busy
        self._period_s = period_s
        self._status: int | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-health", daemon=True)

    @property
    def is_serving(self) -> bool:
        return not self._gate.draining and self.admission.can_admit

    def start(self) -> None:
        self.refresh()
        self._thread.start()

    def refresh(self) -> None:
        """Sets the status from the drain flag and the samples so far; never blocks long."""
        status = _SERVING if self.is_serving else _NOT_SERVING
        with self._lock:
            if status == self._status or self._stopped.is_set():
                return
            self._status = status
            for service in SERVICES:
                self.servicer.set(service, status)
        log.info("health: %s", health_pb2.HealthCheckResponse.ServingStatus.Name(status))

    def stop(self) -> None:
        with self._lock:
            self._stopped.set()
            self.servicer.enter_graceful_shutdown()
        if self._thread.is_alive():
            self._thread.join(self._period_s * 4)

    def _run(self) -> None:
        while not self._stopped.wait(self._period_s):
            self._sample()
            self.refresh()

    def _sample(self) -> None:
        try:
            self.admission.observe(self._probe(self._period_s))
        except TimeoutError:
            pass  # a step longer than a period: no sample, so a stall keeps counting
        except Exception:
            log.exception("health probe failed")
