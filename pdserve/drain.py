"""A worker's drain state: serving → draining → drained, never back.

serving    routes arrive; every Prefill/Decode RPC is counted while it runs (`serving()`);
           beyond `max_running` of them a new one is refused (AtCapacity) rather than left
           waiting for a server thread, so the threads kept back always serve the control
           calls (GetStats, ReleaseLease, RenewLease, Abort, health, page-event streams)
draining   after Drain: reported in GetStats so every router stops routing here; work
           that still arrives (a router that had not seen the flag yet) is served
drained    draining, no RPC running, nothing else held (`holds_nothing`: the prefill
           worker's leases and exports), and no RPC started for `quiet_s` — longer than a
           router's stats period, so no route chosen before the flag was seen is still
           on its way. The launcher may stop the worker then.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class AtCapacity(RuntimeError):
    """As many Prefill/Decode RPCs as the worker serves at once are running already."""


class DrainGate:
    """Counts running RPCs, bounds them, and owns the draining flag; thread-safe."""

    def __init__(
        self,
        quiet_s: float,
        holds_nothing: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.monotonic,
        max_running: int | None = None,
    ) -> None:
        self._quiet_s = quiet_s
        self._max_running = max_running
        self._holds_nothing = holds_nothing
        self._clock = clock
        self._lock = threading.Lock()
        self._running = 0
        self._last_start_s = float("-inf")
        self._drain_since_s: float | None = None

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Wraps one Prefill or Decode RPC, from arrival to its last response. Raises
        AtCapacity, counting nothing, when `max_running` run already."""
        with self._lock:
            if self._max_running is not None and self._running >= self._max_running:
                raise AtCapacity(f"{self._running} Prefill/Decode calls running already")
            self._running += 1
            self._last_start_s = self._clock()
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1

    def drain(self) -> None:
        with self._lock:
            if self._drain_since_s is None:
                self._drain_since_s = self._clock()

    @property
    def draining(self) -> bool:
        return self._drain_since_s is not None

    @property
    def drained(self) -> bool:
        with self._lock:
            if self._drain_since_s is None or self._running:
                return False
            quiet_since = max(self._drain_since_s, self._last_start_s)
        return self._clock() - quiet_since >= self._quiet_s and self._holds_nothing()
