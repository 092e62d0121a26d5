"""Bad input (shared/RELIABILITY.md): ≥ 10,000 malformed requests (2,000 under `make test`),
each with one defect (bad_requests.py, wire_defects.py), sent over real gRPC to a real router in
front of mock workers. Must hold for every one: INVALID_ARGUMENT (never UNKNOWN or INTERNAL)
with ErrorInfo naming the request id and the defect's field, the same field in BadRequest, no
Python exception text; a message beyond the router's gRPC cap may instead get gRPC's own
RESOURCE_EXHAUSTED. After the run: 0 Prefill and 0 Decode calls on any worker, nothing in
flight, and the router still serves. Duplicate ids are a separate scenario below: the first
request of an id is valid and reaches the workers (then the client cancels it), the concurrent
second is refused with DUPLICATE_REQUEST_ID.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from kv_transfer.pages import Role
from pdserve.v1 import generation_pb2 as pb
from tests.chaos import wire_defects as wire
from tests.chaos.bad_requests import (
    FUZZ_ROUTER_CONFIG,
    MAX_CONTEXT_LEN,
    VOCAB_SIZE,
    BadRequest,
    bad_identity,
    bad_input,
    bad_sampling_value,
    bad_stop_strings,
    bad_stop_token_ids,
    max_tokens_beyond_context,
)
from tests.chaos.report import ScenarioResult, record, scaled
from tests.doubles.mock_worker import MockBehavior, MockWorker, WorkerMethod
from tests.doubles.router_cluster import RouterCluster, error_details, router_cluster

NUM_REQUESTS = scaled(full=10_000, ci=2_000)
BATCH = 50  # requests per hypothesis example, sent concurrently
GENERATE = "/pdserve.v1.Generation/Generate"
FIELD_PATH = re.compile(r"[a-z_]+(\[\d+\])?(\.[a-z_]+(\[\d+\])?)*")
EXCEPTION_TEXT = re.compile(r"Traceback|File \"|Error\(|Exception|\bline \d+")
REAL_FIELDS = frozenset(
    {"request", "request_id", "model", "prompt", "chat", "chat.messages", "tokens"}
    | {"tokens.token_ids", "sampling", "chat.messages.role", "chat.messages.content"}
    | {f"sampling.{name}" for name in wire.SAMPLING_FIELDS}
)
defects = st.one_of(
    bad_sampling_value(),
    max_tokens_beyond_context(),
    bad_stop_strings(),
    bad_stop_token_ids(),
    bad_input(),
    bad_identity(),
    wire.utf8_in_top_level_string(),
    wire.utf8_in_chat(),
    wire.utf8_in_stop(),
    wire.cut_top_level_field(),
    wire.cut_sampling_field(),
    wire.cut_tag(),
    wire.garbage_bytes(),
)
# One message in ~200 (hypothesis favours the bounds 0 and 199, not 100) is beyond the gRPC cap (each is 128-256 KiB).
bad_request = st.integers(0, 199).flatmap(
    lambda n: wire.oversized_message() if n == 100 else defects
)


def _request_id_or_self(case: BadRequest) -> object:
    return case.request_id or id(case)


def draw_batches(num_requests: int) -> list[list[BadRequest]]:
    """Hypothesis-generated batches, derandomized: the same requests on every run."""
    batches: list[list[BadRequest]] = []

    @settings(
        max_examples=num_requests // BATCH,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    # Ids unique within a batch: sent together, a repeated one is refused as a duplicate.
    @given(st.lists(bad_request, min_size=BATCH, max_size=BATCH, unique_by=_request_id_or_self))
    def collect(batch: list[BadRequest]) -> None:
        batches.append(batch)

    collect()
    return batches


@dataclass
class Tally:
    """What the fuzz saw: outcomes by status/reason, and every broken expectation."""

    sent: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    by_defect: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def add(self, case: BadRequest, outcome: str, problems: list[str]) -> None:
        self.sent += 1
        self.outcomes[outcome] += 1
        self.by_defect[case.defect.split(":")[0].split("=")[0]] += 1
        self.problems += [f"{case.describe()}: {p}" for p in problems]
        import sys

        [
            print(case.defect, "|", p, file=sys.stderr)
            for p in problems
            if "request_id ''" not in p
        ]  # DEBUG


async def send(channel: grpc.aio.Channel, case: BadRequest) -> tuple[str, list[str]]:
    """Sends one malformed call; returns its outcome ("CODE/reason") and what is wrong with it."""
    call = channel.unary_stream(GENERATE)(case.payload, timeout=60)
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as error:
        return judge(case, error)
    return "OK", ["accepted: a malformed request was served"]


def judge(case: BadRequest, error: grpc.aio.AioRpcError) -> tuple[str, list[str]]:
    code = error.code()
    if case.oversized and code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return "RESOURCE_EXHAUSTED/grpc message cap", []
    if code is not grpc.StatusCode.INVALID_ARGUMENT:
        return f"{code.name}", [f"status {code.name}: {error.details()!r}"]
    details = error_details(error)
    info = details.get("ErrorInfo")
    if info is None or "BadRequest" not in details:
        return "INVALID_ARGUMENT/no details", [f"details missing: {sorted(details)}"]
    return f"INVALID_ARGUMENT/{info.reason}", field_problems(case, error, details)


def field_problems(case: BadRequest, error: grpc.aio.AioRpcError, details: dict) -> list[str]:
    info, violations = details["ErrorInfo"], details["BadRequest"].field_violations
    named = info.metadata.get("field", "")
    problems = []
    if case.fields and named not in case.fields or not is_real_field(named):
        problems.append(f"named {named!r}, expected one of {sorted(case.fields)}")
    if [v.field for v in violations] != [named]:
        problems.append(f"BadRequest names {[v.field for v in violations]}, ErrorInfo {named!r}")
    request_id = info.metadata.get("request_id", "")
    if not request_id or case.request_id and request_id != case.request_id:
        problems.append(f"request_id {request_id!r}, expected {case.request_id or 'assigned'!r}")
    if EXCEPTION_TEXT.search(error.details() or "") or not error.details().startswith(named):
        problems.append(f"message {error.details()!r}")
    return problems


def is_real_field(path: str) -> bool:
    return FIELD_PATH.fullmatch(path) is not None and re.sub(r"\[\d+\]", "", path) in REAL_FIELDS


def workers() -> list[MockWorker]:
    return [MockWorker("p0", Role.PREFILL), MockWorker("d0", Role.DECODE)]


def generation_calls(cluster: RouterCluster) -> Counter[str]:
    return Counter(
        f"{worker_id} {method}"
        for worker_id, worker in cluster.workers.items()
        for method in (WorkerMethod.PREFILL, WorkerMethod.DECODE)
        for _ in worker.calls_of(method)
    )


async def test_malformed_requests_are_all_rejected_by_field_before_any_worker(smollm2_dir):
    batches = draw_batches(NUM_REQUESTS)
    tally = Tally()
    async with router_cluster(smollm2_dir, workers(), **FUZZ_ROUTER_CONFIG) as cluster:
        model = cluster.router.model
        assert (model.vocab_size, model.max_position_embeddings) == (VOCAB_SIZE, MAX_CONTEXT_LEN)
        started = time.monotonic()
        for batch in batches:
            outcomes = await asyncio.gather(*(send(cluster.channel, case) for case in batch))
            for case, (outcome, problems) in zip(batch, outcomes, strict=True):
                tally.add(case, outcome, problems)
        seconds = time.monotonic() - started
        calls = generation_calls(cluster)
        in_flight = cluster.router.requests.num_in_flight
        still_serves = await serves_a_valid_request(cluster)
    result = ScenarioResult(
        "bad input fuzz",
        requests=tally.sent,
        failed_by_status=tally.outcomes,
        unknown_errors=tally.outcomes["UNKNOWN"],
        seconds=seconds,
        extra_failures=invariant_failures(tally, calls, in_flight, still_serves),
    )
    record(result)
    print(f"\nbad input fuzz: {dict(tally.by_defect)}")
    assert tally.sent >= NUM_REQUESTS
    assert result.failures() == []


def invariant_failures(
    tally: Tally, calls: Counter[str], in_flight: int, still_serves: bool
) -> list[str]:
    """The fuzz's own pass bar, beyond the one every scenario shares."""
    failures = [f"{len(tally.problems)} wrong rejections, e.g. {tally.problems[:5]}"]
    failures += [f"generation calls on workers: {dict(calls)}"]
    failures += [f"{in_flight} requests left in flight", "router stopped serving valid requests"]
    broken = [bool(tally.problems), bool(calls), bool(in_flight), not still_serves]
    return [failure for failure, is_broken in zip(failures, broken, strict=True) if is_broken]


async def serves_a_valid_request(cluster: RouterCluster) -> bool:
    request = pb.GenerateRequest(prompt="still there?", sampling=pb.SamplingParams(max_tokens=4))
    responses = await cluster.generate(request)
    return responses[-1].HasField("final")


NUM_DUPLICATES = scaled(full=200, ci=40)
# The first request of each id decodes for 10 s unless cancelled: it is surely still in flight
# when its duplicate comes, however loaded the box.
SLOW_DECODE = MockBehavior(decode_delay_s=0.05, num_pages=16384)


def duplicate_pair_request(request_id: str) -> pb.GenerateRequest:
    sampling = pb.SamplingParams(max_tokens=200, ignore_eos=True)
    return pb.GenerateRequest(request_id=request_id, prompt="Say it twice.", sampling=sampling)


async def refusal(cluster: RouterCluster, request_id: str) -> str:
    """The outcome ("CODE/reason") of a second request with an id already in flight."""
    try:
        await cluster.generate(duplicate_pair_request(request_id))
    except grpc.aio.AioRpcError as error:
        info = error_details(error)["ErrorInfo"]
        assert info.metadata["request_id"] == request_id
        return f"{error.code().name}/{info.reason}"
    return "OK"


async def until_quiet(cluster: RouterCluster, timeout_s: float = 10.0) -> bool:
    """Whether the router and every worker are idle again within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while cluster.router.requests.num_in_flight or any(
        w.running or w.leases for w in cluster.workers.values()
    ):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_a_concurrent_duplicate_id_is_refused_and_only_the_first_reaches_a_worker(
    smollm2_dir,
):
    slow = [MockWorker("p0", Role.PREFILL), MockWorker("d0", Role.DECODE, SLOW_DECODE)]
    # Room for every first and every duplicate at once: this is not the overload scenario.
    config = FUZZ_ROUTER_CONFIG | {"max_concurrent_requests": 2 * NUM_DUPLICATES + 16}
    async with router_cluster(smollm2_dir, slow, **config) as cluster:
        started = time.monotonic()
        ids = [f"dup-{i}" for i in range(NUM_DUPLICATES)]
        firsts = [cluster.stub.Generate(duplicate_pair_request(i)) for i in ids]
        await asyncio.gather(*(call.read() for call in firsts))  # all admitted and streaming
        refusals = await asyncio.gather(*(refusal(cluster, i) for i in ids))
        for call in firsts:
            call.cancel()  # the firsts were never the point: end them
        quiet = await until_quiet(cluster)
        prefills = cluster.workers["p0"].calls_of(WorkerMethod.PREFILL)
        seconds = time.monotonic() - started
    outcomes = Counter(refusals) + Counter({"CANCELLED/by the client (firsts)": NUM_DUPLICATES})
    result = ScenarioResult(
        "bad input: duplicate ids",
        requests=2 * NUM_DUPLICATES,
        failed_by_status=outcomes,
        seconds=seconds,
        extra_failures=[f"prefills {prefills}"] * (sorted(prefills) != sorted(ids))
        + ["not quiet after the run"] * (not quiet),
    )
    record(result)
    assert Counter(refusals) == {"INVALID_ARGUMENT/DUPLICATE_REQUEST_ID": NUM_DUPLICATES}
    assert result.failures() == []
