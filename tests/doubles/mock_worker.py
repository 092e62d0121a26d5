"""A deterministic mock of the internal Worker service (RELIABILITY.md "test doubles").

Token i of a request (i = 0 is token #1, which prefill samples) is `mock_token(prompt, i)`:
`(sum(prompt) * 31 + i * 7) % vocab_size`, moved past EOS ids unless `eos_at == i`. Every
output is therefore checkable without a model. Like the real workers:
    Prefill   pins the prompt's pages under a lease and returns a KVHandle of the backend the
              router named (no handle when token #1 already finished the request)
    Decode    with a handle: "fetches", then acks by calling ReleaseLease on `src_address`
              itself, then streams; without one (colocated): prefills locally, streams from #1
    Abort     ends a running Prefill/Decode of that id (CANCELLED); never releases leases
    WatchPageEvents  the pool's page events (tests/doubles/mock_cache.py), snapshot first
    Drain     sets `draining` (reported by GetStats); drained once no Prefill/Decode runs and
              no lease is held
Every call is recorded (`calls`), and `check_idle()` asserts no pages or leases are held.

With `MockBehavior.cache_pages` the pool is a real prefix cache (engine.page_pool.PagePool):
prompts are prefilled one at a time at `prefill_s_per_token` per uncached token, cached pages
are reused and reported (`cached_prompt_tokens`), evicted LRU, and published as page events.
Without it (the default) pages are plain counters, nothing is published, and a prompt's
cached tokens are the leading pages this worker has seen before.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import grpc
from pydantic import SecretStr

from engine.page_pool import PagePoolExhausted
from kv_transfer.pages import KVHandle, KVLayout, Role, TransportBackend
from kv_transfer.wire import handle_to_proto, layout_to_proto
from pdserve.channels import open_aio_channel
from pdserve.tls import TLSConfig, bind
from pdserve.v1 import generation_pb2, worker_pb2, worker_pb2_grpc
from pdserve.worker_errors import WorkerFailure
from pdserve.workers import MAX_MESSAGE_BYTES
from router import auth
from tests.doubles.mock_behavior import (
    SMALL_LAYOUT,
    Call,
    MockBehavior,
    WorkerMethod,
    mock_token,
)
from tests.doubles.mock_cache import (
    Aborted,
    CachedPrefill,
    MockPrefixCache,
    SimplePagePool,
    watch_page_events,
)

# What tests import from here; the data types live in mock_behavior.
__all__ = ["SMALL_LAYOUT", "Call", "MockBehavior", "MockWorker", "WorkerMethod", "mock_token"]


class MockWorker(worker_pb2_grpc.WorkerServicer):
    """One mock worker on 127.0.0.1:<ephemeral>; use `await start()` / `await stop()`."""

    def __init__(
        self,
        worker_id: str,
        role: Role,
        behavior: MockBehavior | None = None,
        layout: KVLayout = SMALL_LAYOUT,
        epoch: int = 1,
        tls: TLSConfig | None = None,
        auth_token: SecretStr | None = None,
    ) -> None:
        """`tls` and `auth_token` are the internal edge's, as a real worker's (both sides)."""
        self.worker_id, self.role, self.layout, self.epoch = worker_id, role, layout, epoch
        self.tls, self.auth_token = tls, auth_token
        self.behavior = b = behavior or MockBehavior()
        self.calls: list[Call] = []
        self.pool = (
            MockPrefixCache(b.cache_pages, layout.page_size, b.prefill_s_per_token, b.page_wait_s)
            if b.cache_pages
            else SimplePagePool(b.num_pages, layout.page_size)
        )
        self.leases: dict[str, list[int]] = {}  # transfer id -> pinned pages
        self.running: dict[str, list[int]] = {}  # request id -> its pages
        self.draining = False
        self._num_serving = 0  # Prefill/Decode calls in progress
        self._aborts: dict[str, asyncio.Event] = {}
        self._server: grpc.aio.Server | None = None
        self._peers: dict[str, grpc.aio.Channel] = {}
        self.address = ""

    async def start(self) -> None:
        self.pool.events.open()
        self._server = grpc.aio.server(interceptors=auth.interceptors(self.auth_token))
        worker_pb2_grpc.add_WorkerServicer_to_server(self, self._server)
        self.address = f"127.0.0.1:{bind(self._server, '127.0.0.1:0', self.tls)}"
        await self._server.start()

    async def stop(self) -> None:
        self.pool.events.close()
        if self._server is not None:
            await self._server.stop(0)
        for channel in self._peers.values():
            await channel.close()

    def calls_of(self, method: WorkerMethod) -> list[str]:
        return [call.key for call in self.calls if call.method is method]

    @property
    def drained(self) -> bool:
        return self.draining and not self._num_serving and not self.leases

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
        with self._serving():
            computed = await self._compute_prompt(request.request_id, prompt, 0, context)
            try:
                await self._work(request.request_id, self.behavior.prefill_delay_s, context)
            except BaseException:
                self._retire(request.request_id)
                raise
        first = self.token(prompt, 0)
        reply = worker_pb2.PrefillResponse(
            first_token_id=first,
            cached_prompt_tokens=computed.num_cached_tokens,
            queue_s=computed.queue_s,
            prefill_s=computed.prefill_s,
        )
        if self._finish(first, 0, sampling) is not None:
            self._retire(request.request_id)
            reply.finished = True
            return reply
        transfer_id = uuid.uuid4().hex
        self.leases[transfer_id] = computed.page_ids
        self.running.pop(request.request_id)
        handle = self._handle(transfer_id, computed.page_ids, request)
        reply.handle.CopyFrom(handle_to_proto(handle))
        return reply

    async def Decode(self, request, context):
        self.calls.append(Call(WorkerMethod.DECODE, request.request_id))
        prompt, sampling = list(request.prompt_token_ids), request.sampling
        with self._serving():
            computed = None  # handed off: the prefill worker computed the prompt
            if request.has_first_token:
                await self._fetch_and_ack(request, context)
                await self._admit(request.request_id, len(prompt) + sampling.max_tokens, context)
            else:
                rid, num_extra = request.request_id, sampling.max_tokens
                computed = await self._compute_prompt(rid, prompt, num_extra, context)
            start = 1 if request.has_first_token else 0
            try:
                for index in range(start, sampling.max_tokens):
                    await self._work(request.request_id, self.behavior.decode_delay_s, context)
                    await self._maybe_fail(index - start, context)
                    chunk = self._chunk(prompt, index, sampling)
                    if index == start:
                        self._describe_first(chunk, computed)
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
        pool = self.pool
        info = generation_pb2.WorkerInfo(
            worker_id=self.worker_id,
            role=self.role.value,
            address=self.address,
            pid=1234,
            node="mock-node",
            epoch=self.epoch,
            alive=True,
            pages_in_use=pool.num_in_use + pool.num_cached_idle,  # cached idle ones count
            pages_total=pool.num_pages,
            queue_len=pool.num_waiting,
            running=len(self.running),
            leases_outstanding=len(self.leases),
            request_pages=pool.num_in_use,
            integrity_ok=True,
            transport=TransportBackend.LOCAL.value,
            draining=self.draining,
            queued_prefill_tokens=pool.queued_prefill_tokens,
            drained=self.drained,
            device=self.behavior.device,
        )
        return worker_pb2.WorkerStats(
            info=info,
            layout=layout_to_proto(self.layout),
            kv_backends=[backend.value for backend in self.behavior.kv_backends],
        )

    async def WatchPageEvents(self, request, context):
        self.calls.append(Call(WorkerMethod.WATCH_PAGE_EVENTS))
        async for batch in watch_page_events(self.pool, self.epoch, request):
            yield batch

    async def Drain(self, request, context):
        self.calls.append(Call(WorkerMethod.DRAIN))
        self.draining = True
        return worker_pb2.DrainResponse(drained=self.drained)

    @contextmanager
    def _serving(self) -> Iterator[None]:
        self._num_serving += 1
        try:
            yield
        finally:
            self._num_serving -= 1

    async def _compute_prompt(
        self, request_id: str, prompt: list[int], num_extra_tokens: int, context
    ) -> CachedPrefill:
        """Admits the request under `running` with pages for its prompt and `num_extra_tokens`
        more, and computes the prompt (the pool's model of it)."""
        self.running[request_id] = []
        self._aborts[request_id] = aborted = asyncio.Event()
        try:
            computed = await self.pool.prefill(prompt, num_extra_tokens, aborted)
        except BaseException as error:
            self._retire(request_id)
            if isinstance(error, PagePoolExhausted):
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "mock page pool full")
            if isinstance(error, Aborted):
                await context.abort(grpc.StatusCode.CANCELLED, "aborted")
            raise
        self.running[request_id] = computed.page_ids
        return computed

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
            channel = self._peers[request.src_address] = open_aio_channel(
                request.src_address, self.tls, self.auth_token, MAX_MESSAGE_BYTES
            )
        ack = worker_pb2.ReleaseLeaseRequest(transfer_id=request.handle.transfer_id)
        await worker_pb2_grpc.WorkerStub(channel).ReleaseLease(ack, timeout=5)
        reason = self.behavior.kv_failure
        if reason is not None:  # like the real worker: acked, pages freed, typed status
            await context.abort_with_status(WorkerFailure(reason, "mock pull failed").status())

    def _chunk(self, prompt, index: int, sampling) -> worker_pb2.DecodeChunk:
        token = self.token(prompt, index)
        reason = self._finish(token, index, sampling)
        chunk = worker_pb2.DecodeChunk(token_ids=[token], stop_token_id=-1)
        if reason is not None:
            chunk.finished, chunk.finish_reason = True, reason
            chunk.stop_token_id = token if reason == "stop" else -1
        return chunk

    def _describe_first(self, chunk: worker_pb2.DecodeChunk, computed: CachedPrefill | None):
        """What the first chunk reports: the fetch (handed off) or the local prefill."""
        if computed is None:
            chunk.queue_s, chunk.kv_transfer_s = 0.001, self.behavior.report_kv_transfer_s
            return
        chunk.queue_s, chunk.prefill_s = computed.queue_s, computed.prefill_s
        chunk.cached_prompt_tokens = computed.num_cached_tokens

    def _finish(self, token: int, index: int, sampling) -> str | None:
        stops = set(sampling.stop_token_ids)
        if not sampling.ignore_eos:
            stops |= set(self.behavior.eos_token_ids)
        if token in stops:
            return "stop"
        return "length" if index + 1 >= sampling.max_tokens else None

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
