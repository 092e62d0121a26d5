"""A real router (RouterServer on an ephemeral loopback port) in front of mock workers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from pydantic import SecretStr

from pdserve.channels import open_aio_channel
from pdserve.tls import TLSConfig
from pdserve.v1 import generation_pb2, generation_pb2_grpc
from router.config import RouterConfig
from router.server import RouterServer
from tests.doubles.mock_worker import MockWorker


@dataclass(slots=True)
class RouterCluster:
    router: RouterServer
    workers: dict[str, MockWorker]
    channel: grpc.aio.Channel
    stub: generation_pb2_grpc.GenerationStub

    async def generate(
        self, request: generation_pb2.GenerateRequest, timeout_s: float = 20.0
    ) -> list[generation_pb2.GenerateResponse]:
        """Every response of one Generate call; raises grpc.aio.AioRpcError on error."""
        return [response async for response in self.stub.Generate(request, timeout=timeout_s)]


@asynccontextmanager
async def router_cluster(
    model_dir: Path,
    workers: Sequence[MockWorker],
    client_tls: TLSConfig | None = None,
    client_token: SecretStr | None = None,
    **config: object,
) -> AsyncIterator[RouterCluster]:
    """Starts `workers`, registers them by address, starts the router; tears all down. The
    cluster's channel uses `client_tls` and `client_token` (the router's: `tls`, `auth_token`)."""
    for worker in workers:
        await worker.start()
    # Short test prompts take the (prefill, decode) pair unless a test asks for colocation.
    settings = {
        "model_dir": model_dir,
        "port": 0,
        "stats_poll_period_s": 0.05,
        "colocate_threshold_tokens": 0,
        **config,
    }
    router = RouterServer(RouterConfig(**settings))
    channel = None
    try:
        for worker in workers:
            await router.add_worker(worker.address)
        await router.start()
        address, max_bytes = f"127.0.0.1:{router.port}", router.config.grpc_max_message_bytes
        channel = open_aio_channel(address, client_tls, client_token, max_bytes)
        stub = generation_pb2_grpc.GenerationStub(channel)
        yield RouterCluster(router, {w.worker_id: w for w in workers}, channel, stub)
    finally:
        if channel is not None:
            await channel.close()
        await router.stop(0)
        for worker in workers:
            await worker.stop()


def error_details(error: grpc.aio.AioRpcError) -> dict[str, Message]:
    """The google.rpc details of a failed call, by type name (ErrorInfo, BadRequest, …)."""
    rich = next(
        status_pb2.Status.FromString(value)
        for key, value in error.trailing_metadata()
        if key == "grpc-status-details-bin"
    )
    assert rich.code == error.code().value[0]
    details: dict[str, Message] = {}
    for kind in (
        error_details_pb2.ErrorInfo,
        error_details_pb2.BadRequest,
        error_details_pb2.RetryInfo,
    ):
        for packed in rich.details:
            if packed.Is(kind.DESCRIPTOR):
                details[kind.__name__] = kind()
                packed.Unpack(details[kind.__name__])
    return details
