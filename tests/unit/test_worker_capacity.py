"""A worker whose Prefill/Decode calls are at their bound refuses one more at once with
RESOURCE_EXHAUSTED / AT_CAPACITY, before touching its engine (the router routes it
elsewhere); the threads it keeps back serve the control calls."""

from __future__ import annotations

import grpc
import pytest

from decode_worker.server import DecodeServicer
from pdserve.drain import DrainGate
from pdserve.v1 import worker_pb2
from pdserve.worker_errors import WorkerReason, failure_reason
from prefill_worker.server import PrefillServicer


class Aborted(Exception):
    def __init__(self, status: grpc.Status) -> None:
        super().__init__(status.code)
        self.status = status


class Context:
    """The part of grpc.ServicerContext a refused call touches."""

    def abort_with_status(self, status: grpc.Status) -> None:
        raise Aborted(status)


class Edge:
    def __init__(self) -> None:
        self.gate = DrainGate(quiet_s=0.0, max_running=0)


class Untouchable:
    def __getattr__(self, name: str):
        raise AssertionError(f"a refused call reached {name}")


def reason_of(aborted: Aborted) -> WorkerReason | None:
    class Error(grpc.RpcError):
        def trailing_metadata(self):
            return aborted.status.trailing_metadata

    return failure_reason(Error())


def test_a_prefill_beyond_the_bound_is_refused_before_the_engine():
    servicer = PrefillServicer(Untouchable(), Untouchable(), Untouchable(), Edge(), Untouchable())
    with pytest.raises(Aborted) as refused:
        servicer.Prefill(worker_pb2.PrefillRequest(request_id="r1"), Context())
    assert refused.value.status.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason_of(refused.value) is WorkerReason.AT_CAPACITY


def test_a_decode_beyond_the_bound_is_refused_before_the_engine():
    servicer = DecodeServicer(Untouchable(), Edge(), Untouchable())
    with pytest.raises(Aborted) as refused:
        next(servicer.Decode(worker_pb2.DecodeRequest(request_id="r1"), Context()))
    assert refused.value.status.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason_of(refused.value) is WorkerReason.AT_CAPACITY
