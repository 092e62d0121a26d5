"""`health_port`: with TLS on the main port, a plaintext grpc.health.v1 Check on the health-only
port answers what the TLS port answers (one HealthServicer), and the port serves nothing else.
The router (router_cluster, mock workers) and a worker's servers (pdserve.workers.serve_worker)."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import HealthServicer

from kv_transfer.pages import Role, TransportBackend
from kv_transfer.topology import DeviceKind
from pdserve.channels import open_aio_channel, open_channel
from pdserve.tls import TLSConfig
from pdserve.v1 import worker_pb2, worker_pb2_grpc
from pdserve.worker_config import WorkerConfig
from pdserve.workers import serve_worker
from router.generation_service import SERVICE_NAME
from router.server import LIVENESS_SERVICE
from tests.certs import Pki, make_pki
from tests.doubles.mock_behavior import SMALL_LAYOUT
from tests.doubles.mock_worker import MockWorker
from tests.doubles.router_cluster import router_cluster

MIB = 2**20
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


async def _aio_statuses(port: int, tls: TLSConfig | None, services: tuple[str, ...]) -> list:
    async with open_aio_channel(f"127.0.0.1:{port}", tls, None, MIB) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        requests = [health_pb2.HealthCheckRequest(service=name) for name in services]
        return [(await stub.Check(request, timeout=5)).status for request in requests]


async def test_router_health_port_answers_plaintext_what_the_tls_port_answers(tiny_dir, pki):
    workers = [MockWorker("p0", Role.PREFILL), MockWorker("d0", Role.DECODE)]
    services = ("", LIVENESS_SERVICE, SERVICE_NAME)
    async with router_cluster(
        tiny_dir, workers, client_tls=pki.client_tls(), tls=pki.server_tls(), health_port=0
    ) as cluster:
        router = cluster.router
        on_tls = await _aio_statuses(router.port, pki.client_tls(), services)
        on_health = await _aio_statuses(router.health_port, None, services)
    assert on_tls == on_health == [_SERVING] * 3


def _statuses(address: str, tls: TLSConfig | None) -> list:
    with open_channel(address, tls, None, MIB) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        names = ("", "pdserve.v1.Worker")
        return [
            stub.Check(health_pb2.HealthCheckRequest(service=n), timeout=5).status for n in names
        ]


def test_worker_health_port_answers_plaintext_what_the_tls_port_answers(pki):
    health = HealthServicer()
    for service in ("", "pdserve.v1.Worker"):
        health.set(service, _NOT_SERVING)
    config = WorkerConfig(worker_id="w0", port=0, health_port=0, internal_tls=pki.internal_tls())
    servers, identity = serve_worker(
        worker_pb2_grpc.WorkerServicer(),
        config,
        Role.PREFILL,
        1,
        SMALL_LAYOUT,
        (TransportBackend.SHM,),
        health,
        device=DeviceKind.CPU,
    )
    health_address = f"127.0.0.1:{servers.health_port}"
    try:
        assert _statuses(identity.address, pki.internal_tls()) == [_NOT_SERVING] * 2
        assert _statuses(health_address, None) == [_NOT_SERVING] * 2
        health.set("", _SERVING)
        assert _statuses(health_address, None)[0] == _SERVING
        with (
            open_channel(health_address, None, None, MIB) as channel,
            pytest.raises(grpc.RpcError) as info,
        ):
            worker_pb2_grpc.WorkerStub(channel).Drain(worker_pb2.DrainRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        servers.stop(0)
