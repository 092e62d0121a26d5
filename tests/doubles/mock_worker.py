"""A deterministic mock of the internal Worker service (RELIABILITY.md "test doubles").

Token i of a request (i = 0 is token #1, which prefill samples) is `mock_token(prompt, i)`:
`(sum(prompt) * 31 + i * 7) % vocab_size`, moved past EOS ids unless `eos_at == i`. Every
output is therefore checkable without a model. Like the real workers:
    Prefill   pins the prompt's pages under a lease and returns a KVHandle of the backend the
              router named (no handle when token #1 already finished the request)
    Decode    with a handle: "fetches", then acks by calling ReleaseLease on `src_address`
              itself, then streams; without one (colocated): prefills locally, streams from #1
    Abort     ends a running Prefill/Decode of that id (CANCELLED); never releases leases
Every call is recorded (`calls`), and `check_idle()` asserts no pages or leases are held.
"""

from __future__ import annotations

import asyncio
import enum
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from kv_transfer.pages import KVHandle, KVLayout, Role, TransportBackend, page_hashes
from kv_transfer.wire import handle_to_proto, layout_to_proto
from pdserve.v1 import generation_pb2, worker_pb2, worker_pb2_grpc

SMALL_LAYOUT = KVLayout(num_layers=2, num_kv_heads=1, head_dim=8, page_size=4, dtype="float32")


def mock_token(
    prompt: Sequence[int], index: int, vocab_size: int, eos_token_ids: Sequence[int] = ()
) -> int:
    token = (sum(prompt) * 31 + index * 7) % vocab_size
    while token in eos_token_ids:
        token = (token + 1) % vocab_size
    return token


class WorkerMethod(enum.StrEnum):
    PREFILL = "Prefill"
    DECODE = "Decode"
    RELEASE_LEASE = "ReleaseLease"
    ABORT = "Abort"
    GET_STATS = "GetStats"


@dataclass(frozen=True, slots=True)
class Call:
    method: WorkerMethod
    key: str = ""  # request id, or transfer id for ReleaseLease


@dataclass(slots=True)
class MockBehavior:
    vocab_size: int = 49152
    eos_token_ids: tuple[int, ...] = (2,)
    eos_at: int | None = None  # token index that is EOS instead of the formula's token
    prefill_delay_s: float = 0.0
    decode_delay_s: float = 0.0  # per token
    num_pages: int = 256
    fail_decode_after: int | None = None  # UNAVAILABLE after this many streamed tokens
    report_kv_transfer_s: float = 0.002
    kv_backends: tuple[TransportBackend, ...] = (TransportBackend.SHM,)  # what GetStats reports


@dataclass(slots=True)
class PagePool:
    """Page ids 0..num_pages-1; the only owner of which are free."""

    num_pages: int
    free_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.free_ids = list(range(self.num_pages))

    @property
    def num_in_use(self) -> int:
        return self.num_pages - len(self.free_ids)

    def allocate(self, count: int) -> list[int] | None:
        if count > len(self.free_ids):
            return None
        taken, self.free_ids = self.free_ids[:count], self.free_ids[count:]
        return taken

    def free(self, page_ids: Sequence[int]) -> None:
        self.free_ids.extend(page_ids)

    def check_integrity(self) -> None:
        assert len(set(self.free_ids)) == len(self.free_ids), "a page was freed twice"


class MockWorker(worker_pb2_grpc.WorkerServicer):
    """One mock worker on 127.0.0.1:<ephemeral>; use `await start()` / `await stop()`."""

    def __init__(
        self,
        worker_id: str,
        role: Role,
        behavior: MockBehavior | None = None,
        layout: KVLayout = SMALL_LAYOUT,
        epoch: int = 1,
    ) -> None:
        self.worker_id, self.role, self.layout, self.epoch = worker_id, role, layout, epoch
        self.behavior = behavior or MockBehavior()
        self.calls: list[Call] = []
        self.pool = PagePool(self.behavior.num_pages)
        self.leases: dict[str, list[int]] = {}  # transfer id -> pinned pages
        self.running: dict[str, list[int]] = {}  # request id -> its pages
        self._aborts: dict[str, asyncio.Event] = {}
        self._seen_pages: set[bytes] = set()
        self._server: grpc.aio.Server | None = None
        self._peers: dict[str, grpc.aio.Channel] = {}
        self.address = ""

    async def start(self) -> None:
        self._server = grpc.aio.server()
        worker_pb2_grpc.add_WorkerServicer_to_server(self, self._server)
        self.address = f"127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
        for channel in self._peers.values():
            await channel.close()

    def calls_of(self, method: WorkerMethod) -> list[str]:
        return [call.key for call in self.calls if call.method is method]

    def check_idle(self) -> None:
        """Asserts that no request holds pages and no lease is outstanding."""
        self.pool.check_integrity()
        assert not self.leases, f"{self.worker_id}: leases left {sorted(self.leases)}"
        assert not self.running, f"{self.worker_id}: requests left {sorted(self.running)}"
        assert self.pool.num_in_use == 0, f"{self.worker_id}: {self.pool.num_in_use} pages"

    def token(self, prompt: Sequence[int], index: int) -> int:
        b = self.behavior
        if b.eos_at == index:
            return b.eos_token_ids[0]
        return mock_token(prompt, index, b.vocab_size, b.eos_token_ids)

    async def Prefill(self, request, context):
        self.calls.append(Call(WorkerMethod.PREFILL, request.request_id))
        prompt, sampling = list(request.prompt_token_ids), request.sampling
        pages = await self._admit(request.request_id, len(prompt), context)
        try:
            await self._work(request.request_id, self.behavior.prefill_delay_s, context)
        except BaseException:
            self._retire(request.request_id)
            raise
        first = self.token(prompt, 0)
        reply = worker_pb2.PrefillResponse(
            first_token_id=first, cached_prompt_tokens=self._cached(prompt), prefill_s=0.003
        )
        if self._finish(first, 0, sampling) is not None:
            self._retire(request.request_id)
            reply.finished = True
            return reply
        transfer_id = uuid.uuid4().hex
        self.leases[transfer_id] = pages
        self.running.pop(request.request_id)
        reply.handle.CopyFrom(handle_to_proto(self._handle(transfer_id, pages, request)))
        return reply

    async def Decode(self, request, context):
        self.calls.append(Call(WorkerMethod.DECODE, request.request_id))
        prompt, sampling = list(request.prompt_token_ids), request.sampling
        if request.has_first_token:
            await self._fetch_and_ack(request, context)
        start = 1 if request.has_first_token else 0
        await self._admit(request.request_id, len(prompt) + sampling.max_tokens, context)
        try:
            for index in range(start, sampling.max_tokens):
                await self._work(request.request_id, self.behavior.decode_delay_s, context)
                await self._maybe_fail(index - start, context)
                chunk = self._chunk(prompt, index, sampling, is_first=index == start)
                yield chunk
                if chunk.finished:
                    return
        finally:
            self._retire(request.request_id)

    async def ReleaseLease(self, request, context):
        self.calls.append(Call(WorkerMethod.RELEASE_LEASE, request.transfer_id))
        pages = self.leases.pop(request.transfer_id, None)
        if pages is not None:
            self.pool.free(pages)
        return worker_pb2.ReleaseLeaseResponse(released=pages is not None)

    async def Abort(self, request, context):
        self.calls.append(Call(WorkerMethod.ABORT, request.request_id))
        event = self._aborts.get(request.request_id)
        if event is not None:
            event.set()
        return worker_pb2.WorkerAbortResponse(found=event is not None)

    async def GetStats(self, request, context):
        self.calls.append(Call(WorkerMethod.GET_STATS))
        info = generation_pb2.WorkerInfo(
            worker_id=self.worker_id,
            role=self.role.value,
            address=self.address,
            pid=1234,
            node="mock-node",
            epoch=self.epoch,
            alive=True,
            pages_in_use=self.pool.num_in_use,
            pages_total=self.pool.num_pages,
            running=len(self.running),
            leases_outstanding=len(self.leases),
            request_pages=sum(len(p) for p in self.running.values()),
            integrity_ok=True,
            transport=TransportBackend.LOCAL.value,
        )
        return worker_pb2.WorkerStats(
            info=info,
            layout=layout_to_proto(self.layout),
            kv_backends=[backend.value for backend in self.behavior.kv_backends],
        )

    async def _admit(self, request_id: str, num_tokens: int, context) -> list[int]:
        pages = self.pool.allocate(self.layout.num_pages_for(num_tokens))
        if pages is None:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "mock page pool full")
        self.running[request_id] = pages
        self._aborts[request_id] = asyncio.Event()
        return pages

    def _retire(self, request_id: str) -> None:
        self.pool.free(self.running.pop(request_id, []))
        self._aborts.pop(request_id, None)

    async def _work(self, request_id: str, delay_s: float, context) -> None:
        """Sleeps `delay_s` as the request's compute; ends the call if it is aborted."""
        aborted = self._aborts[request_id]
        try:
            await asyncio.wait_for(aborted.wait(), timeout=delay_s)
        except TimeoutError:
            return
        await context.abort(grpc.StatusCode.CANCELLED, "aborted")

    async def _maybe_fail(self, num_streamed: int, context) -> None:
        if self.behavior.fail_decode_after == num_streamed:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "mock decode worker lost")

    async def _fetch_and_ack(self, request, context) -> None:
        if self.behavior.fail_decode_after == 0:  # dies before its fetch: nobody acks
            await context.abort(grpc.StatusCode.UNAVAILABLE, "mock decode worker lost")
        channel = self._peers.get(request.src_address)
        if channel is None:
            channel = self._peers[request.src_address] = grpc.aio.insecure_channel(
                request.src_address
            )
        ack = worker_pb2.ReleaseLeaseRequest(transfer_id=request.handle.transfer_id)
        await worker_pb2_grpc.WorkerStub(channel).ReleaseLease(ack, timeout=5)

    def _chunk(self, prompt, index: int, sampling, is_first: bool) -> worker_pb2.DecodeChunk:
        token = self.token(prompt, index)
        reason = self._finish(token, index, sampling)
        chunk = worker_pb2.DecodeChunk(token_ids=[token], stop_token_id=-1)
        if reason is not None:
            chunk.finished, chunk.finish_reason = True, reason
            chunk.stop_token_id = token if reason == "stop" else -1
        if is_first:
            chunk.kv_transfer_s = self.behavior.report_kv_transfer_s if index else 0.0
            chunk.queue_s = 0.001
            if index == 0:  # colocated: this worker also prefilled
                chunk.prefill_s, chunk.cached_prompt_tokens = 0.003, self._cached(prompt)
        return chunk

    def _finish(self, token: int, index: int, sampling) -> str | None:
        stops = set(sampling.stop_token_ids)
        if not sampling.ignore_eos:
            stops |= set(self.behavior.eos_token_ids)
        if token in stops:
            return "stop"
        return "length" if index + 1 >= sampling.max_tokens else None

    def _cached(self, prompt: Sequence[int]) -> int:
        """Tokens of the prompt's leading full pages this worker has seen before."""
        hashes = page_hashes(prompt, self.layout.page_size)
        num_hits = next((i for i, h in enumerate(hashes) if h not in self._seen_pages), len(hashes))
        self._seen_pages.update(hashes)
        return num_hits * self.layout.page_size

    def _handle(self, transfer_id: str, pages: list[int], request) -> KVHandle:
        return KVHandle(
            transfer_id=transfer_id,
            src_worker_id=self.worker_id,
            src_epoch=self.epoch,
            page_ids=tuple(pages),
            num_tokens=len(request.prompt_token_ids),
            layout=self.layout,
            lease_expiry_unix_s=time.time() + 30,
            backend=TransportBackend(request.kv_backend or TransportBackend.LOCAL),
        )
