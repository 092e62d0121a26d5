"""Every way a request can end badly, as a typed error, and its gRPC status (ARCHITECTURE §10).

| error              | gRPC code          | ErrorInfo.reason      | extra detail            |
|--------------------|--------------------|-----------------------|-------------------------|
| InvalidArgument    | INVALID_ARGUMENT   | INVALID_ARGUMENT      | BadRequest(field)       |
| DuplicateRequestId | INVALID_ARGUMENT   | DUPLICATE_REQUEST_ID  | BadRequest(request_id)  |
| Overloaded         | RESOURCE_EXHAUSTED | OVERLOADED            | RetryInfo               |
| NoWorkers          | UNAVAILABLE        | NO_WORKERS            |                         |
| WorkerUnavailable  | UNAVAILABLE        | WORKER_UNAVAILABLE    | (before the first token)|
| WorkerLost         | UNAVAILABLE        | WORKER_LOST           | (mid-stream)            |
| KVTransferFailed   | UNAVAILABLE        | KV_TRANSFER_FAILED    | the pull failed         |
|                    |                    | KV_LEASE_EXPIRED      | the lease ended first   |
| DeadlineExceeded   | DEADLINE_EXCEEDED  | DEADLINE_EXCEEDED     |                         |
| Cancelled          | CANCELLED          | CANCELLED             |                         |
| Unauthenticated    | UNAUTHENTICATED    | UNAUTHENTICATED       | (router/auth.py)        |
| anything else      | INTERNAL           | INTERNAL              | generic message only    |

Every status carries ErrorInfo(domain="pdserve", metadata={"request_id", ["field"],
["worker_id"]}): a worker's failure names the worker. No exception text from outside this
module reaches a client: unexpected errors become INTERNAL.
"""

from __future__ import annotations

import enum

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "pdserve"


class ErrorReason(enum.StrEnum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    DUPLICATE_REQUEST_ID = "DUPLICATE_REQUEST_ID"
    OVERLOADED = "OVERLOADED"
    NO_WORKERS = "NO_WORKERS"
    WORKER_UNAVAILABLE = "WORKER_UNAVAILABLE"
    WORKER_LOST = "WORKER_LOST"
    KV_TRANSFER_FAILED = "KV_TRANSFER_FAILED"
    KV_LEASE_EXPIRED = "KV_LEASE_EXPIRED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CANCELLED = "CANCELLED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    INTERNAL = "INTERNAL"


class RouterError(Exception):
    """Base of the errors a client may see; `message` is safe to send."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: ErrorReason = ErrorReason.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def metadata(self) -> dict[str, str]:
        return {}

    def extra_details(self) -> list[Message]:
        return []


class InvalidArgument(RouterError):
    """A request field is malformed; `field` is its path (e.g. `sampling.top_p`)."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = ErrorReason.INVALID_ARGUMENT

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description

    def metadata(self) -> dict[str, str]:
        return {"field": self.field}

    def extra_details(self) -> list[Message]:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=self.field, description=self.description
        )
        return [error_details_pb2.BadRequest(field_violations=[violation])]


class DuplicateRequestId(InvalidArgument):
    reason = ErrorReason.DUPLICATE_REQUEST_ID

    def __init__(self) -> None:
        super().__init__("request_id", "a request with this id is already in flight")


class Overloaded(RouterError):
    """Admission refused (router cap or a worker's own); the client should retry later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = ErrorReason.OVERLOADED

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def extra_details(self) -> list[Message]:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(self.retry_after_s * 1e9))
        return [error_details_pb2.RetryInfo(retry_delay=delay)]


class NoWorkers(RouterError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = ErrorReason.NO_WORKERS


class WorkerFailed(RouterError):
    """A worker's failure; `worker_id` is set (and sent) once the caller knows which."""

    code = grpc.StatusCode.UNAVAILABLE
    worker_id = ""

    def metadata(self) -> dict[str, str]:
        return {"worker_id": self.worker_id} if self.worker_id else {}

    def on(self, worker_id: str) -> WorkerFailed:
        """This error, naming `worker_id` (unless it names one already)."""
        self.worker_id = self.worker_id or worker_id
        return self


class WorkerUnavailable(WorkerFailed):
    """A worker failed or was unreachable before the client saw a token."""

    reason = ErrorReason.WORKER_UNAVAILABLE


class WorkerLost(WorkerFailed):
    """The decode worker failed after tokens were streamed; those tokens stand."""

    reason = ErrorReason.WORKER_LOST


class KVTransferFailed(WorkerFailed):
    """The decode worker could not use the handed-off KV: the pull failed as a unit
    (KV_TRANSFER_FAILED) or the source's lease ended before it was acked (KV_LEASE_EXPIRED)."""

    def __init__(self, message: str, reason: ErrorReason) -> None:
        super().__init__(message)
        self.reason = reason


class DeadlineExceeded(RouterError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = ErrorReason.DEADLINE_EXCEEDED


class Cancelled(RouterError):
    code = grpc.StatusCode.CANCELLED
    reason = ErrorReason.CANCELLED


class Unauthenticated(RouterError):
    """The call carried no bearer token, or not the router's."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = ErrorReason.UNAUTHENTICATED


def to_status(error: RouterError, request_id: str) -> grpc.Status:
    """The grpc.Status (with google.rpc details) a client receives for `error`."""
    return _status(error.code, error.message, error.reason, request_id, error)


def internal_status(request_id: str) -> grpc.Status:
    """For an unexpected exception: generic text, the request id, nothing from the exception."""
    message = f"internal error; quote request id {request_id!r} when reporting it"
    return _status(grpc.StatusCode.INTERNAL, message, ErrorReason.INTERNAL, request_id, None)


def _status(
    code: grpc.StatusCode,
    message: str,
    reason: ErrorReason,
    request_id: str,
    error: RouterError | None,
) -> grpc.Status:
    metadata = {"request_id": request_id, **(error.metadata() if error else {})}
    details = [error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata)]
    details += error.extra_details() if error else []
    # grpc.StatusCode values are (number, name) pairs; google.rpc.Status wants the number.
    status = status_pb2.Status(
        code=code.value[0], message=message, details=[_pack(d) for d in details]
    )
    return rpc_status.to_status(status)


def _pack(detail: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(detail)
    return packed
