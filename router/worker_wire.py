"""The internal Worker service's messages as the router's dataclasses, both ways: requests
out (sampling, decode with its hand-off), replies in (prefill, decode updates, page events,
stats). worker_client.py makes the calls; nothing else in the router sees worker protos.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from kv_transfer.pages import KVHandle, Role, TransportBackend, known_backends
from kv_transfer.wire import handle_from_proto, handle_to_proto, layout_from_proto
from pdserve.v1 import worker_pb2
from router.prefix_index import EventBatch, IndexEvent
from router.registry import WorkerLoad, WorkerRecord, known_device
from router.validation import ValidatedRequest


class WorkerFinish(enum.StrEnum):
    LENGTH = "length"
    STOP = "stop"


@dataclass(frozen=True, slots=True)
class PrefillResult:
    first_token_id: int
    handle: KVHandle | None  # None when token #1 finished the request
    finished: bool
    cached_prompt_tokens: int
    queue_s: float
    prefill_s: float
    first_token_unix_s: float  # the prefill worker's wall clock when it sampled token #1


@dataclass(frozen=True, slots=True)
class DecodeUpdate:
    token_ids: tuple[int, ...]
    finished: bool
    finish_reason: WorkerFinish | None  # set when finished
    stop_token_id: int | None  # the stop token that finished it
    kv_transfer_s: float
    cached_prompt_tokens: int  # colocated only
    queue_s: float
    prefill_s: float  # colocated only
    first_step_s: float = 0.0  # first update: the engine step that made its tokens


@dataclass(frozen=True, slots=True)
class HandOff:
    """What a disaggregated Decode carries: token #1, its KV and where to ack the lease."""

    first_token_id: int
    handle: KVHandle
    src_address: str


def sampling_to_proto(request: ValidatedRequest) -> worker_pb2.WorkerSampling:
    sampling = request.sampling
    return worker_pb2.WorkerSampling(
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        seed=sampling.seed or 0,
        has_seed=sampling.seed is not None,
        max_tokens=sampling.max_tokens,
        stop_token_ids=sampling.stop_token_ids,
        ignore_eos=sampling.ignore_eos,
    )


def decode_to_proto(request: ValidatedRequest, handoff: HandOff | None) -> worker_pb2.DecodeRequest:
    message = worker_pb2.DecodeRequest(
        request_id=request.request_id,
        prompt_token_ids=request.prompt_token_ids,
        sampling=sampling_to_proto(request),
    )
    if handoff is not None:
        message.has_first_token = True
        message.first_token_id = handoff.first_token_id
        message.handle.CopyFrom(handle_to_proto(handoff.handle))
        message.src_address = handoff.src_address
    return message


def prefill_from_proto(reply: worker_pb2.PrefillResponse) -> PrefillResult:
    return PrefillResult(
        first_token_id=reply.first_token_id,
        handle=handle_from_proto(reply.handle) if reply.HasField("handle") else None,
        finished=reply.finished,
        cached_prompt_tokens=reply.cached_prompt_tokens,
        queue_s=reply.queue_s,
        prefill_s=reply.prefill_s,
        first_token_unix_s=reply.first_token_unix_s,
    )


def decode_from_proto(chunk: worker_pb2.DecodeChunk) -> DecodeUpdate:
    reason = WorkerFinish(chunk.finish_reason) if chunk.finished else None
    # stop_token_id means something only when a stop ended the stream (-1 = none).
    is_stop_token = reason is WorkerFinish.STOP and chunk.stop_token_id >= 0
    return DecodeUpdate(
        token_ids=tuple(chunk.token_ids),
        finished=chunk.finished,
        finish_reason=reason,
        stop_token_id=chunk.stop_token_id if is_stop_token else None,
        kv_transfer_s=chunk.kv_transfer_s,
        cached_prompt_tokens=chunk.cached_prompt_tokens,
        queue_s=chunk.queue_s,
        prefill_s=chunk.prefill_s,
        first_step_s=chunk.first_step_s,
    )


def batch_from_proto(worker_id: str, batch: worker_pb2.PageEventBatch) -> EventBatch:
    events = tuple(IndexEvent(e.stored, e.page_hash, e.seq) for e in batch.events)
    return EventBatch(worker_id, batch.epoch, events, batch.last_seq, batch.reset)


def record_from_stats(stats: worker_pb2.WorkerStats) -> WorkerRecord:
    """Raises ValueError for an unknown role, default backend or an invalid layout; backends
    and a device it does not know are read as rolling upgrades do (known_backends,
    known_device)."""
    info = stats.info
    load = WorkerLoad(
        queue_len=info.queue_len,
        running=info.running,
        pages_in_use=info.pages_in_use,
        pages_total=info.pages_total,
        leases_outstanding=info.leases_outstanding,
        transfers_in_flight=info.transfers_in_flight,
        request_pages=info.request_pages,
        integrity_ok=info.integrity_ok,
        queued_prefill_tokens=info.queued_prefill_tokens,
        draining=info.draining,
        drained=info.drained,
    )
    return WorkerRecord(
        worker_id=info.worker_id,
        role=Role(info.role),
        address=info.address,
        epoch=info.epoch,
        layout=layout_from_proto(stats.layout),
        node=info.node,
        pid=info.pid,
        metrics_port=info.metrics_port,
        transport=TransportBackend(info.transport),
        kv_backends=known_backends(stats.kv_backends),
        device=known_device(info.device),
        load=load,
    )
