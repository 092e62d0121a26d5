"""Runs one EngineCore on a dedicated thread; every other thread reaches it by command.

The loop thread is the sole owner of the engine, its scheduler and its page pool. gRPC
handler threads never touch them: they `submit` requests with a sink for the outputs and
`call` closures that run between two steps and hand their result back through a Future.
Sinks run on the loop thread and must only hand data off (e.g. put it on a queue).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

from engine.core import EngineCore, RequestOutput
from engine.request import Request

log = logging.getLogger(__name__)

T = TypeVar("T")
Sink = Callable[[RequestOutput], None]
_IDLE_WAIT_S = 0.05


class EngineLoop:
    def __init__(self, core: EngineCore, name: str = "engine-loop") -> None:
        self._core = core
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._sinks: dict[str, Sink] = {}
        self._periodic: list[Callable[[EngineCore], None]] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopped.set()
        self._commands.put(lambda: None)
        self._thread.join(timeout_s)

    def add_periodic(self, fn: Callable[[EngineCore], None]) -> None:
        """Runs fn(core) on the loop thread between steps and at least every 50 ms when idle."""
        self._periodic.append(fn)

    def submit(self, req: Request, sink: Sink, *, running: bool = False) -> None:
        """Hands a request to the engine; `running=True` adopts a transferred one."""

        def add() -> None:
            self._sinks[req.request_id] = sink
            (self._core.add_running if running else self._core.add_request)(req)

        self._commands.put(add)

    def post(self, fn: Callable[[EngineCore], object]) -> None:
        """Runs fn(core) on the loop thread soon, without waiting (safe from the loop thread)."""
        self._commands.put(lambda: fn(self._core))

    def call(self, fn: Callable[[EngineCore], T], timeout_s: float = 30.0) -> T:
        """Runs fn(core) on the loop thread and returns its result (or raises its error)."""
        future: Future[T] = Future()

        def run() -> None:
            try:
                future.set_result(fn(self._core))
            except BaseException as exc:  # handed to the caller, never lost
                future.set_exception(exc)

        self._commands.put(run)
        return future.result(timeout_s)

    def abort(self, request_id: str) -> bool:
        """Aborts and frees a request; True if the engine held it."""

        return self.call(lambda core: self._abort(core, request_id))

    def abort_soon(self, request_id: str) -> None:
        """`abort` without waiting for the answer."""
        self.post(lambda core: self._abort(core, request_id))

    def _abort(self, core: EngineCore, request_id: str) -> bool:
        self._sinks.pop(request_id, None)
        return core.abort(request_id) is not None

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._drain_commands(block=not self._core.has_work)
            self._run_periodic()
            if self._core.has_work:
                self._step()

    def _drain_commands(self, block: bool) -> None:
        try:
            command = (
                self._commands.get(timeout=_IDLE_WAIT_S) if block else self._commands.get_nowait()
            )
            while True:
                self._guarded(command)
                command = self._commands.get_nowait()
        except queue.Empty:
            return

    @staticmethod
    def _guarded(command: Callable[[], None]) -> None:
        try:
            command()
        except Exception:
            log.exception("engine command failed")

    def _run_periodic(self) -> None:
        for fn in self._periodic:
            try:
                fn(self._core)
            except Exception:
                log.exception("periodic engine task failed")

    def _step(self) -> None:
        started = time.monotonic()
        try:
            outputs = self._core.step()
        except Exception:
            # A failed step leaves every scheduled request's KV undefined: end them all
            # (their sinks see FINISHED_ABORTED) rather than leave any caller waiting.
            log.exception("engine step failed; aborting every request in the engine")
            outputs = self._core.abort_all()
        for output in outputs:
            self._dispatch(output)
        log.debug("step %d took %.1f ms", self._core.num_steps, (time.monotonic() - started) * 1e3)

    def _dispatch(self, output: RequestOutput) -> None:
        request_id = output.request.request_id
        sink = self._sinks.pop(request_id) if output.finished else self._sinks.get(request_id)
        if sink is None:
            return
        try:
            sink(output)
        except Exception:
            log.exception("sink of %s failed", request_id)
