"""The chaos load: seeded token prompts sent over the public gRPC API at a fixed concurrency,
each ending in one `Outcome` checked against the mock runner's reference tokens.

A run, in order:
  1. `make_workload` draws K requests (seeded): half extend one of a few shared prefixes
     (so prefix reuse and prefix-aware routing are exercised), half are unique.
  2. `run_load` sends them over one grpc.aio channel, C at a time, in index order. Beside
     them each `Action` waits for its trigger (a number of requests started, or seconds
     since the start) and then runs once (a fault, a stats probe …). A request named in
     `cancel_after_tokens` is cancelled by the client once it has received that many tokens;
     one in `cancel_after_s`, that many seconds after it was sent, if it has not ended.
  3. Each call ends as an `Outcome`: its gRPC status (or OK), the ErrorInfo the router sent,
     the tokens delivered, and whether they equal the reference's prefix. A call that gets
     no terminal status within `hang_timeout_s` is cut off and counted as without one.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc

from engine.mock_runner import mock_reference_tokens
from pdserve.client import error_info
from pdserve.v1 import generation_pb2 as pb
from pdserve.v1 import generation_pb2_grpc

_FIRST_TOKEN_ID = 300  # prompts stay clear of special ids
_LAST_TOKEN_ID = 40_000


@dataclass(frozen=True, slots=True)
class WorkloadShape:
    num_groups: int = 8  # shared prefixes
    prefix_len: int = 48  # tokens of each shared prefix (3 pages of 16)
    suffix_len: tuple[int, int] = (4, 24)  # bounds of the unique part
    max_tokens: tuple[int, int] = (8, 32)  # bounds of each request's output
    shared_fraction: float = 0.5


@dataclass(frozen=True, slots=True)
class RequestSpec:
    index: int
    prompt: list[int]
    max_tokens: int
    shared: bool
    reference: list[int]  # the mock runner's max_tokens tokens for this prompt


@dataclass(slots=True)
class Outcome:
    index: int
    code: str | None = None  # "OK" or a grpc.StatusCode name; None: no terminal status
    reason: str = ""  # ErrorInfo.reason, e.g. WORKER_LOST
    metadata: dict[str, str] = field(default_factory=dict)  # ErrorInfo.metadata (worker_id …)
    tokens: list[int] = field(default_factory=list)
    matches_reference: bool = False  # OK: all tokens equal it; otherwise: a prefix of it
    prefill_worker_id: str = ""
    decode_worker_id: str = ""
    cancelled_by_client: bool = False
    tokens_at_cancel: int = -1  # a timed cancel: the tokens the client had then (-1: none)
    started_s: float = 0.0  # since the load began
    ended_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.code == "OK"

    @property
    def status_key(self) -> str:
        """How ScenarioResult.failed_by_status counts it: "UNAVAILABLE/WORKER_LOST"."""
        return f"{self.code}/{self.reason}" if self.reason else str(self.code)


@dataclass(frozen=True, slots=True)
class Action:
    """Runs `run()` once, when `after_requests` requests have started or `after_s` seconds
    have passed since the load began, whichever is given (both: whichever comes later)."""

    run: Callable[[], Awaitable[None]]
    after_requests: int = 0
    after_s: float = 0.0


@dataclass(slots=True)
class LoadRun:
    """What a run observed; `num_started` grows while it runs (actions may read it)."""

    outcomes: list[Outcome]
    num_started: int = 0
    seconds: float = 0.0

    def by_code(self, code: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.code == code]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.code != "OK"]


def make_workload(
    num_requests: int,
    vocab_size: int,
    eos_token_ids: Sequence[int],
    seed: int = 0,
    shape: WorkloadShape = WorkloadShape(),
) -> list[RequestSpec]:
    rng = random.Random(seed)
    prefixes = [_tokens(rng, shape.prefix_len) for _ in range(shape.num_groups)]
    specs = []
    for index in range(num_requests):
        shared = rng.random() < shape.shared_fraction
        head = rng.choice(prefixes) if shared else _tokens(rng, shape.prefix_len)
        prompt = head + _tokens(rng, rng.randint(*shape.suffix_len))
        max_tokens = rng.randint(*shape.max_tokens)
        reference = mock_reference_tokens(prompt, max_tokens, vocab_size, eos_token_ids)
        specs.append(RequestSpec(index, prompt, max_tokens, shared, reference))
    return specs


async def run_load(
    address: str,
    specs: Sequence[RequestSpec],
    concurrency: int,
    actions: Sequence[Action] = (),
    cancel_after_tokens: Mapping[int, int] | None = None,
    hang_timeout_s: float = 60.0,
    cancel_after_s: Mapping[int, float] | None = None,
) -> LoadRun:
    """Sends every spec (C at a time) while the actions run; returns once all have ended."""
    run = LoadRun([Outcome(spec.index) for spec in specs])
    pending = iter(specs)
    started = time.monotonic()
    cancels = dict(cancel_after_tokens or {})
    timed_cancels = dict(cancel_after_s or {})

    async def client(stub: generation_pb2_grpc.GenerationStub) -> None:
        for spec in pending:
            run.num_started += 1
            outcome = run.outcomes[spec.index]
            outcome.started_s = time.monotonic() - started
            call = _call(
                stub, spec, outcome, cancels.get(spec.index), timed_cancels.get(spec.index)
            )
            try:
                await asyncio.wait_for(call, hang_timeout_s)
            except TimeoutError:
                outcome.code = None  # no terminal status: a hang
            outcome.ended_s = time.monotonic() - started

    async with grpc.aio.insecure_channel(address) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        triggered = [asyncio.create_task(_when_due(a, run, started)) for a in actions]
        await asyncio.gather(*(client(stub) for _ in range(concurrency)))
        await asyncio.gather(*triggered)
    run.seconds = time.monotonic() - started
    return run


async def _when_due(action: Action, run: LoadRun, started: float) -> None:
    while run.num_started < action.after_requests or time.monotonic() - started < action.after_s:
        await asyncio.sleep(0.01)
    await action.run()


async def _call(
    stub: generation_pb2_grpc.GenerationStub,
    spec: RequestSpec,
    outcome: Outcome,
    cancel_after: int | None,
    cancel_after_s: float | None = None,
) -> None:
    request = pb.GenerateRequest(
        tokens=pb.TokenInput(token_ids=spec.prompt),
        sampling=pb.SamplingParams(max_tokens=spec.max_tokens),
    )
    call = stub.Generate(request)
    if cancel_after_s is not None:
        asyncio.get_running_loop().call_later(cancel_after_s, _cancel_unless_done, call, outcome)
    try:
        if cancel_after == 0:
            _cancel(call, outcome)
        async for response in call:
            if response.HasField("final"):
                outcome.prefill_worker_id = response.final.prefill_worker_id
                outcome.decode_worker_id = response.final.decode_worker_id
            outcome.tokens += response.chunk.token_ids
            if cancel_after is not None and len(outcome.tokens) >= cancel_after:
                _cancel(call, outcome)
        outcome.code = "OK"
    except grpc.aio.AioRpcError as error:
        outcome.code = error.code().name
        outcome.reason, outcome.metadata = error_info(error)
    except asyncio.CancelledError:
        if not outcome.cancelled_by_client:
            call.cancel()
            raise  # the hang timeout cut it off
        outcome.code = grpc.StatusCode.CANCELLED.name
    delivered = outcome.tokens
    expected = spec.reference if outcome.ok else spec.reference[: len(delivered)]
    outcome.matches_reference = delivered == expected


def _cancel(call: grpc.aio.UnaryStreamCall, outcome: Outcome) -> None:
    outcome.cancelled_by_client = True
    call.cancel()


def _cancel_unless_done(call: grpc.aio.UnaryStreamCall, outcome: Outcome) -> None:
    if not call.done():
        outcome.tokens_at_cancel = len(outcome.tokens)
        _cancel(call, outcome)


def _tokens(rng: random.Random, length: int) -> list[int]:
    return [rng.randrange(_FIRST_TOKEN_ID, _LAST_TOKEN_ID) for _ in range(length)]
