"""Load and probes shared by the live scaling scenario (`test_scale.py`).

`SteadyLoad` keeps NUM_CLIENTS greedy clients looping over the prompts; `LongStream` holds
one long stream open on its own thread so a drain has something to wait for; `Served`
records each finished request's tokens, route and finish time for the assertions.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import grpc
import pytest
import ray

from pdserve import client
from pdserve.v1 import generation_pb2
from tests.integration.cluster_helpers import token_request

NUM_PROMPTS = 24  # the steady load's; two more are the long streams'
NUM_CLIENTS = 4
SHORT_OUTPUT = 16
LONG_OUTPUT = 64  # every 4th prompt of the steady load
LONG_STREAM_OUTPUT = 192


def max_tokens(prompt_index: int) -> int:
    if prompt_index >= NUM_PROMPTS:
        return LONG_STREAM_OUTPUT
    return LONG_OUTPUT if prompt_index % 4 == 0 else SHORT_OUTPUT


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
