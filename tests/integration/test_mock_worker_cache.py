"""The mock worker's prefix cache, page-event stream and drain, called directly over gRPC:
what the router relies on when it is put in front of cache-enabled mocks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from types import SimpleNamespace

import grpc
import pytest

from engine.page_pool import PageEvent, PageEventKind
from kv_transfer.pages import Role, page_hashes
from pdserve.v1 import worker_pb2, worker_pb2_grpc
from tests.doubles.mock_cache import PageEventLog, watch_page_events
from tests.doubles.mock_worker import MockBehavior, MockWorker

PAGE_SIZE = 4  # SMALL_LAYOUT's
PROMPT = list(range(100, 138))  # 38 tokens: 9 full pages and 2 tokens
SAME_PREFIX = PROMPT[:32] + [7, 7, 7, 7, 7, 7]


@asynccontextmanager
async def serving(worker: MockWorker) -> AsyncIterator[worker_pb2_grpc.WorkerStub]:
    await worker.start()
    try:
        async with grpc.aio.insecure_channel(worker.address) as channel:
            yield worker_pb2_grpc.WorkerStub(channel)
    finally:
        await worker.stop()


def prefill_request(prompt: Sequence[int], request_id: str = "r") -> worker_pb2.PrefillRequest:
    sampling = worker_pb2.WorkerSampling(max_tokens=4, ignore_eos=True)
    return worker_pb2.PrefillRequest(
        request_id=request_id, prompt_token_ids=prompt, sampling=sampling
    )


async def release(stub, reply: worker_pb2.PrefillResponse) -> None:
    await stub.ReleaseLease(worker_pb2.ReleaseLeaseRequest(transfer_id=reply.handle.transfer_id))


async def prefill_and_release(stub, prompt: Sequence[int]) -> worker_pb2.PrefillResponse:
    reply = await stub.Prefill(prefill_request(prompt))
    await release(stub, reply)
    return reply


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def cached_worker(role: Role = Role.PREFILL, cache_pages: int = 64, **behavior) -> MockWorker:
    return MockWorker("p0", role, MockBehavior(cache_pages=cache_pages, **behavior))


async def test_a_watch_opens_with_a_snapshot_then_follows_new_pages():
    async with serving(cached_worker()) as stub:
        first = await prefill_and_release(stub, PROMPT)
        stream = stub.WatchPageEvents(worker_pb2.WatchPageEventsRequest(epoch=0))
        snapshot = await stream.read()
        assert (snapshot.reset, snapshot.epoch, snapshot.last_seq) == (True, 1, 9)
        assert {e.page_hash for e in snapshot.events} == set(page_hashes(PROMPT, PAGE_SIZE))
        second = await prefill_and_release(stub, SAME_PREFIX)
        live = await stream.read()
        new_page = page_hashes(SAME_PREFIX, PAGE_SIZE)[8]  # the first 8 pages were reused
        assert not live.reset and live.last_seq == 10
        assert [(e.stored, e.page_hash, e.seq) for e in live.events] == [(True, new_page, 10)]
        assert (first.cached_prompt_tokens, second.cached_prompt_tokens) == (0, 32)
        stream.cancel()


async def test_a_watch_resumes_from_its_cursor_within_its_epoch():
    async with serving(cached_worker()) as stub:
        await prefill_and_release(stub, PROMPT)
        stream = stub.WatchPageEvents(worker_pb2.WatchPageEventsRequest(epoch=1, after_seq=6))
        batch = await stream.read()
        assert not batch.reset
        assert [e.seq for e in batch.events] == [7, 8, 9]
        stream.cancel()


async def test_a_watch_behind_the_kept_events_gets_a_snapshot():
    log = PageEventLog(capacity=2)
    for seq in (1, 2, 3):  # event 2 is the oldest kept
        log.append(PageEvent(PageEventKind.STORED, bytes([seq]), seq))
    source = SimpleNamespace(events=log, snapshot=lambda: ([b"\x01", b"\x03"], 3))
    request = worker_pb2.WatchPageEventsRequest(epoch=1, after_seq=0)
    stream = watch_page_events(source, epoch=1, request=request)
    first = await anext(stream)
    assert (first.reset, first.last_seq) == (True, 3)
    assert [e.page_hash for e in first.events] == [b"\x01", b"\x03"]
    await stream.aclose()


async def test_an_evicted_page_is_streamed_as_removed():
    # 10 pages: PROMPT's 10 fit; a second prompt of 10 pages evicts its 9 cached ones.
    async with serving(cached_worker(cache_pages=10)) as stub:
        await prefill_and_release(stub, PROMPT)
        stream = stub.WatchPageEvents(worker_pb2.WatchPageEventsRequest(epoch=1, after_seq=9))
        await prefill_and_release(stub, [9] * 40)
        removed = []
        while len(removed) < 9:
            removed += [e.page_hash for e in (await stream.read()).events if not e.stored]
        assert set(removed) == set(page_hashes(PROMPT, PAGE_SIZE))
        stream.cancel()


async def test_a_prompt_that_cannot_fit_is_resource_exhausted_and_holds_nothing():
    worker = cached_worker(cache_pages=4)
    async with serving(worker) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Prefill(prefill_request(PROMPT))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        worker.check_idle()


async def test_a_prefill_waits_for_the_pages_a_lease_pins_when_told_to():
    worker = cached_worker(cache_pages=10, page_wait_s=5.0)
    async with serving(worker) as stub:
        first = await stub.Prefill(prefill_request(PROMPT, "a"))  # its lease pins all 10
        second = asyncio.ensure_future(stub.Prefill(prefill_request([9] * 40, "b")))
        await until(lambda: "b" in worker.running)
        await asyncio.sleep(0.05)
        assert not second.done()  # waiting for pages
        await release(stub, first)
        await release(stub, await second)
        worker.check_idle()


async def test_prefills_run_one_at_a_time_and_report_their_queued_tokens():
    worker = cached_worker(prefill_s_per_token=0.01)  # 0.38 s per prompt
    async with serving(worker) as stub:
        running = asyncio.ensure_future(stub.Prefill(prefill_request(PROMPT, "a")))
        waiting = asyncio.ensure_future(stub.Prefill(prefill_request([5] * 38, "b")))
        await until(lambda: worker.pool.num_waiting == 1)
        info = (await stub.GetStats(worker_pb2.GetStatsRequest())).info
        assert (info.queue_len, info.queued_prefill_tokens, info.running) == (1, 76, 2)
        await stub.Abort(worker_pb2.WorkerAbortRequest(request_id="b"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await waiting
        assert caught.value.code() == grpc.StatusCode.CANCELLED
        info = (await stub.GetStats(worker_pb2.GetStatsRequest())).info
        assert (info.queue_len, info.queued_prefill_tokens, info.running) == (0, 38, 1)
        reply = await running
        await stub.ReleaseLease(
            worker_pb2.ReleaseLeaseRequest(transfer_id=reply.handle.transfer_id)
        )
        worker.check_idle()


async def test_drained_once_nothing_runs_and_no_lease_is_held():
    worker = cached_worker()
    async with serving(worker) as stub:
        reply = await stub.Prefill(prefill_request(PROMPT))
        assert not (await stub.Drain(worker_pb2.DrainRequest())).drained  # a lease is held
        info = (await stub.GetStats(worker_pb2.GetStatsRequest())).info
        assert (info.draining, info.drained) == (True, False)
        await stub.ReleaseLease(
            worker_pb2.ReleaseLeaseRequest(transfer_id=reply.handle.transfer_id)
        )
        assert (await stub.Drain(worker_pb2.DrainRequest())).drained


async def test_a_colocated_decode_reuses_and_reports_the_cached_prefix():
    async with serving(cached_worker(Role.BOTH)) as stub:
        sampling = worker_pb2.WorkerSampling(max_tokens=2, ignore_eos=True)
        cached = []
        for prompt in (PROMPT, SAME_PREFIX):
            request = worker_pb2.DecodeRequest(
                request_id="c", prompt_token_ids=prompt, sampling=sampling
            )
            chunks = [chunk async for chunk in stub.Decode(request)]
            cached.append(chunks[0].cached_prompt_tokens)
        assert cached == [0, 32]
        info = (await stub.GetStats(worker_pb2.GetStatsRequest())).info
        assert (info.request_pages, info.pages_in_use) == (0, 10)  # 9 + 1 cached pages, idle
