"""Runs one or more plans over one channel to the address, with a live progress bar each."""

from __future__ import annotations

from collections.abc import Sequence

from rich.progress import Progress, TextColumn

from loadtest.runner import LoadPlan, LoadResult, RequestRecord, run_load
from loadtest.workloads import LoadRequest
from pdserve import auth_flags, client
from pdserve.channels import open_aio_channel
from pdserve.v1 import generation_pb2_grpc


async def run_plans(
    address: str,
    security: auth_flags.ClientSecurity,
    requests: list[LoadRequest],
    plans: Sequence[LoadPlan],
) -> list[LoadResult]:
    """One result per plan, in order; each plan sends the same `requests` afresh."""
    channel = open_aio_channel(address, security.tls, security.token, client.MAX_MESSAGE_BYTES)
    async with channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        return [await _run_with_progress(stub, requests, plan) for plan in plans]


async def _run_with_progress(
    stub: generation_pb2_grpc.GenerationStub, requests: list[LoadRequest], plan: LoadPlan
) -> LoadResult:
    columns = (*Progress.get_default_columns(), TextColumn("{task.fields[failed]} failed"))
    label = f"rate {plan.rate:g}/s" if plan.is_open_loop else f"concurrency {plan.concurrency}"
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(label, total=min(plan.num_requests, len(requests)), failed=0)

        def on_end(record: RequestRecord) -> None:
            failed = progress.tasks[0].fields["failed"] + (not record.ok)
            progress.update(task, advance=1, failed=failed)

        return await run_load(stub, requests, plan, on_end)
