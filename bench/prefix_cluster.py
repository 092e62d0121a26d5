"""B4's servers and client: the mock workers in one spawned process, the routers in another,
each pinned to its core and told over a pipe when to start and stop, so that every arm's run
begins with fresh workers (empty caches) and fresh routers (empty index); the open-loop client
runs in the bench process.

    client (bench process, core 0) ── Generate ──► router(s) (core 1)
                                                       │ Prefill, Decode, GetStats,
                                                       ▼ WatchPageEvents
                                      mock workers (core 0): 4 prefill, 2 decode
"""

from __future__ import annotations

import asyncio
import enum
import multiprocessing
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.common import pin_to_core
from bench.prefix_workload import Outcome, Prompt, Workload, poisson_offsets_s
from kv_transfer.pages import KVLayout, Role
from pdserve.v1 import generation_pb2, generation_pb2_grpc

START_TIMEOUT_S = 120.0


class Command(enum.Enum):
    START = "start"  # argument: the plan; reply: addresses
    STOP = "stop"  # reply: None
    EXIT = "exit"  # no reply; the process ends


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """The mock workers of one run; behaviours are tests.doubles MockBehavior keyword args."""

    layout: KVLayout
    num_prefill: int
    num_decode: int
    prefill_behavior: dict[str, Any] = field(default_factory=dict)
    decode_behavior: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RouterPlan:
    """One router: RouterConfig keyword args (model_dir and port are filled in) and the
    addresses of the workers it registers."""

    config: dict[str, Any]
    worker_addresses: tuple[str, ...]


class Child:
    """One spawned server process obeying Commands; `call` sends one and waits for its reply."""

    def __init__(self, core: int, serve: Callable[..., Awaitable[None]], *args: object) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(
            target=_run_child, args=(child_conn, core, serve, *args), daemon=True
        )
        self._process.start()

    def call(self, command: Command, argument: object = None, timeout_s: float = 60.0) -> Any:
        self._conn.send((command, argument))
        if not self._conn.poll(timeout_s):
            raise TimeoutError(f"{command} took over {timeout_s} s")
        reply = self._conn.recv()
        if isinstance(reply, Exception):
            raise reply
        return reply

    def cpu_s(self) -> float:
        """User + system CPU seconds of the process, all threads (Linux /proc)."""
        fields = Path(f"/proc/{self._process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        try:
            self._conn.send((Command.EXIT, None))
        except OSError:
            pass  # already gone
        self._process.join(timeout=15)
        if self._process.is_alive():
            self._process.kill()


def _run_child(conn, core: int, serve: Callable[..., Awaitable[None]], *args: object) -> None:
    pin_to_core(core)
    asyncio.run(serve(conn, *args))


async def _obey(conn, start: Callable[[Any], Awaitable[Any]], stop: Callable[[], Awaitable[None]]):
    """Answers Commands until EXIT; a failure is sent back as the reply."""
    while True:
        command, argument = await asyncio.to_thread(conn.recv)
        if command is Command.EXIT:
            await stop()
            return
        try:
            reply = await (start(argument) if command is Command.START else stop())
        except Exception as error:  # the bench process raises it
            reply = RuntimeError(f"{command}: {error!r}")
        conn.send(reply)


async def serve_workers(conn) -> None:
    from tests.doubles.mock_worker import MockBehavior, MockWorker

    workers: list[MockWorker] = []

    async def start(plan: WorkerPlan) -> list[str]:
        prefill = MockBehavior(**plan.prefill_behavior)
        decode = MockBehavior(**plan.decode_behavior)
        workers.extend(
            [
                MockWorker(f"p{i}", Role.PREFILL, prefill, plan.layout)
                for i in range(plan.num_prefill)
            ]
            + [
                MockWorker(f"d{i}", Role.DECODE, decode, plan.layout)
                for i in range(plan.num_decode)
            ]
        )
        for worker in workers:
            await worker.start()
        return [worker.address for worker in workers]

    async def stop() -> None:
        for worker in reversed(workers):  # decoders first: they hold channels to the prefills
            await worker.stop()
        workers.clear()

    await _obey(conn, start, stop)


async def serve_routers(conn, model_dir: Path) -> None:
    from router.config import RouterConfig
    from router.server import RouterServer

    routers: list[RouterServer] = []

    async def start(plans: list[RouterPlan]) -> list[str]:
        for plan in plans:
            router = RouterServer(RouterConfig(model_dir=model_dir, port=0, **plan.config))
            routers.append(router)
            for address in plan.worker_addresses:
                await router.add_worker(address)
            await router.start()
        return [f"127.0.0.1:{router.port}" for router in routers]

    async def stop() -> None:
        for router in routers:
            await router.stop(0)
        routers.clear()

    await _obey(conn, start, stop)


async def send_all(
    stubs: Sequence[generation_pb2_grpc.GenerationStub],
    workload: Workload,
    rate_per_s: float,
    max_tokens: int,
    timeout_s: float,
) -> list[Outcome]:
    """Every prompt at its Poisson arrival time (open loop), to stub group mod len(stubs)."""
    start_s = time.perf_counter() + 0.005
    tasks = []
    for prompt, offset_s in zip(
        workload.prompts, poisson_offsets_s(rate_per_s, len(workload.prompts)), strict=True
    ):
        delay_s = start_s + offset_s - time.perf_counter()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        stub = stubs[prompt.group % len(stubs)]
        tasks.append(asyncio.create_task(one_request(stub, prompt, start_s, max_tokens, timeout_s)))
    return await asyncio.gather(*tasks)


async def one_request(
    stub: generation_pb2_grpc.GenerationStub,
    prompt: Prompt,
    start_s: float,
    max_tokens: int,
    timeout_s: float,
) -> Outcome:
    token_ids = prompt.token_ids
    request = generation_pb2.GenerateRequest(
        tokens=generation_pb2.TokenInput(token_ids=token_ids),
        sampling=generation_pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True),
    )
    sent_s, first_s, final = time.perf_counter() - start_s, None, None
    try:
        async for response in stub.Generate(request, timeout=timeout_s):
            if first_s is None:
                first_s = time.perf_counter() - start_s
            if response.HasField("final"):
                final = response.final
    except grpc.aio.AioRpcError:
        pass  # counted as an error by RunFigures
    done_s = time.perf_counter() - start_s
    cached = final.usage.cached_prompt_tokens if final is not None else 0
    worker = final.prefill_worker_id if final is not None else ""
    return Outcome(
        prompt.group, len(token_ids), cached, sent_s, first_s, done_s, worker, final is not None
    )
