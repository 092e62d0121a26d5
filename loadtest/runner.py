"""Sends a workload over the public API (grpc.aio) and records what each request saw.

Two arrival modes (`LoadPlan`):
  open loop    `rate` requests/s; inter-arrival gaps are gamma-distributed with shape
               1/burstiness and mean 1/rate (burstiness 1 = Poisson; < 1 steadier, > 1
               burstier), as vLLM's benchmark_serving draws them. A request is sent on time
               whether or not earlier ones have finished.
  closed loop  `concurrency` clients, each sending its next request when the last one ended.
Either stops sending after `num_requests` or once `duration_s` has passed, then waits for the
requests in flight. Every time is seconds since the run began (time.perf_counter).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import grpc

from loadtest.workloads import LoadRequest
from pdserve.client import error_info
from pdserve.v1 import generation_pb2 as pb
from pdserve.v1 import generation_pb2_grpc

OK = "OK"


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """How requests are sent: exactly one of `rate` (open loop) or `concurrency` (closed)."""

    rate: float | None = None  # requests/s; inf sends everything at once
    concurrency: int | None = None
    burstiness: float = 1.0
    num_requests: int = 100
    duration_s: float | None = None
    seed: int = 0
    timeout_s: float = 300.0  # each request's deadline

    def __post_init__(self) -> None:
        if (self.rate is None) == (self.concurrency is None):
            raise ValueError("give exactly one of rate (open loop) or concurrency (closed loop)")
        if self.rate is not None and self.rate <= 0:
            raise ValueError(f"rate must be > 0, got {self.rate}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.burstiness <= 0:
            raise ValueError(f"burstiness must be > 0, got {self.burstiness}")

    @property
    def is_open_loop(self) -> bool:
        return self.rate is not None


@dataclass(slots=True)
class RequestRecord:
    """What one request saw; times in seconds since the run began."""

    index: int
    prompt_len: int
    max_tokens: int
    sent_s: float = 0.0
    first_token_s: float | None = None
    chunk_times_s: list[float] = field(default_factory=list)  # one per chunk with tokens
    end_s: float = 0.0
    num_output_tokens: int = 0
    code: str = ""  # "OK" or a grpc.StatusCode name
    reason: str = ""  # the ErrorInfo reason of a failure, e.g. OVERLOADED
    prompt_tokens: int = 0  # the server's count (Final.usage); prompt_len until it comes
    cached_prompt_tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.code == OK


@dataclass(slots=True)
class LoadResult:
    records: list[RequestRecord]
    duration_s: float  # from the first send to the last end


def arrival_gaps_s(plan: LoadPlan, count: int) -> list[float]:
    """`count` seeded gaps before each send of an open-loop run (all 0 at rate inf)."""
    assert plan.rate is not None
    if plan.rate == float("inf"):
        return [0.0] * count
    rng = random.Random(plan.seed)
    shape = 1.0 / plan.burstiness
    scale = 1.0 / (plan.rate * shape)  # mean = shape * scale = 1 / rate
    return [rng.gammavariate(shape, scale) for _ in range(count)]


OnEnd = Callable[[RequestRecord], None]


async def run_load(
    stub: generation_pb2_grpc.GenerationStub,
    requests: Sequence[LoadRequest],
    plan: LoadPlan,
    on_end: OnEnd | None = None,
) -> LoadResult:
    """Sends up to `plan.num_requests` of `requests` (in order) as `plan` says."""
    chosen = list(requests[: plan.num_requests])
    started = time.perf_counter()
    sender = _Sender(stub, plan.timeout_s, started, on_end)
    if plan.is_open_loop:
        records = await _open_loop(sender, chosen, plan, started)
    else:
        records = await _closed_loop(sender, chosen, plan, started)
    first = min((r.sent_s for r in records), default=0.0)
    last = max((r.end_s for r in records), default=0.0)
    return LoadResult(records, last - first)


@dataclass(frozen=True, slots=True)
class _Sender:
    stub: generation_pb2_grpc.GenerationStub
    timeout_s: float
    started: float
    on_end: OnEnd | None

    async def __call__(self, request: LoadRequest, record: RequestRecord) -> None:
        await send(self.stub, request, record, self.timeout_s, self.started)
        if self.on_end is not None:
            self.on_end(record)


async def _open_loop(
    sender: _Sender,
    requests: list[LoadRequest],
    plan: LoadPlan,
    started: float,
) -> list[RequestRecord]:
    tasks, records = [], []
    for request, gap_s in zip(requests, arrival_gaps_s(plan, len(requests)), strict=True):
        await asyncio.sleep(gap_s)
        if _past_duration(plan, started):
            break
        record = _record(request)
        records.append(record)
        tasks.append(asyncio.create_task(sender(request, record)))
    await asyncio.gather(*tasks)
    return records


async def _closed_loop(
    sender: _Sender,
    requests: list[LoadRequest],
    plan: LoadPlan,
    started: float,
) -> list[RequestRecord]:
    records: list[RequestRecord] = []
    pending: Iterator[LoadRequest] = iter(requests)

    async def client() -> None:
        for request in pending:
            if _past_duration(plan, started):
                return
            record = _record(request)
            records.append(record)
            await sender(request, record)

    assert plan.concurrency is not None
    await asyncio.gather(*(client() for _ in range(plan.concurrency)))
    return sorted(records, key=lambda r: r.index)


def _past_duration(plan: LoadPlan, started: float) -> bool:
    return plan.duration_s is not None and time.perf_counter() - started >= plan.duration_s


def _record(request: LoadRequest) -> RequestRecord:
    return RequestRecord(
        request.index, request.prompt_len, request.max_tokens, prompt_tokens=request.prompt_len
    )


async def send(
    stub: generation_pb2_grpc.GenerationStub,
    request: LoadRequest,
    record: RequestRecord,
    timeout_s: float,
    started: float,
) -> None:
    """Runs one request to its end, filling `record`; never raises for an RPC failure."""
    message = pb.GenerateRequest(
        tokens=pb.TokenInput(token_ids=request.prompt_token_ids),
        sampling=pb.SamplingParams(max_tokens=request.max_tokens, ignore_eos=True),
    )
    record.sent_s = time.perf_counter() - started
    try:
        async for response in stub.Generate(message, timeout=timeout_s):
            _observe(record, response, time.perf_counter() - started)
        record.code = OK
    except grpc.aio.AioRpcError as error:
        record.code = error.code().name
        record.reason = error_info(error)[0]
    record.end_s = time.perf_counter() - started


def _observe(record: RequestRecord, response: pb.GenerateResponse, now_s: float) -> None:
    if response.HasField("final"):
        usage = response.final.usage
        record.prompt_tokens = usage.prompt_tokens
        record.cached_prompt_tokens = usage.cached_prompt_tokens
        return
    if not response.chunk.token_ids:
        return  # text held back, or an empty keep-alive: no token arrived
    if record.first_token_s is None:
        record.first_token_s = now_s
    record.chunk_times_s.append(now_s)
    record.num_output_tokens += len(response.chunk.token_ids)
