"""`pdserve drain` (a pod's preStop hook) against a mock worker over loopback gRPC: it asks
for the drain, waits for `drained`, and tells the four ways it can end apart by exit code."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from pydantic import SecretStr

from kv_transfer.pages import Role
from pdserve import cli
from pdserve.drain_cli import DrainOutcome, drain_worker
from pdserve.v1 import worker_pb2_grpc
from tests.doubles.mock_worker import MockWorker, WorkerMethod


@asynccontextmanager
async def serving(worker: MockWorker) -> AsyncIterator[MockWorker]:
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop()


async def drain(worker: MockWorker, timeout_s: float) -> DrainOutcome:
    """drain_worker is blocking: it runs on a thread while the mock serves on this loop."""

    def call() -> DrainOutcome:
        with grpc.insecure_channel(worker.address) as channel:
            stub = worker_pb2_grpc.WorkerStub(channel)
            return drain_worker(stub, timeout_s, poll_s=0.02)

    return await asyncio.to_thread(call)


async def run_cli(*argv: str) -> int:
    return await asyncio.to_thread(cli.main, ["drain", *argv])


async def test_an_idle_worker_drains_and_the_command_exits_0(capsys):
    async with serving(MockWorker("d0", Role.DECODE)) as worker:
        assert await run_cli("--address", worker.address, "--timeout", "5") == 0
        assert worker.draining
        assert worker.calls_of(WorkerMethod.DRAIN) == [""]
    assert "drained in" in capsys.readouterr().out


async def test_drained_is_waited_for_by_polling_stats():
    """A lease outstanding keeps it undrained; once released, the next poll says drained."""
    async with serving(MockWorker("p0", Role.PREFILL)) as worker:
        worker.leases["t1"] = []
        waiting = asyncio.create_task(drain(worker, timeout_s=10))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        del worker.leases["t1"]
        assert await waiting is DrainOutcome.DRAINED
        assert len(worker.calls_of(WorkerMethod.GET_STATS)) >= 2


async def test_a_worker_still_holding_work_at_the_timeout_exits_1(capsys):
    async with serving(MockWorker("p0", Role.PREFILL)) as worker:
        worker.leases["t1"] = []
        assert await run_cli("--address", worker.address, "--timeout", "0.3") == 1
    err = capsys.readouterr().err
    assert "not drained after 0.3 s" in err


async def test_nothing_listening_means_nothing_to_drain_and_exit_0(capsys):
    worker = MockWorker("d0", Role.DECODE)
    await worker.start()
    address = worker.address
    await worker.stop()
    assert await run_cli("--address", address, "--timeout", "2") == 0
    assert "nothing to drain" in capsys.readouterr().out


async def test_a_worker_that_exits_while_draining_counts_as_drained():
    async with serving(MockWorker("p0", Role.PREFILL)) as worker:
        worker.leases["t1"] = []
        waiting = asyncio.create_task(drain(worker, timeout_s=10))
        await asyncio.sleep(0.2)
    assert await waiting is DrainOutcome.GONE


async def test_the_internal_token_comes_from_its_own_variable(monkeypatch, capsys):
    """Workers gate every call with the internal token: without it the drain is refused
    (exit 1, the code named); with PDSERVE_INTERNAL_AUTH_TOKEN it goes through."""
    token = "internal-s3cret"
    async with serving(MockWorker("d0", Role.DECODE, auth_token=SecretStr(token))) as worker:
        monkeypatch.setenv("PDSERVE_AUTH_TOKEN", token)  # the public API's: not this edge's
        assert await run_cli("--address", worker.address, "--timeout", "2") == 1
        assert "UNAUTHENTICATED" in capsys.readouterr().err
        monkeypatch.setenv("PDSERVE_INTERNAL_AUTH_TOKEN", token)
        assert await run_cli("--address", worker.address, "--timeout", "2") == 0
