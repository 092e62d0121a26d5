"""Live scaling of a real local cluster (`tiny`, shm) through pdserve.v1.Cluster/Scale.

Under steady load (4 clients looping greedy requests of mixed prompt and output lengths)
and one long stream per (prefill, decode) pair, 2 prefill + 2 decode shrink to 1 + 1 — the
newest of each pool is drained, then stopped — and grow back to 2 + 1 with a fresh id.
Routing is round-robin with every request disaggregated, so each worker serves its share (a
repeated prompt would otherwise stay on the decode worker holding it). No request fails,
every output equals HF greedy, the long stream on the leaving pair outlives the start of
its drain, the removed actors are dead, the router lists exactly the workers left, and those
hold nothing once idle. Bad targets are refused naming the field, and a Scale while one
runs is ABORTED. Against fakes: a worker never drained is stopped at the drain timeout and
reported so, and a Scale whose caller left still finishes.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import dataclass

import grpc
import pytest
import ray

from kv_transfer.pages import Role
from pdserve import client
from pdserve.scaling import (
    InvalidScale,
    PoolScaler,
    PoolSizes,
    ScaleBusy,
    ScaleRefused,
    ScaleTarget,
    target_sizes,
)
from pdserve.v1 import cluster_pb2, cluster_pb2_grpc, generation_pb2
from tests.hf_reference import hf_greedy
from tests.integration.cluster_helpers import start_cluster, token_request, wait_until_idle

NUM_PROMPTS = 24  # the steady load's; two more are the long streams'
NUM_CLIENTS = 4
SHORT_OUTPUT = 16
LONG_OUTPUT = 64  # every 4th prompt of the steady load
LONG_STREAM_OUTPUT = 192


def max_tokens(prompt_index: int) -> int:
    if prompt_index >= NUM_PROMPTS:
        return LONG_STREAM_OUTPUT
    return LONG_OUTPUT if prompt_index % 4 == 0 else SHORT_OUTPUT


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    """Distinct prompts of 8 to 160 tokens."""
    rng = random.Random(5)
    return [
        [rng.randrange(3, 49152) for _ in range(rng.randrange(8, 160))]
        for _ in range(NUM_PROMPTS + 2)
    ]


@pytest.fixture(scope="module")
def expected(tiny_dir, prompts) -> dict[int, list[int]]:
    """HF greedy output of each prompt index."""
    outputs = {}
    for num_tokens in (SHORT_OUTPUT, LONG_OUTPUT, LONG_STREAM_OUTPUT):
        indices = [i for i in range(len(prompts)) if max_tokens(i) == num_tokens]
        tokens = hf_greedy(tiny_dir, [prompts[i] for i in indices], num_tokens, ignore_eos=True)
        outputs |= dict(zip(indices, tokens, strict=True))
    return outputs


@pytest.fixture(scope="module")
def cluster(ray_cluster, model_cache_dir):
    cluster = start_cluster(
        model="tiny",
        model_cache_dir=model_cache_dir,
        num_prefill=2,
        num_decode=2,
        drain_quiet_s=0.5,
        drain_timeout_s=30.0,
        routing_policy="round_robin",
        conditional_disaggregation=False,
    )
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_stub(cluster):
    channel = grpc.insecure_channel(cluster.address)
    yield cluster_pb2_grpc.ClusterStub(channel)
    channel.close()


@dataclass(frozen=True, slots=True)
class Served:
    prompt_index: int
    token_ids: list[int]
    route: tuple[str, str]  # (prefill worker, decode worker)
    finished_s: float  # time.monotonic() at its final message

    @classmethod
    def of(cls, prompt_index: int, completion: client.Completion) -> Served:
        final = completion.final
        route = (final.prefill_worker_id, final.decode_worker_id)
        return cls(prompt_index, completion.token_ids, route, time.monotonic())


class LongStream:
    """One long greedy stream, read on its own thread once routed (its first token came)."""

    def __init__(self, stub, index: int, prompt: list[int]) -> None:
        request = token_request(prompt, LONG_STREAM_OUTPUT, temperature=0.0, ignore_eos=True)
        self._index = index
        self._responses = stub.Generate(request, timeout=120)
        self._completion = client.Completion()
        self._completion.add(next(self._responses))
        self._served: Served | None = None
        self._error: grpc.RpcError | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    @property
    def num_tokens(self) -> int:
        return len(self._completion.token_ids)

    def result(self, timeout_s: float = 120.0) -> Served:
        self._thread.join(timeout_s)
        if self._error is not None:
            raise self._error
        assert self._served is not None, "stream still running"
        return self._served

    def _read(self) -> None:
        try:
            for response in self._responses:
                self._completion.add(response)
        except grpc.RpcError as exc:
            self._error = exc
        else:
            self._served = Served.of(self._index, self._completion)


def start_long_streams(stub, prompts: list[list[int]]) -> list[LongStream]:
    """One per pair: round-robin sends consecutive requests to consecutive pairs, and each
    is routed before the next starts."""
    return [LongStream(stub, i, prompts[i]) for i in (NUM_PROMPTS, NUM_PROMPTS + 1)]


def wait_for_tokens(streams: list[LongStream], num_tokens: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while min(stream.num_tokens for stream in streams) < num_tokens:
        assert time.monotonic() < deadline, "long streams stalled"
        time.sleep(0.01)


class SteadyLoad:
    """NUM_CLIENTS threads, each looping greedy Generate calls over the prompts until stop()."""

    def __init__(self, address: str, prompts: list[list[int]]) -> None:
        self._channel, self._stub = client.connect(address)
        self._prompts = prompts
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.outputs: list[Served] = []
        self.failures: list[str] = []
        self._threads = [
            threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(NUM_CLIENTS)
        ]

    def start(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def wait_for(self, num_more: int, timeout_s: float = 60.0) -> None:
        target = self.num_done + num_more
        deadline = time.monotonic() + timeout_s
        while self.num_done < target:
            assert not self.failures, self.failures
            assert time.monotonic() < deadline, f"load stalled at {self.num_done} requests"
            time.sleep(0.05)

    @property
    def num_done(self) -> int:
        with self._lock:
            return len(self.outputs)

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(120)
        self._channel.close()

    def _loop(self, client_index: int) -> None:
        index = client_index
        while not self._stopping.is_set():
            request = token_request(
                self._prompts[index], max_tokens(index), temperature=0.0, ignore_eos=True
            )
            try:
                completion = client.generate(self._stub, request, 60)
            except grpc.RpcError as exc:
                with self._lock:
                    self.failures.append(f"prompt {index}: {exc.code().name}: {exc.details()}")
            else:
                with self._lock:
                    self.outputs.append(Served.of(index, completion))
            index = (index + NUM_CLIENTS + 1) % len(self._prompts)


def server_workers(cluster) -> list[generation_pb2.WorkerInfo]:
    channel, stub = client.connect(cluster.address)
    with channel:
        return list(stub.GetServerInfo(generation_pb2.GetServerInfoRequest(), timeout=10).workers)


def wait_until_draining(cluster, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not any(w.draining for w in server_workers(cluster)):
        assert time.monotonic() < deadline, "no worker started draining"
        time.sleep(0.02)


def assert_dead(actor) -> None:
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(actor.identity.remote(), timeout=30)


def test_scale_down_and_up_under_load_loses_no_request(cluster, cluster_stub, prompts, expected):
    leaving = {wid: cluster.cluster.workers[wid].actor for wid in ("prefill-1", "decode-1")}
    channel, stub = client.connect(cluster.address)
    long_streams = start_long_streams(stub, prompts)
    load = SteadyLoad(cluster.address, prompts[:NUM_PROMPTS]).start()
    try:
        # Well under way, far from done: shrinking must wait for the one on the leaving pair.
        wait_for_tokens(long_streams, LONG_STREAM_OUTPUT // 8)
        load.wait_for(1)
        shrink_started_s = time.monotonic()
        shrinking = cluster_stub.Scale.future(
            cluster_pb2.ScaleRequest(num_prefill=1, num_decode=1), timeout=120
        )
        wait_until_draining(cluster)
        with pytest.raises(grpc.RpcError) as busy:
            cluster_stub.Scale(cluster_pb2.ScaleRequest(num_prefill=2), timeout=30)
        shrunk = shrinking.result()
        load.wait_for(8)
        grown = cluster_stub.Scale(cluster_pb2.ScaleRequest(num_prefill=2), timeout=120)
        num_before_growth = load.num_done
        load.wait_for(8)
    finally:
        load.stop()
    long_served = {served.route: served for served in (s.result() for s in long_streams)}
    channel.close()

    assert busy.value.code() is grpc.StatusCode.ABORTED
    assert (list(shrunk.added), sorted(r.worker_id for r in shrunk.removed)) == (
        [],
        ["decode-1", "prefill-1"],
    )
    assert all(r.drained for r in shrunk.removed), shrunk.removed
    assert list(grown.added) == ["prefill-2"] and not grown.removed
    assert (grown.pools.num_prefill, grown.pools.num_decode, grown.pools.num_colocated) == (2, 1, 0)
    assert list(grown.pools.worker_ids) == ["prefill-0", "decode-0", "prefill-2"]

    assert load.failures == []
    wrong = [
        s for s in [*load.outputs, *long_served.values()] if s.token_ids != expected[s.prompt_index]
    ]
    assert not wrong, wrong
    assert sorted(long_served) == [("prefill-0", "decode-0"), ("prefill-1", "decode-1")]
    # It was running when its workers began draining: the drain waited for it.
    assert long_served["prefill-1", "decode-1"].finished_s > shrink_started_s
    routes_before = {served.route for served in load.outputs[:8]}
    assert {("prefill-0", "decode-0"), ("prefill-1", "decode-1")} <= routes_before, routes_before
    assert any(served.route[0] == "prefill-2" for served in load.outputs[num_before_growth:])
    for actor in leaving.values():
        assert_dead(actor)
    workers = server_workers(cluster)
    assert sorted(w.worker_id for w in workers) == ["decode-0", "prefill-0", "prefill-2"]
    assert all(w.alive and not w.draining for w in workers)
    assert sorted(wait_until_idle(cluster)) == ["decode-0", "prefill-0", "prefill-2"]


@pytest.mark.parametrize(
    "request_fields, field",
    [
        ({"num_prefill": -1}, "num_prefill"),
        ({"num_decode": 0}, "num_decode"),
        ({"num_prefill": 0, "num_decode": 0}, "num_prefill/num_decode"),
        ({"num_colocated": -2, "num_prefill": 1}, "num_colocated"),
    ],
)
def test_scale_to_bad_sizes_is_invalid_argument_naming_the_field(
    cluster, cluster_stub, request_fields, field
):
    before = cluster_stub.GetPools(cluster_pb2.GetPoolsRequest(), timeout=10)
    with pytest.raises(grpc.RpcError) as failure:
        cluster_stub.Scale(cluster_pb2.ScaleRequest(**request_fields), timeout=30)
    assert failure.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.value.details().startswith(f"{field}:"), failure.value.details()
    assert cluster_stub.GetPools(cluster_pb2.GetPoolsRequest(), timeout=10) == before


def test_a_formed_kv_group_cannot_grow_but_may_shrink():
    """transport gloo: the group's ranks are fixed at start."""
    current = PoolSizes(num_prefill=2, num_decode=2)
    with pytest.raises(ScaleRefused, match="^num_decode: transport gloo"):
        target_sizes(current, ScaleTarget(num_prefill=1, num_decode=3), can_grow=False)
    assert target_sizes(current, ScaleTarget(num_decode=1), can_grow=False) == PoolSizes(2, 1, 0)


def test_swapping_pools_for_a_colocated_worker_keeps_a_route():
    current = PoolSizes(num_prefill=1, num_decode=1)
    target = ScaleTarget(num_prefill=0, num_decode=0, num_colocated=1)
    assert target_sizes(current, target, can_grow=True) == PoolSizes(0, 0, 1)
    with pytest.raises(InvalidScale, match="^num_colocated: the pools would leave no route"):
        target_sizes(PoolSizes(num_colocated=1), ScaleTarget(num_colocated=0), can_grow=True)


class FakePools:
    """WorkerPools over a list of ids ("prefill-0", …); records what was spawned and stopped."""

    can_grow = True

    def __init__(self, *worker_ids: str) -> None:
        self.roles = {worker_id: Role(worker_id.split("-")[0]) for worker_id in worker_ids}
        self.stopped: list[str] = []

    def sizes(self) -> PoolSizes:
        return PoolSizes.of_roles(list(self.roles.values()))

    def worker_ids(self) -> list[str]:
        return list(self.roles)

    def newest(self, role: Role, count: int) -> list[str]:
        return [w for w, r in self.roles.items() if r is role][::-1][:count]

    async def spawn(self, roles):
        raise AssertionError("these scenarios only shrink")

    async def stop_worker(self, worker_id: str) -> None:
        self.stopped.append(worker_id)
        del self.roles[worker_id]


class NeverDrainedRouter:
    """A router whose workers stay busy: drain_worker never reports drained."""

    def __init__(self) -> None:
        self.num_drain_calls = 0
        self.removed: list[str] = []

    async def drain_worker(self, worker_id: str) -> bool:
        self.num_drain_calls += 1
        return False

    async def remove_worker(self, worker_id: str) -> None:
        self.removed.append(worker_id)


async def test_a_worker_not_drained_by_the_timeout_is_stopped_anyway_and_reported():
    pools, router = FakePools("prefill-0", "decode-0", "decode-1"), NeverDrainedRouter()
    scaler = PoolScaler(pools, router, drain_timeout_s=0.3, drain_poll_s=0.05)
    response = await scaler.scale(ScaleTarget(num_decode=1))
    (removed,) = response.removed
    assert (removed.worker_id, removed.drained) == ("decode-1", False)
    assert removed.drain_s >= 0.3 and router.num_drain_calls >= 5
    assert (router.removed, pools.stopped) == (["decode-1"], ["decode-1"])
    assert list(response.pools.worker_ids) == ["prefill-0", "decode-0"]


async def test_a_scale_while_one_runs_is_busy_and_one_whose_caller_left_still_finishes():
    pools, router = FakePools("prefill-0", "prefill-1", "decode-0"), NeverDrainedRouter()
    scaler = PoolScaler(pools, router, drain_timeout_s=0.3, drain_poll_s=0.05)
    caller = asyncio.create_task(scaler.scale(ScaleTarget(num_prefill=1)))
    await asyncio.sleep(0.1)
    with pytest.raises(ScaleBusy):
        await scaler.scale(ScaleTarget(num_decode=2))
    caller.cancel()
    await asyncio.sleep(0.5)
    assert caller.cancelled()
    assert (router.removed, pools.stopped) == (["prefill-1"], ["prefill-1"])
    assert (await scaler.scale(ScaleTarget())).pools.worker_ids == ["prefill-0", "decode-0"]
