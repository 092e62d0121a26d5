"""The router's client of the internal Worker service; worker proto types stop here.

Every call takes the time left in the request's budget as its gRPC timeout, so the
deadline travels downstream in the `grpc-timeout` header. A failed call raises a
RouterError: DeadlineExceeded, Overloaded (the worker's RESOURCE_EXHAUSTED), KVTransferFailed
(the worker's typed reason says its handed-off KV was unusable, pdserve/worker_errors.py) or,
for any other status, WorkerUnavailable — never a grpc exception, and never the worker's own
error text (it may hold internals).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
from pydantic import SecretStr

from kv_transfer.pages import TransportBackend
from pdserve.channels import open_aio_channel
from pdserve.tls import TLSConfig
from pdserve.v1 import worker_pb2, worker_pb2_grpc
from pdserve.worker_errors import WorkerReason, failure_reason
from router import worker_wire as wire
from router.errors import (
    DeadlineExceeded,
    ErrorReason,
    KVTransferFailed,
    Overloaded,
    RouterError,
    WorkerUnavailable,
)
from router.prefix_index import EventBatch
from router.registry import WorkerRecord
from router.validation import ValidatedRequest
from router.worker_wire import DecodeUpdate, HandOff, PrefillResult

T = TypeVar("T")
log = logging.getLogger(__name__)


class WorkerClients:
    """One cached grpc.aio channel per worker address. Use from one event loop."""

    def __init__(
        self,
        max_message_bytes: int,
        overload_retry_after_s: float,
        tls: TLSConfig | None = None,
        token: SecretStr | None = None,
    ) -> None:
        self._max_message_bytes, self._tls, self._token = max_message_bytes, tls, token
        self._retry_after_s = overload_retry_after_s
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, worker_pb2_grpc.WorkerStub] = {}

    async def prefill(
        self,
        address: str,
        request: ValidatedRequest,
        kv_backend: TransportBackend,
        timeout_s: float,
    ) -> PrefillResult:
        """Prefill on `address`, exporting the KV through `kv_backend` (the pair's)."""
        message = worker_pb2.PrefillRequest(
            request_id=request.request_id,
            prompt_token_ids=request.prompt_token_ids,
            sampling=wire.sampling_to_proto(request),
            kv_backend=kv_backend.value,
        )
        reply = await self._unary(address, "Prefill", message, timeout_s)
        return _parsed(wire.prefill_from_proto, reply, address)

    async def decode(
        self, address: str, request: ValidatedRequest, timeout_s: float, handoff: HandOff | None
    ) -> AsyncIterator[DecodeUpdate]:
        """Streams the Decode call's updates; without `handoff` the worker prefills itself.

        Closing the iterator early cancels the call.
        """
        call = self._stub(address).Decode(wire.decode_to_proto(request, handoff), timeout=timeout_s)
        try:
            async for chunk in call:
                yield _parsed(wire.decode_from_proto, chunk, address)
        except grpc.aio.AioRpcError as error:
            raise self._translate(error, address) from None
        finally:
            call.cancel()

    async def release_lease(self, address: str, transfer_id: str, timeout_s: float) -> bool:
        message = worker_pb2.ReleaseLeaseRequest(transfer_id=transfer_id)
        return (await self._unary(address, "ReleaseLease", message, timeout_s)).released

    async def abort(self, address: str, request_id: str, timeout_s: float) -> bool:
        message = worker_pb2.WorkerAbortRequest(request_id=request_id)
        return (await self._unary(address, "Abort", message, timeout_s)).found

    async def get_stats(
        self, address: str, timeout_s: float, wait_for_ready: bool = False
    ) -> WorkerRecord:
        """The worker's identity and load, as a record to register or to update from. With
        `wait_for_ready` a worker not accepting connections yet is waited for (within
        `timeout_s`) instead of failing at once: for registering one that is starting."""
        message = worker_pb2.GetStatsRequest()
        reply = await self._unary(address, "GetStats", message, timeout_s, wait_for_ready)
        return _parsed(wire.record_from_stats, reply, address)

    async def drain(self, address: str, timeout_s: float) -> bool:
        """Asks the worker to drain; returns whether it is drained already."""
        reply = await self._unary(address, "Drain", worker_pb2.DrainRequest(), timeout_s)
        return reply.drained

    async def watch_page_events(
        self, worker_id: str, address: str, epoch: int, after_seq: int
    ) -> AsyncIterator[EventBatch]:
        """The worker's page-event stream from (epoch, after_seq); it ends only with the worker
        (WorkerUnavailable) or when the iterator is closed."""
        request = worker_pb2.WatchPageEventsRequest(epoch=epoch, after_seq=after_seq)
        call = self._stub(address).WatchPageEvents(request)
        try:
            async for batch in call:
                yield wire.batch_from_proto(worker_id, batch)
        except grpc.aio.AioRpcError as error:
            raise self._translate(error, address) from None
        finally:
            call.cancel()

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        self._stubs.clear()
        for channel in channels:
            await channel.close()

    async def _unary(
        self,
        address: str,
        method: str,
        message: Any,
        timeout_s: float,
        wait_for_ready: bool = False,
    ) -> Any:
        call = getattr(self._stub(address), method)
        try:
            return await call(message, timeout=timeout_s, wait_for_ready=wait_for_ready)
        except grpc.aio.AioRpcError as error:
            raise self._translate(error, address) from None

    def _stub(self, address: str) -> worker_pb2_grpc.WorkerStub:
        stub = self._stubs.get(address)
        if stub is None:
            channel = open_aio_channel(address, self._tls, self._token, self._max_message_bytes)
            stub = self._stubs[address] = worker_pb2_grpc.WorkerStub(channel)
            self._channels[address] = channel
        return stub

    def _translate(self, error: grpc.aio.AioRpcError, address: str) -> RouterError:
        code, reason = error.code(), failure_reason(error)
        log.info("worker %s: %s %s %s", address, code.name, reason or "", error.details())
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceeded("deadline exceeded while waiting for a worker")
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return Overloaded("the chosen worker is at capacity", self._retry_after_s)
        if reason in _KV_REASONS:
            return KVTransferFailed(_KV_REASONS[reason][1], _KV_REASONS[reason][0])
        return WorkerUnavailable(f"a worker failed ({code.name})")


_KV_REASONS = {
    WorkerReason.KV_TRANSFER_FAILED: (
        ErrorReason.KV_TRANSFER_FAILED,
        "the KV transfer to the decode worker failed",
    ),
    WorkerReason.KV_HANDLE_INVALID: (
        ErrorReason.KV_TRANSFER_FAILED,
        "the decode worker could not use the prefill worker's KV",
    ),
    WorkerReason.KV_LEASE_EXPIRED: (
        ErrorReason.KV_LEASE_EXPIRED,
        "the prefill worker's KV lease ended before the decode worker pulled it",
    ),
}


def _parsed(convert: Callable[[Any], T], message: Any, address: str) -> T:
    """`convert(message)`; a worker reply out of range (ValueError) is that worker failing."""
    try:
        return convert(message)
    except ValueError:
        log.warning("worker %s sent a malformed %s", address, type(message).__name__)
        raise WorkerUnavailable("a worker sent a malformed reply") from None
