"""The decode worker's internal gRPC edge: protobuf in, dataclasses inside."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import grpc

from decode_worker.lease_keeper import LeaseExpired
from decode_worker.scheduler import DecodeScheduler, IncompatibleHandle, NoPagesForKV
from decode_worker.streams import OutputStream, StreamEvent, StreamTimeout
from engine.request import RequestStatus
from kv_transfer.transport import TransferError
from kv_transfer.wire import handle_from_proto
from pdserve.drain import AtCapacity
from pdserve.v1 import worker_pb2, worker_pb2_grpc
from pdserve.worker_edge import WorkerEdge
from pdserve.worker_errors import WorkerFailure, abort
from pdserve.worker_errors import WorkerReason as Reason
from pdserve.workers import sampling_from_proto

# Without a client deadline a stream still ends: nothing waits forever.
DEFAULT_TIMEOUT_S = 3600.0

_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
}


class DecodeServicer(worker_pb2_grpc.WorkerServicer):
    """Serves Decode (handed-off or colocated), Abort, GetStats, WatchPageEvents, Drain."""

    def __init__(
        self,
        scheduler: DecodeScheduler,
        edge: WorkerEdge,
        stats: Callable[[], worker_pb2.WorkerStats],
    ) -> None:
        self._scheduler = scheduler
        self._edge = edge
        self._stats = stats

    def Decode(
        self, request: worker_pb2.DecodeRequest, context: grpc.ServicerContext
    ) -> Iterator[worker_pb2.DecodeChunk]:
        try:
            with self._edge.gate.serving():
                yield from self._decode(request, context)
        except AtCapacity as exc:  # raised on entry only: nothing was started
            abort(context, WorkerFailure(Reason.AT_CAPACITY, str(exc), request.request_id))

    def _decode(
        self, request: worker_pb2.DecodeRequest, context: grpc.ServicerContext
    ) -> Iterator[worker_pb2.DecodeChunk]:
        request_id = request.request_id
        deadline_s = time.monotonic() + (context.time_remaining() or DEFAULT_TIMEOUT_S)
        context.add_callback(lambda: self._scheduler.abort(request_id))  # no-op once finished
        stream, transfer_s = self._start(request, context, deadline_s)
        finished, first = False, True
        try:
            for batch in stream.batches(deadline_s, context.is_active):
                chunk = _chunk(batch)
                if first:  # once per stream, on the first chunk
                    chunk.kv_transfer_s, chunk.first_step_s = transfer_s, batch[0].step_s
                finished, first = chunk.finished, False
                yield chunk
        except StreamTimeout:
            message = f"decode of {request_id} timed out"
            abort(context, WorkerFailure(Reason.DEADLINE_EXCEEDED, message, request_id))
        finally:
            # However the stream ends unfinished (timeout, the caller gone — even while the
            # KV was being pulled, before the abort callback could find the request), the
            # engine lets the request go.
            if not finished:
                self._scheduler.abort(request_id)

    def _start(
        self, request: worker_pb2.DecodeRequest, context: grpc.ServicerContext, deadline_s: float
    ) -> tuple[OutputStream, float]:
        prompt = list(request.prompt_token_ids)
        sampling = sampling_from_proto(request.sampling)
        if not request.HasField("handle"):
            return self._scheduler.start_colocated(request.request_id, prompt, sampling), 0.0
        try:
            handle = handle_from_proto(request.handle)
            return self._scheduler.start_handoff(
                request.request_id,
                prompt,
                sampling,
                request.first_token_id,
                handle,
                request.src_address,
                deadline_s,
            )
        except (IncompatibleHandle, ValueError) as exc:
            reason, message = Reason.KV_HANDLE_INVALID, str(exc)
        except NoPagesForKV as exc:
            reason, message = Reason.KV_PAGES_EXHAUSTED, str(exc)
        except LeaseExpired as exc:
            reason, message = Reason.KV_LEASE_EXPIRED, str(exc)
        except TransferError as exc:
            reason, message = Reason.KV_TRANSFER_FAILED, str(exc)
        except TimeoutError as exc:
            reason, message = Reason.DEADLINE_EXCEEDED, str(exc)
        abort(context, WorkerFailure(reason, message, request.request_id))

    def Abort(self, request: worker_pb2.WorkerAbortRequest, context: grpc.ServicerContext):
        self._scheduler.abort(request.request_id)
        return worker_pb2.WorkerAbortResponse(found=True)

    def GetStats(self, request: worker_pb2.GetStatsRequest, context: grpc.ServicerContext):
        return self._stats()

    def WatchPageEvents(self, request, context: grpc.ServicerContext):
        return self._edge.watch_page_events(request, context)

    def Drain(self, request: worker_pb2.DrainRequest, context: grpc.ServicerContext):
        return self._edge.drain()


def _chunk(batch: list[StreamEvent]) -> worker_pb2.DecodeChunk:
    last = batch[-1]
    finished = last.status.is_finished
    return worker_pb2.DecodeChunk(
        token_ids=[token for event in batch for token in event.token_ids],
        finished=finished,
        finish_reason=_FINISH_REASONS.get(last.status, "") if finished else "",
        stop_token_id=last.stop_token_id if last.stop_token_id is not None else -1,
        cached_prompt_tokens=last.num_cached_tokens,
        queue_s=last.queue_s,
        prefill_s=last.prefill_s,
    )
