"""The public API's protobuf <-> the router's dataclasses (the server edge; only server.py
imports this module). Includes a tolerant decoder of GenerateRequest bytes, so that a
request which protobuf refuses to parse (e.g. invalid UTF-8 in a string) is still answered
with INVALID_ARGUMENT naming a field rather than with gRPC's own error.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError

from pdserve.v1 import generation_pb2
from router.events import Completion, FinishReason, StreamEvent, TokenChunk
from router.registry import WorkerRecord
from router.tokenizer import ChatMessage
from router.validation import InputKind, RawRequest, RawSampling
from router.wire_faults import TOP_LEVEL, fault_path

_FINISH_REASONS = {
    FinishReason.LENGTH: generation_pb2.FINISH_REASON_LENGTH,
    FinishReason.STOP: generation_pb2.FINISH_REASON_STOP,
}


FAULT_SEARCH_MAX_BYTES = 256 * 1024  # ~0.1 s of walking at worst


@dataclass(frozen=True, slots=True)
class UndecodableRequest:
    """GenerateRequest bytes protobuf rejected; `field` is where decoding failed."""

    field: str


def decode_generate_request(data: bytes) -> generation_pb2.GenerateRequest | UndecodableRequest:
    """The Generate handler's request deserializer: never raises. It runs on the router's
    event loop, so the pure-Python search for the broken field is done only for messages of
    up to FAULT_SEARCH_MAX_BYTES; a larger broken one is named `request` as a whole."""
    try:
        return generation_pb2.GenerateRequest.FromString(data)
    except DecodeError:
        if len(data) > FAULT_SEARCH_MAX_BYTES:
            return UndecodableRequest(TOP_LEVEL)
        return UndecodableRequest(fault_path(generation_pb2.GenerateRequest.DESCRIPTOR, data))


def raw_request_from_proto(message: generation_pb2.GenerateRequest) -> RawRequest:
    kind = message.WhichOneof("input")
    return RawRequest(
        request_id=message.request_id,
        model=message.model,
        kind=InputKind(kind) if kind else InputKind.NONE,
        prompt=message.prompt,
        messages=tuple(ChatMessage(m.role, m.content) for m in message.chat.messages),
        token_ids=tuple(message.tokens.token_ids),
        sampling=_sampling_from_proto(message.sampling),
    )


def _sampling_from_proto(sampling: generation_pb2.SamplingParams) -> RawSampling:
    def optional(name: str):  # None for a field the client left unset
        return getattr(sampling, name) if sampling.HasField(name) else None

    return RawSampling(
        temperature=optional("temperature"),
        top_p=optional("top_p"),
        top_k=optional("top_k"),
        seed=optional("seed"),
        max_tokens=optional("max_tokens"),
        stop_token_ids=tuple(sampling.stop_token_ids),
        stop=tuple(sampling.stop),
        ignore_eos=sampling.ignore_eos,
    )


def event_to_proto(request_id: str, event: StreamEvent) -> generation_pb2.GenerateResponse:
    if isinstance(event, TokenChunk):
        chunk = generation_pb2.Chunk(token_ids=event.token_ids, text=event.text)
        return generation_pb2.GenerateResponse(request_id=request_id, chunk=chunk)
    return generation_pb2.GenerateResponse(request_id=request_id, final=_final(event))


def _final(completion: Completion) -> generation_pb2.Final:
    usage, timing = completion.usage, completion.timing
    return generation_pb2.Final(
        finish_reason=_FINISH_REASONS[completion.finish_reason],
        stop=completion.stop,
        usage=generation_pb2.Usage(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_prompt_tokens=usage.cached_prompt_tokens,
        ),
        timing=generation_pb2.Timing(
            queue_s=timing.queue_s,
            prefill_s=timing.prefill_s,
            kv_transfer_s=timing.kv_transfer_s,
            ttft_s=timing.ttft_s,
            e2e_s=timing.e2e_s,
            first_token_unix_s=timing.first_token_unix_s,
            decode_step_s=timing.decode_step_s,
            handover_s=timing.handover_s,
        ),
        prefill_worker_id=completion.prefill_worker_id,
        decode_worker_id=completion.decode_worker_id,
    )


def worker_info_to_proto(record: WorkerRecord) -> generation_pb2.WorkerInfo:
    load = record.load
    return generation_pb2.WorkerInfo(
        worker_id=record.worker_id,
        role=record.role.value,
        address=record.address,
        pid=record.pid,
        node=record.node,
        epoch=record.epoch,
        alive=record.alive,
        pages_in_use=load.pages_in_use,
        pages_total=load.pages_total,
        queue_len=load.queue_len,
        running=load.running,
        leases_outstanding=load.leases_outstanding,
        transfers_in_flight=load.transfers_in_flight,
        request_pages=load.request_pages,
        integrity_ok=load.integrity_ok,
        transport=record.transport.value,
        device=record.device.value,
        draining=load.draining,
        queued_prefill_tokens=load.queued_prefill_tokens,
        drained=load.drained,
        metrics_port=record.metrics_port,
    )
