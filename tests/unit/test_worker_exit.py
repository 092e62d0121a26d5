"""SIGTERM on a worker: drain, stop once, exit 0 — or exit 1 on the timeout or a second
SIGTERM. Real signals to this process, with exit and stop recorded instead of done."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from pdserve.worker_exit import WorkerExit


class FakeWorker:
    """Drained once `drained_after_s` passed since the first drain call."""

    def __init__(self, drained_after_s: float) -> None:
        self.drained_after_s = drained_after_s
        self.drain_since_s: float | None = None
        self.stops: list[float] = []
        self.ends: list[int] = []  # clean ends, on the main thread
        self.exit_codes: list[int] = []  # hard exits
        self.exited = threading.Event()

    def drain(self) -> bool:
        if self.drain_since_s is None:
            self.drain_since_s = time.monotonic()
        return time.monotonic() - self.drain_since_s >= self.drained_after_s

    def stop(self, grace_s: float) -> None:
        self.stops.append(grace_s)

    def end(self, code: int) -> None:
        assert threading.current_thread() is threading.main_thread()
        self.ends.append(code)

    def exit(self, code: int) -> None:
        self.exit_codes.append(code)
        self.exited.set()


@pytest.fixture
def restore_sigterm():
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def make_exit(worker: FakeWorker, drain_timeout_s: float) -> WorkerExit:
    exit_ = WorkerExit(
        worker.drain,
        worker.stop,
        drain_timeout_s,
        end=worker.end,
        hard_exit=worker.exit,
        end_timeout_s=0.2,
    )
    exit_.install()
    return exit_


def test_sigterm_drains_stops_once_then_the_main_thread_ends_the_process(restore_sigterm):
    """The fake end returns, so the exit thread's hard exit (0) follows end_timeout_s later."""
    worker = FakeWorker(drained_after_s=0.3)
    make_exit(worker, drain_timeout_s=5.0)
    started_s = time.monotonic()
    os.kill(os.getpid(), signal.SIGTERM)
    assert worker.exited.wait(5.0)
    assert 0.5 <= time.monotonic() - started_s < 2.5
    assert (worker.stops, worker.ends, worker.exit_codes) == ([1.0], [0], [0])


def test_not_drained_by_the_timeout_still_stops_then_exits_1(restore_sigterm):
    worker = FakeWorker(drained_after_s=60.0)
    make_exit(worker, drain_timeout_s=0.3)
    os.kill(os.getpid(), signal.SIGTERM)
    assert worker.exited.wait(5.0)
    assert (worker.stops, worker.ends, worker.exit_codes) == ([1.0], [], [1])


def test_a_second_sigterm_exits_at_once_with_1(restore_sigterm):
    worker = FakeWorker(drained_after_s=60.0)
    make_exit(worker, drain_timeout_s=0.5)
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)
    assert (worker.exit_codes, worker.stops) == ([1], [])
    worker.exited.clear()
    assert worker.exited.wait(5.0)  # the drain thread's own end (os._exit never returns)


def test_the_launchers_stop_and_the_exit_thread_stop_the_worker_once(restore_sigterm):
    worker = FakeWorker(drained_after_s=0.0)
    exit_ = make_exit(worker, drain_timeout_s=5.0)
    exit_.stop(0.0)
    os.kill(os.getpid(), signal.SIGTERM)
    assert worker.exited.wait(5.0)
    assert (worker.stops, worker.ends, worker.exit_codes) == ([0.0], [0], [0])
