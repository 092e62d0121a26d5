"""Router errors become gRPC statuses with google.rpc details, never leaking internals."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2

from router.errors import (
    DuplicateRequestId,
    InvalidArgument,
    NoWorkers,
    Overloaded,
    WorkerLost,
    internal_status,
    to_status,
)


def unpack(status: grpc.Status) -> tuple[status_pb2.Status, dict[str, object]]:
    """The google.rpc.Status in the trailers and its details by type name."""
    ((key, value),) = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    rich = status_pb2.Status.FromString(value)
    details = {}
    for packed in rich.details:
        for kind in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.RetryInfo,
        ):
            if packed.Is(kind.DESCRIPTOR):
                detail = kind()
                packed.Unpack(detail)
                details[kind.__name__] = detail
    return rich, details


def test_invalid_argument_names_the_field_in_error_info_and_bad_request():
    status = to_status(InvalidArgument("sampling.top_p", "must be in (0, 1]"), "req-7")
    rich, details = unpack(status)
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT
    assert rich.code == 3 and rich.message == "sampling.top_p: must be in (0, 1]"
    info = details["ErrorInfo"]
    assert (info.reason, info.domain) == ("INVALID_ARGUMENT", "pdserve")
    assert dict(info.metadata) == {"request_id": "req-7", "field": "sampling.top_p"}
    (violation,) = details["BadRequest"].field_violations
    assert (violation.field, violation.description) == ("sampling.top_p", "must be in (0, 1]")


def test_duplicate_id_is_invalid_argument_on_request_id():
    status = to_status(DuplicateRequestId(), "dup")
    _, details = unpack(status)
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT
    assert details["ErrorInfo"].reason == "DUPLICATE_REQUEST_ID"
    assert details["BadRequest"].field_violations[0].field == "request_id"


def test_overload_carries_a_retry_hint():
    status = to_status(Overloaded("full", retry_after_s=0.25), "r")
    _, details = unpack(status)
    assert status.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details["RetryInfo"].retry_delay.ToNanoseconds() == 250_000_000
    assert details["ErrorInfo"].reason == "OVERLOADED"


def test_worker_failures_are_unavailable_with_distinct_reasons():
    no_workers, lost = to_status(NoWorkers("none"), "a"), to_status(WorkerLost("gone"), "b")
    assert no_workers.code is lost.code is grpc.StatusCode.UNAVAILABLE
    assert unpack(no_workers)[1]["ErrorInfo"].reason == "NO_WORKERS"
    assert unpack(lost)[1]["ErrorInfo"].reason == "WORKER_LOST"


def test_internal_status_says_nothing_but_the_request_id():
    status = internal_status("req-9")
    rich, details = unpack(status)
    assert status.code is grpc.StatusCode.INTERNAL
    assert rich.message == "internal error; quote request id 'req-9' when reporting it"
    assert set(details) == {"ErrorInfo"}
