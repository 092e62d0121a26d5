"""The plaintext health-only port: grpc.health.v1 and nothing else, for probes that cannot
speak TLS (Kubernetes' gRPC probes) when the main port serves only TLS.

`health_port` (RouterConfig, WorkerConfig; unset = off) binds `host:health_port` without TLS
or token (health is open on the main port too) and serves the main server's own
HealthServicer, so both ports answer the same statuses. Its owner starts it beside the main
server and stops it after that one: while the main server's streams finish, probes still
read NOT_SERVING here. Torch-free: the router imports it.
"""

from __future__ import annotations

from concurrent import futures

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1.health import HealthServicer
from grpc_health.v1.health import aio as health_aio

from pdserve.tls import bind

_THREADS = 2  # probes call Check, one at a time per probe


def start_health_server(health: HealthServicer, host: str, port: int) -> tuple[grpc.Server, int]:
    """A started threaded server of `health` alone on plaintext host:port; the bound port
    (ephemeral when `port` is 0). Raises OSError when it cannot bind."""
    executor = futures.ThreadPoolExecutor(_THREADS, thread_name_prefix="grpc-health")
    server = grpc.server(executor)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    bound = bind(server, f"{host}:{port}", None)
    server.start()
    return server, bound


async def start_aio_health_server(
    health: health_aio.HealthServicer, host: str, port: int
) -> tuple[grpc.aio.Server, int]:
    """`start_health_server` for an asyncio server (the router's)."""
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    bound = bind(server, f"{host}:{port}", None)
    await server.start()
    return server, bound
