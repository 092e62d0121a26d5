"""Typed failures of the internal Worker service: a gRPC status with an ErrorInfo reason.

A worker ends a call with `abort(context, WorkerFailure(...))`; the router reads the reason
back with `failure_reason(error)` and maps it onto the public table (router/errors.py). The
message is for logs; the reason is the contract. Torch-free: the router imports this module.

| reason                  | code                | when                                         |
|-------------------------|---------------------|----------------------------------------------|
| KV_HANDLE_INVALID       | FAILED_PRECONDITION | a handle that does not fit this worker       |
| KV_BACKEND_UNAVAILABLE  | FAILED_PRECONDITION | a KV backend this worker does not hold       |
| KV_PAGES_EXHAUSTED      | RESOURCE_EXHAUSTED  | no pages for an arriving KV within its wait  |
| AT_CAPACITY             | RESOURCE_EXHAUSTED  | as many Prefill/Decode calls as it serves at |
|                         |                     | once run already (pdserve/drain.py)          |
| KV_TRANSFER_FAILED      | UNAVAILABLE         | the pull failed as a unit (error, checksum,  |
|                         |                     | timeout); its pages were freed unused        |
| KV_LEASE_EXPIRED        | UNAVAILABLE         | the source's lease ended before the pull was |
|                         |                     | acked: what was read may be stale, discarded |
| KV_EXPORT_FAILED        | UNAVAILABLE         | the prefill side could not export its pages  |
| KV_TRANSFER_UNKNOWN     | NOT_FOUND           | SendKV for a transfer no longer leased       |
| DEADLINE_EXCEEDED       | DEADLINE_EXCEEDED   | the caller's budget ran out here             |
| CANCELLED               | CANCELLED           | aborted by the router                        |
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "pdserve.worker"


class WorkerReason(enum.StrEnum):
    KV_HANDLE_INVALID = "KV_HANDLE_INVALID"
    KV_BACKEND_UNAVAILABLE = "KV_BACKEND_UNAVAILABLE"
    KV_PAGES_EXHAUSTED = "KV_PAGES_EXHAUSTED"
    AT_CAPACITY = "AT_CAPACITY"
    KV_TRANSFER_FAILED = "KV_TRANSFER_FAILED"
    KV_LEASE_EXPIRED = "KV_LEASE_EXPIRED"
    KV_EXPORT_FAILED = "KV_EXPORT_FAILED"
    KV_TRANSFER_UNKNOWN = "KV_TRANSFER_UNKNOWN"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CANCELLED = "CANCELLED"


_CODES = {
    WorkerReason.KV_HANDLE_INVALID: grpc.StatusCode.FAILED_PRECONDITION,
    WorkerReason.KV_BACKEND_UNAVAILABLE: grpc.StatusCode.FAILED_PRECONDITION,
    WorkerReason.KV_PAGES_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    WorkerReason.AT_CAPACITY: grpc.StatusCode.RESOURCE_EXHAUSTED,
    WorkerReason.KV_TRANSFER_FAILED: grpc.StatusCode.UNAVAILABLE,
    WorkerReason.KV_LEASE_EXPIRED: grpc.StatusCode.UNAVAILABLE,
    WorkerReason.KV_EXPORT_FAILED: grpc.StatusCode.UNAVAILABLE,
    WorkerReason.KV_TRANSFER_UNKNOWN: grpc.StatusCode.NOT_FOUND,
    WorkerReason.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    WorkerReason.CANCELLED: grpc.StatusCode.CANCELLED,
}

_REASONS = frozenset(reason.value for reason in WorkerReason)


@dataclass(frozen=True, slots=True)
class WorkerFailure:
    reason: WorkerReason
    message: str
    request_id: str = ""

    @property
    def code(self) -> grpc.StatusCode:
        return _CODES[self.reason]

    def status(self) -> grpc.Status:
        info = error_details_pb2.ErrorInfo(
            reason=self.reason, domain=DOMAIN, metadata={"request_id": self.request_id}
        )
        packed = any_pb2.Any()
        packed.Pack(info)
        # grpc.StatusCode values are (number, name) pairs; google.rpc.Status wants the number.
        return rpc_status.to_status(
            status_pb2.Status(code=self.code.value[0], message=self.message, details=[packed])
        )


def abort(context: grpc.ServicerContext, failure: WorkerFailure) -> NoReturn:
    """Ends the (sync) call with the failure's status; raises, as context.abort does."""
    context.abort_with_status(failure.status())
    raise AssertionError("unreachable: abort_with_status raises")


def failure_reason(error: grpc.RpcError) -> WorkerReason | None:
    """The worker's reason carried by a failed call, None when it carries none (e.g. the
    worker died, or the status came from gRPC itself)."""
    trailers = error.trailing_metadata() or ()
    raw = next((value for key, value in trailers if key == "grpc-status-details-bin"), None)
    if raw is None:
        return None
    try:
        details = status_pb2.Status.FromString(raw).details
    except Exception:  # a malformed trailer is a worker failing, not a reason
        return None
    for packed in details:
        info = error_details_pb2.ErrorInfo()
        if packed.Unpack(info) and info.domain == DOMAIN and info.reason in _REASONS:
            return WorkerReason(info.reason)
    return None
