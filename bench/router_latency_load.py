"""B3's load: the two server processes it spawns and the open-loop Poisson client that drives
them from this process.

    client (this process) ── Decode ─────────────────────────────► mock worker (process)
                          └─ Generate ──► router (process) ── Decode ──┘

No process is pinned: the three share the box's cores as the scheduler places them. Pinning
was tried (router alone on core 1, client and mock on core 0) and, on this shared box, a
pinned process could not move away from another job's busy core: the router arm reached
110–130 req/s pinned against 260–360 req/s unpinned at the same offered 500 req/s. Each
process's CPU per window is recorded instead, so who was the limit stays visible.

One window = one arm at one rate: `num_requests` arrivals at seeded exponential gaps, each
sent at its scheduled time whether or not earlier ones have answered (open loop). A request's
TTFT runs from the moment its call is made to its first streamed message; how late the call
was made against its schedule is kept apart as `lag_s`, so the client's own slowness shows.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import multiprocessing
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path

import grpc

from kv_transfer.pages import KVLayout, Role
from pdserve.v1 import generation_pb2, generation_pb2_grpc, worker_pb2, worker_pb2_grpc

PROMPT_LEN = 256
MAX_TOKENS = 2  # token #1 (the TTFT) and one streamed token after it
VOCAB_SIZE = 49152  # the tiny model's (SmolLM2's) vocabulary
CALL_TIMEOUT_S = 10.0
START_TIMEOUT_S = 120.0
# Pages of 256 keep the mock's bookkeeping to 2 pages a request, and 8192 of them let 4096
# requests wait at once when a rate overloads it (beyond, it answers RESOURCE_EXHAUSTED).
MOCK_LAYOUT = KVLayout(num_layers=2, num_kv_heads=1, head_dim=8, page_size=256, dtype="float32")
MOCK_NUM_PAGES = 8192


class Target(enum.StrEnum):
    DIRECT = "direct"  # the mock worker's Decode without a handle (colocated shape)
    ROUTER = "router"  # the router's public Generate, routed colocated to that same worker


@dataclass(frozen=True, slots=True)
class Schedule:
    """Open-loop arrivals: `num_requests` seeded exponential gaps at `rate_per_s`."""

    rate_per_s: float
    num_requests: int
    seed: int = 0

    def offsets_s(self) -> list[float]:
        """Each arrival's time after the window's start, increasing."""
        rng = random.Random(self.seed)
        gaps = (rng.expovariate(self.rate_per_s) for _ in range(self.num_requests))
        return list(itertools.accumulate(gaps))


@dataclass(frozen=True, slots=True)
class Sample:
    """One request, in perf_counter seconds. `first_s` is None when nothing came back;
    `error` is the failed call's status name ("" when it succeeded)."""

    due_s: float
    sent_s: float
    first_s: float | None
    done_s: float
    error: str = ""


@dataclass(frozen=True, slots=True)
class Window:
    """One arm's open-loop run at one rate; times in seconds from the window's start."""

    target: Target
    rate_per_s: float
    ttft_s: list[float]  # successful requests only
    lag_s: list[float]  # call made minus call scheduled, every request
    num_requests: int
    errors: dict[str, int]  # status name -> how many calls failed with it
    last_due_s: float
    last_sent_s: float
    last_done_s: float
    cpu_s: dict[str, float]  # CPU during the window (all threads): client, router, worker

    @property
    def num_errors(self) -> int:
        return sum(self.errors.values())

    @property
    def num_ok(self) -> int:
        return self.num_requests - self.num_errors

    @property
    def offered_per_s(self) -> float:
        """The rate the seeded schedule really offered (Poisson: near `rate_per_s`)."""
        return self.num_requests / self.last_due_s

    @property
    def sent_per_s(self) -> float:
        """The rate the client managed to send at; below `offered_per_s` it was the limit."""
        return self.num_requests / self.last_sent_s

    @property
    def achieved_per_s(self) -> float:
        return self.num_ok / self.last_done_s

    @property
    def is_sustained(self) -> bool:
        return self.num_errors == 0 and self.achieved_per_s >= 0.95 * self.offered_per_s


def unpin() -> None:
    """Lets this process (and the children it spawns after) run on every core again: an
    earlier benchmark of the same run (B1) pins the process to core 0."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, range(os.cpu_count() or 1))


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid`, all threads (Linux /proc, 10 ms ticks)."""
    after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(after_name[11]), int(after_name[12])  # fields 14 and 15 of stat(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


class Servers:
    """The mock worker (role `both`) and a real router in front of it, each in a spawned
    process. Use as a context manager; leaving it stops both."""

    def __init__(self, model_dir: Path) -> None:
        self.worker = _Child(_serve_worker)
        try:
            self.router = _Child(_serve_router, model_dir, self.worker.address)
        except BaseException:
            self.worker.stop()
            raise

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc) -> None:
        self.router.stop()
        self.worker.stop()

    def cpu_s(self) -> dict[str, float]:
        return {"router": self.router.cpu_s(), "worker": self.worker.cpu_s()}


class LoadClient:
    """Sends each target's requests on one channel; use from one event loop, then `close`."""

    def __init__(self, servers: Servers) -> None:
        self._servers = servers
        self._channels = [
            grpc.aio.insecure_channel(servers.worker.address),
            grpc.aio.insecure_channel(servers.router.address),
        ]
        self._calls = {
            Target.DIRECT: worker_pb2_grpc.WorkerStub(self._channels[0]).Decode,
            Target.ROUTER: generation_pb2_grpc.GenerationStub(self._channels[1]).Generate,
        }
        self._prompt = [random.Random(1).randrange(3, VOCAB_SIZE) for _ in range(PROMPT_LEN)]
        self._serial = itertools.count()

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    async def window(self, target: Target, schedule: Schedule) -> Window:
        """Runs `schedule` against `target` open-loop and waits for every request to end."""
        cpu_before = self._cpu_s()
        start_s = time.perf_counter() + 0.005
        tasks = []
        for offset_s in schedule.offsets_s():
            delay_s = start_s + offset_s - time.perf_counter()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            tasks.append(asyncio.create_task(self._one(target, start_s + offset_s)))
        samples: list[Sample] = await asyncio.gather(*tasks)
        cpu_after = self._cpu_s()
        ok = [s for s in samples if not s.error]
        return Window(
            target=target,
            rate_per_s=schedule.rate_per_s,
            ttft_s=[s.first_s - s.sent_s for s in ok],
            lag_s=[s.sent_s - s.due_s for s in samples],
            num_requests=len(samples),
            errors=dict(Counter(s.error for s in samples if s.error)),
            last_due_s=max(s.due_s for s in samples) - start_s,
            last_sent_s=max(s.sent_s for s in samples) - start_s,
            last_done_s=max(s.done_s for s in samples) - start_s,
            cpu_s={name: cpu_after[name] - cpu_before[name] for name in cpu_after},
        )

    def _cpu_s(self) -> dict[str, float]:
        return {"client": time.process_time()} | self._servers.cpu_s()

    async def _one(self, target: Target, due_s: float) -> Sample:
        request = self._request(target, f"b3-{next(self._serial)}")
        sent_s, first_s, error = time.perf_counter(), None, ""
        try:
            async for _ in self._calls[target](request, timeout=CALL_TIMEOUT_S):
                if first_s is None:
                    first_s = time.perf_counter()
        except grpc.aio.AioRpcError as rpc_error:
            error = rpc_error.code().name
        if first_s is None and not error:
            error = "NO_MESSAGE"
        return Sample(due_s, sent_s, first_s, time.perf_counter(), error)

    def _request(self, target: Target, request_id: str):
        if target is Target.DIRECT:
            sampling = worker_pb2.WorkerSampling(max_tokens=MAX_TOKENS, ignore_eos=True)
            return worker_pb2.DecodeRequest(
                request_id=request_id, prompt_token_ids=self._prompt, sampling=sampling
            )
        return generation_pb2.GenerateRequest(
            request_id=request_id,
            tokens=generation_pb2.TokenInput(token_ids=self._prompt),
            sampling=generation_pb2.SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True),
        )


ServeFn = Callable[..., Coroutine[None, None, None]]


class _Child:
    """One spawned server process: it sends back its address, then serves until told to stop."""

    def __init__(self, serve: ServeFn, *args: object) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(
            target=_run_child, args=(child_conn, serve, *args), daemon=True
        )
        self._process.start()
        if not self._conn.poll(START_TIMEOUT_S):
            self._process.kill()
            raise RuntimeError(
                f"B3: {serve.__name__} did not start (exit {self._process.exitcode})"
            )
        self.address: str = self._conn.recv()

    def cpu_s(self) -> float:
        return process_cpu_s(self._process.pid)

    def stop(self) -> None:
        try:
            self._conn.send("stop")
        except OSError:
            pass  # already gone
        self._process.join(timeout=15)
        if self._process.is_alive():
            self._process.kill()


def _run_child(conn, serve: ServeFn, *args: object) -> None:
    asyncio.run(serve(conn, *args))


async def _serve_worker(conn) -> None:
    from tests.doubles.mock_worker import MockBehavior, MockWorker

    behavior = MockBehavior(num_pages=MOCK_NUM_PAGES)  # no artificial delays: zero by default
    worker = MockWorker("b3-both", Role.BOTH, behavior, layout=MOCK_LAYOUT)
    await worker.start()
    conn.send(worker.address)
    await asyncio.to_thread(conn.recv)
    await worker.stop()


async def _serve_router(conn, model_dir: Path, worker_address: str) -> None:
    from router.config import RouterConfig
    from router.server import RouterServer

    router = RouterServer(RouterConfig(model_dir=model_dir, port=0))
    await router.add_worker(worker_address)
    await router.start()
    conn.send(f"127.0.0.1:{router.port}")
    await asyncio.to_thread(conn.recv)
    await router.stop(0)
