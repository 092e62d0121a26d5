"""pdserve.v1.Generation, the public API: one servicer over a RouterServer's parts.

Generate, for one request:
    decode bytes -> RawRequest -> admit into the RequestTable (cap: refused at once when
    full; unique id) -> validate (+ tokenize, off the event loop) -> Orchestrator.run, each event written as it comes ->
    exactly one terminal status: OK after the Final message, or the error's status, recorded
    once in the request's lifecycle (router/lifecycle.py) and counted with the phase it ended
    in.
No worker is called before the request is valid and admitted.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import TYPE_CHECKING

import grpc

import pdserve
from pdserve.v1 import generation_pb2
from router import api_proto
from router.errors import Cancelled, InvalidArgument, RouterError, internal_status, to_status
from router.events import RequestClock, StreamEvent
from router.lifecycle import RequestLifecycle
from router.validation import RawRequest, is_valid_request_id

if TYPE_CHECKING:
    from router.server import RouterServer

log = logging.getLogger(__name__)

SERVICE_NAME = "pdserve.v1.Generation"


class GenerationServicer:
    """pdserve.v1.Generation. Registered by `add_generation_service`."""

    def __init__(self, server: RouterServer) -> None:
        self._router = server

    async def Generate(
        self,
        request: generation_pb2.GenerateRequest | api_proto.UndecodableRequest,
        context: grpc.aio.ServicerContext,
    ) -> None:
        metrics, lifecycle = self._router.metrics, RequestLifecycle()
        with metrics.track_running():
            try:
                status = await self._generate(request, context, lifecycle)
            except asyncio.CancelledError:  # the client went away (or its deadline passed)
                code = grpc.StatusCode.CANCELLED
                metrics.count_request(code, lifecycle.finish(code))
                raise
            code = status.code if status is not None else grpc.StatusCode.OK
            metrics.count_request(code, lifecycle.finish(code))
            if status is not None:
                await context.abort_with_status(status)

    async def _generate(
        self,
        request: generation_pb2.GenerateRequest | api_proto.UndecodableRequest,
        context: grpc.aio.ServicerContext,
        lifecycle: RequestLifecycle,
    ) -> grpc.Status | None:
        """Serves one Generate call; returns the error status it ends with (None: OK)."""
        request_id = ""
        try:
            if isinstance(request, api_proto.UndecodableRequest):
                request_id = _new_id()  # its own id could not be read: it still gets one
                raise InvalidArgument(request.field, "not a valid message (e.g. bad UTF-8)")
            raw = api_proto.raw_request_from_proto(request)
            request_id = raw.request_id if is_valid_request_id(raw.request_id) else _new_id()
            clock = RequestClock.start(context.time_remaining())
            await self._admitted_run(raw, request_id, clock, context, lifecycle)
        except RouterError as error:
            return to_status(error, request_id)
        except Exception:  # CancelledError is not an Exception: cancellation passes through
            log.exception("request %s failed unexpectedly", request_id)
            return internal_status(request_id)
        return None

    async def _admitted_run(
        self,
        raw: RawRequest,
        request_id: str,
        clock: RequestClock,
        context: grpc.aio.ServicerContext,
        lifecycle: RequestLifecycle,
    ) -> None:
        """Admits the request (an overload is refused here, before any work), validates it
        off the event loop, then runs it — all inside its slot, so the slots bound the
        validations waiting for a thread too."""

        async def emit(event: StreamEvent) -> None:
            await context.write(api_proto.event_to_proto(request_id, event))

        with self._router.requests.admitted(request_id) as entry:
            try:
                validator = self._router.validator
                validated = await asyncio.to_thread(validator.validate, raw, request_id)
                await self._router.orchestrator.run(validated, clock, emit, lifecycle)
            except asyncio.CancelledError:
                if not entry.abort_requested:
                    raise  # the client went away (or its deadline passed): nobody to tell
                asyncio.current_task().uncancel()
                raise Cancelled("aborted by an Abort call") from None

    async def Abort(self, request, context) -> generation_pb2.AbortResponse:
        return generation_pb2.AbortResponse(found=self._router.requests.abort(request.request_id))

    async def GetModelInfo(self, request, context) -> generation_pb2.ModelInfo:
        config, model = self._router.config, self._router.model
        layouts = [w.layout for w in await self._router.registry.list_workers() if w.alive]
        return generation_pb2.ModelInfo(
            model=config.served_model,
            max_context_len=model.max_position_embeddings,
            vocab_size=model.vocab_size,
            max_tokens_limit=config.max_tokens_limit,
            dtype=layouts[0].dtype if layouts else "",
            page_size=layouts[0].page_size if layouts else 0,
            eos_token_ids=model.eos_token_ids,
        )

    async def GetServerInfo(self, request, context) -> generation_pb2.ServerInfo:
        workers = await self._router.registry.list_workers()
        return generation_pb2.ServerInfo(
            version=pdserve.__version__,
            model=self._router.config.served_model,
            workers=[api_proto.worker_info_to_proto(w) for w in workers],
            requests_in_flight=self._router.requests.num_in_flight,
        )


def add_generation_service(servicer: GenerationServicer, server: grpc.aio.Server) -> None:
    """Like the generated add_GenerationServicer_to_server, but Generate's request bytes go
    through api_proto.decode_generate_request, which never fails."""
    unary = {
        "Abort": (generation_pb2.AbortRequest, generation_pb2.AbortResponse),
        "GetModelInfo": (generation_pb2.GetModelInfoRequest, generation_pb2.ModelInfo),
        "GetServerInfo": (generation_pb2.GetServerInfoRequest, generation_pb2.ServerInfo),
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=request_type.FromString,
            response_serializer=response_type.SerializeToString,
        )
        for name, (request_type, response_type) in unary.items()
    }
    handlers["Generate"] = grpc.unary_stream_rpc_method_handler(
        servicer.Generate,
        request_deserializer=api_proto.decode_generate_request,
        response_serializer=generation_pb2.GenerateResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


def _new_id() -> str:
    return uuid.uuid4().hex
