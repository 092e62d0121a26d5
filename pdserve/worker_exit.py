"""A worker process's end on SIGTERM: drain, stop, exit.

1. SIGTERM: the handler (main thread, must not block) starts the `worker-exit` thread.
2. It drains: health NOT_SERVING at once; routers see `draining` at their next poll and stop
   routing here; streams and RPCs under way finish, leases are released (DrainGate).
3. Drained, or `drain_timeout_s` passed (logged): the worker stops — server, engine,
   transports — once, whether this thread or the launcher's `stop` asks first.
4. Drained: the thread SIGTERMs its own process once more, and the handler ends it on the
   main thread (`end_process`: a Ray actor through `exit_actor`, exit code 0, atexit handlers
   run); if that has not happened within `end_timeout_s`, the thread ends it hard. After the
   timeout the thread ends it hard with exit code 1. A second SIGTERM while draining ends it
   hard at once (1).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

import ray

log = logging.getLogger(__name__)

_DRAIN_POLL_S = 0.1


def exit_process(code: int) -> None:
    """Ends the process without unwinding other threads (Ray's, gRPC's), output flushed."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def end_process(code: int) -> None:
    """Ends the process from its main thread, unwinding it: a Ray actor as Ray intends
    (`exit_actor`), anything else by SystemExit(code)."""
    if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
        ray.actor.exit_actor()
    raise SystemExit(code)


class WorkerExit:
    """Owns the worker's SIGTERM handling and its stop-once guard; thread-safe."""

    def __init__(
        self,
        drain: Callable[[], bool],
        stop: Callable[[float], None],
        drain_timeout_s: float,
        end: Callable[[int], None] = end_process,
        hard_exit: Callable[[int], None] = exit_process,
        end_timeout_s: float = 5.0,
    ) -> None:
        self._drain = drain  # starts draining (idempotent); returns whether drained
        self._stop = stop  # stop(grace_s)
        self._drain_timeout_s = drain_timeout_s
        self._end = end  # on the main thread
        self._hard_exit = hard_exit  # from any thread
        self._end_timeout_s = end_timeout_s
        self._stop_lock = threading.Lock()
        self._stopped = False
        self._exiting: threading.Thread | None = None
        self._finished = False  # drained and stopped: the next SIGTERM ends the process

    def install(self) -> None:
        """Handles SIGTERM from now on; only the main thread may install a handler."""
        if threading.current_thread() is not threading.main_thread():
            log.warning("not on the main thread: SIGTERM keeps its default action")
            return
        signal.signal(signal.SIGTERM, self.on_sigterm)

    def on_sigterm(self, signum: int = signal.SIGTERM, frame: object = None) -> None:
        if self._finished:
            self._end(0)
            return
        if self._exiting is not None:
            log.warning("second SIGTERM: exiting now, not drained")
            self._hard_exit(1)
            return
        log.info("SIGTERM: draining for at most %.1f s, then exiting", self._drain_timeout_s)
        self._exiting = threading.Thread(
            target=self._drain_then_exit, name="worker-exit", daemon=True
        )
        self._exiting.start()

    def stop(self, grace_s: float) -> None:
        """Stops the worker the first time it is called; later calls wait for that one."""
        with self._stop_lock:
            if not self._stopped:
                self._stopped = True
                self._stop(grace_s)

    def _drain_then_exit(self) -> None:
        drained = False
        try:
            drained = self._drain_and_stop()
        except Exception:
            log.exception("stopping after SIGTERM failed")
        if drained:
            self._finished = True
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(self._end_timeout_s)
            log.warning("main thread did not end the process: ending it hard")
        self._hard_exit(0 if drained else 1)

    def _drain_and_stop(self) -> bool:
        started_s = time.monotonic()
        drained = self._wait_drained(started_s + self._drain_timeout_s)
        elapsed_s = time.monotonic() - started_s
        if drained:
            log.info("drained in %.2f s: stopping and exiting", elapsed_s)
        else:
            log.warning("not drained after %.1f s: stopping and exiting anyway", elapsed_s)
        self.stop(grace_s=1.0)
        return drained

    def _wait_drained(self, deadline_s: float) -> bool:
        while not self._drain():
            if time.monotonic() >= deadline_s:
                return False
            time.sleep(_DRAIN_POLL_S)
        return True
