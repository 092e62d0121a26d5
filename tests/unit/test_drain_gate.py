"""A worker's drain state: serving → draining → drained, with the quiet period and holds."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from decode_worker.config import DecodeWorkerConfig
from pdserve.drain import AtCapacity, DrainGate


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_not_drained_before_drain_is_asked():
    clock = Clock()
    gate = DrainGate(quiet_s=1.0, clock=clock)
    clock.now += 10
    assert not gate.draining and not gate.drained


def test_drained_after_the_quiet_period_with_nothing_running():
    clock = Clock()
    gate = DrainGate(quiet_s=1.0, clock=clock)
    gate.drain()
    assert gate.draining and not gate.drained
    clock.now += 1.0
    assert gate.drained


def test_a_running_rpc_holds_the_drain_and_a_late_one_restarts_the_quiet_period():
    clock = Clock()
    gate = DrainGate(quiet_s=1.0, clock=clock)
    gate.drain()
    with gate.serving():
        clock.now += 5
        assert not gate.drained
    assert gate.drained  # started before drain; nothing since
    clock.now += 0.5
    with gate.serving():  # a route chosen before the flag was seen arrives late
        pass
    assert not gate.drained
    clock.now += 1.0
    assert gate.drained


def test_held_leases_keep_it_from_being_drained():
    clock = Clock()
    leases = [1]
    gate = DrainGate(quiet_s=0.0, holds_nothing=lambda: not leases, clock=clock)
    gate.drain()
    assert not gate.drained
    leases.clear()
    assert gate.drained


def test_drain_is_idempotent():
    clock = Clock()
    gate = DrainGate(quiet_s=1.0, clock=clock)
    gate.drain()
    clock.now += 0.9
    gate.drain()  # does not restart the quiet period
    clock.now += 0.1
    assert gate.drained


def test_beyond_max_running_a_call_is_refused_and_not_counted():
    gate = DrainGate(quiet_s=0.0, max_running=2)
    with gate.serving(), gate.serving():
        with pytest.raises(AtCapacity), gate.serving():
            pass
        gate.drain()
        assert not gate.drained  # the two still run; the refused one was never counted
    assert gate.drained
    with gate.serving():  # room again
        pass


def test_a_worker_keeps_threads_for_its_control_calls():
    with pytest.raises(ValidationError, match="control_grpc_threads"):
        DecodeWorkerConfig(worker_id="d", max_grpc_threads=8, control_grpc_threads=8)
