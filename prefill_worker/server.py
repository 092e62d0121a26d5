"""The prefill worker's internal gRPC edge: protobuf in, dataclasses inside."""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc

from kv_transfer.pages import TransportBackend
from kv_transfer.transport import TransferError
from kv_transfer.transport_set import TransportSet, UnavailableBackend
from kv_transfer.wire import handle_to_proto
from pdserve.drain import AtCapacity
from pdserve.v1 import worker_pb2, worker_pb2_grpc
from pdserve.worker_edge import WorkerEdge
from pdserve.worker_errors import WorkerFailure, abort
from pdserve.worker_errors import WorkerReason as Reason
from pdserve.workers import sampling_from_proto
from prefill_worker.leases import LeaseTable
from prefill_worker.scheduler import PrefillAborted, PrefillScheduler

log = logging.getLogger(__name__)

# Without a client deadline a prefill still ends: nothing waits forever.
DEFAULT_TIMEOUT_S = 300.0


class PrefillServicer(worker_pb2_grpc.WorkerServicer):
    """Serves Prefill, SendKV, ReleaseLease, Abort, GetStats, WatchPageEvents and Drain;
    Decode is not this role's."""

    def __init__(
        self,
        scheduler: PrefillScheduler,
        leases: LeaseTable,
        transports: TransportSet,
        edge: WorkerEdge,
        stats: Callable[[], worker_pb2.WorkerStats],
    ) -> None:
        self._scheduler = scheduler
        self._leases = leases
        self._transports = transports
        self._edge = edge
        self._stats = stats

    def Prefill(self, request: worker_pb2.PrefillRequest, context: grpc.ServicerContext):
        try:
            with self._edge.gate.serving():
                return self._prefill(request, context)
        except AtCapacity as exc:  # raised on entry only: nothing was started
            abort(context, WorkerFailure(Reason.AT_CAPACITY, str(exc), request.request_id))

    def _prefill(self, request: worker_pb2.PrefillRequest, context: grpc.ServicerContext):
        request_id = request.request_id
        context.add_callback(lambda: self._scheduler.abort(request_id))  # no-op once finished
        timeout_s = context.time_remaining() or DEFAULT_TIMEOUT_S
        kv_backend = _backend_or_abort(request.kv_backend, context, "kv_backend")
        try:
            result = self._scheduler.prefill(
                request_id,
                list(request.prompt_token_ids),
                sampling_from_proto(request.sampling),
                kv_backend,
                timeout_s,
            )
        except UnavailableBackend as exc:
            abort(context, WorkerFailure(Reason.KV_BACKEND_UNAVAILABLE, str(exc), request_id))
        except TimeoutError:
            message = f"prefill of {request_id} timed out"
            abort(context, WorkerFailure(Reason.DEADLINE_EXCEEDED, message, request_id))
        except PrefillAborted:
            message = f"prefill of {request_id} aborted"
            abort(context, WorkerFailure(Reason.CANCELLED, message, request_id))
        except TransferError as exc:
            abort(context, WorkerFailure(Reason.KV_EXPORT_FAILED, str(exc), request_id))
        if result.handle is not None and not context.is_active():
            self._leases.release(result.handle.transfer_id)  # the caller is gone: unpin now
        return worker_pb2.PrefillResponse(
            first_token_id=result.first_token_id,
            handle=handle_to_proto(result.handle) if result.handle else None,
            finished=result.finished,
            cached_prompt_tokens=result.num_cached_tokens,
            queue_s=result.queue_s,
            prefill_s=result.prefill_s,
            first_token_unix_s=result.first_token_unix_s,
        )

    def SendKV(self, request: worker_pb2.SendKVRequest, context: grpc.ServicerContext):
        backend = _backend_or_abort(request.backend, context, "backend")
        try:
            self._transports.send(backend, request.transfer_id, request.dst_rank)
        except UnavailableBackend as exc:
            abort(context, WorkerFailure(Reason.KV_BACKEND_UNAVAILABLE, str(exc)))
        except TransferError as exc:  # released (acked or expired) or never exported
            abort(context, WorkerFailure(Reason.KV_TRANSFER_UNKNOWN, str(exc)))
        return worker_pb2.SendKVResponse()

    def ReleaseLease(self, request: worker_pb2.ReleaseLeaseRequest, context: grpc.ServicerContext):
        return worker_pb2.ReleaseLeaseResponse(released=self._leases.release(request.transfer_id))

    def RenewLease(self, request: worker_pb2.RenewLeaseRequest, context: grpc.ServicerContext):
        expiry = self._leases.renew(request.transfer_id)
        if expiry is None:
            return worker_pb2.RenewLeaseResponse(renewed=False)
        return worker_pb2.RenewLeaseResponse(renewed=True, expiry_unix_s=expiry)

    def Abort(self, request: worker_pb2.WorkerAbortRequest, context: grpc.ServicerContext):
        self._scheduler.abort(request.request_id)
        return worker_pb2.WorkerAbortResponse(found=True)

    def GetStats(self, request: worker_pb2.GetStatsRequest, context: grpc.ServicerContext):
        return self._stats()

    def WatchPageEvents(self, request, context: grpc.ServicerContext):
        return self._edge.watch_page_events(request, context)

    def Drain(self, request: worker_pb2.DrainRequest, context: grpc.ServicerContext):
        return self._edge.drain()


def _backend_or_abort(
    value: str, context: grpc.ServicerContext, field: str
) -> TransportBackend | None:
    """The backend a request names; None when it names none. Aborts the call naming `field`
    when the name is unknown."""
    if not value:
        return None
    try:
        return TransportBackend(value)
    except ValueError:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: unknown KV backend {value!r}")
