"""TLS, mTLS, bearer tokens and size caps on every gRPC edge: real certificates, real gRPC.

Public edge (client ↔ router): a real router in front of mock workers (router_cluster).
Internal edge: the router's channels to mock workers serving mTLS + token; the real workers'
gRPC server (pdserve.workers.start_grpc_server) reached by the router's WorkerClients and the
decode worker's PrefillPeers; and one real local cluster (Ray, `tiny`) with everything on.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import SecretStr

from decode_worker.prefill_peers import PrefillPeers
from kv_transfer.pages import Role
from pdserve import client
from pdserve.channels import open_aio_channel, open_channel
from pdserve.tls import TLSConfig
from pdserve.v1 import generation_pb2 as pb
from pdserve.v1 import generation_pb2_grpc, worker_pb2, worker_pb2_grpc
from pdserve.workers import start_grpc_server
from router.errors import WorkerUnavailable
from router.worker_client import WorkerClients
from tests.certs import Pki, make_pki
from tests.doubles.mock_worker import MockWorker, WorkerMethod
from tests.doubles.router_cluster import error_details, router_cluster
from tests.integration.cluster_helpers import start_cluster, token_request

TOKEN = SecretStr("public-token-0123")
INTERNAL_TOKEN = SecretStr("internal-token-4567")
MIB = 2**20


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def workers(tls: TLSConfig | None = None, token: SecretStr | None = None) -> list[MockWorker]:
    return [
        MockWorker("p0", Role.PREFILL, tls=tls, auth_token=token),
        MockWorker("d0", Role.DECODE, tls=tls, auth_token=token),
    ]


def request(max_tokens: int = 4) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        tokens=pb.TokenInput(token_ids=[5, 6, 7, 8, 9]),
        sampling=pb.SamplingParams(max_tokens=max_tokens, ignore_eos=True),
    )


def completion_tokens(responses: list[pb.GenerateResponse]) -> int:
    return responses[-1].final.usage.completion_tokens


async def model_info(port: int, tls: TLSConfig | None, token: SecretStr | None = None):
    async with open_aio_channel(f"127.0.0.1:{port}", tls, token, MIB) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        return await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)


async def refusal(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


async def test_tls_client_generates_and_plaintext_client_is_refused(tiny_dir, pki):
    async with router_cluster(
        tiny_dir, workers(), client_tls=pki.client_tls(), tls=pki.server_tls()
    ) as cluster:
        assert completion_tokens(await cluster.generate(request())) == 4
        plaintext = await refusal(model_info(cluster.router.port, None))
    assert plaintext.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_router_refuses_clients_without_a_certificate_of_its_ca(tiny_dir, pki):
    """No client certificate, or one from another CA: the handshake fails, nothing is served."""
    async with router_cluster(
        tiny_dir,
        workers(),
        client_tls=pki.client_tls(pki.client),
        tls=pki.server_tls(require_client_cert=True),
    ) as cluster:
        assert completion_tokens(await cluster.generate(request())) == 4
        port = cluster.router.port
        no_cert = await refusal(model_info(port, pki.client_tls()))
        stranger = await refusal(model_info(port, pki.client_tls(pki.stranger)))
    assert no_cert.code() == stranger.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("token", [None, SecretStr("public-token-0124")], ids=["none", "wrong"])
async def test_call_without_the_token_is_unauthenticated_and_reaches_no_worker(tiny_dir, token):
    mocks = workers()
    async with router_cluster(tiny_dir, mocks, client_token=token, auth_token=TOKEN) as cluster:
        error = await refusal(cluster.generate(request()))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    info = error_details(error)["ErrorInfo"]
    assert (info.reason, info.domain) == ("UNAUTHENTICATED", "pdserve")
    assert not mocks[0].calls_of(WorkerMethod.PREFILL)


async def test_right_token_generates_and_health_needs_none(tiny_dir):
    async with router_cluster(tiny_dir, workers(), client_token=TOKEN, auth_token=TOKEN) as cluster:
        assert completion_tokens(await cluster.generate(request())) == 4
        async with grpc.aio.insecure_channel(f"127.0.0.1:{cluster.router.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_oversized_request_is_resource_exhausted_and_the_router_serves_on(tiny_dir):
    """gRPC's own cap refuses it before any handler; a channel without a send cap sends it."""
    async with router_cluster(
        tiny_dir, workers(), grpc_max_message_bytes=MIB, max_prompt_bytes=MIB // 2
    ) as cluster:
        huge = pb.GenerateRequest(prompt="x" * (2 * MIB))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{cluster.router.port}") as channel:
            stub = generation_pb2_grpc.GenerationStub(channel)
            error = await refusal(_drain(stub.Generate(huge, timeout=10)))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert completion_tokens(await cluster.generate(request())) == 4


async def _drain(call) -> None:
    async for _ in call:
        pass


async def test_router_and_decode_mock_reach_mtls_token_workers(tiny_dir, pki):
    """Prefill, Decode, GetStats, WatchPageEvents and the decode side's ReleaseLease ack all
    run over mTLS with the internal token (the ack released the lease: p0 holds none)."""
    internal = pki.internal_tls()
    mocks = workers(internal, INTERNAL_TOKEN)
    async with router_cluster(
        tiny_dir, mocks, internal_tls=internal, internal_auth_token=INTERNAL_TOKEN
    ) as cluster:
        assert completion_tokens(await cluster.generate(request())) == 4
    assert mocks[0].calls_of(WorkerMethod.RELEASE_LEASE)
    mocks[0].check_idle()


async def test_router_without_the_internal_token_cannot_register_workers(tiny_dir, pki):
    internal = pki.internal_tls()
    with pytest.raises(WorkerUnavailable):
        async with router_cluster(
            tiny_dir, workers(internal, INTERNAL_TOKEN), internal_tls=internal
        ):
            pass


class LeaseSink(worker_pb2_grpc.WorkerServicer):
    """Served by the real workers' gRPC server: records ReleaseLease, answers Drain."""

    def __init__(self) -> None:
        self.released: list[str] = []

    def ReleaseLease(self, request, context):
        self.released.append(request.transfer_id)
        return worker_pb2.ReleaseLeaseResponse(released=True)

    def Drain(self, request, context):
        return worker_pb2.DrainResponse(drained=True)


@pytest.fixture
def worker_edge(pki) -> Iterator[tuple[LeaseSink, str]]:
    sink = LeaseSink()
    server, port = start_grpc_server(
        lambda s: worker_pb2_grpc.add_WorkerServicer_to_server(sink, s),
        "127.0.0.1",
        0,
        4,
        pki.internal_tls(),
        INTERNAL_TOKEN,
    )
    yield sink, f"127.0.0.1:{port}"
    server.stop(0)


def test_worker_edge_answers_unauthenticated_without_the_token(worker_edge, pki):
    _, address = worker_edge
    with open_channel(address, pki.internal_tls(), None, MIB) as channel:
        with pytest.raises(grpc.RpcError) as info:
            worker_pb2_grpc.WorkerStub(channel).Drain(worker_pb2.DrainRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_prefill_peers_ack_only_over_mtls_with_the_token(worker_edge, pki):
    sink, address = worker_edge
    callers = {
        "t-plaintext": PrefillPeers(2.0, None, INTERNAL_TOKEN),
        "t-tokenless": PrefillPeers(2.0, pki.internal_tls()),
        "t-ok": PrefillPeers(2.0, pki.internal_tls(), INTERNAL_TOKEN),
    }
    for transfer_id, peers in callers.items():
        peers.ack(address, transfer_id)  # best effort: a refusal is logged, not raised
        peers.close()
    assert sink.released == ["t-ok"]


@pytest.mark.parametrize("name, answers", [("localhost", True), ("pdserve-elsewhere", False)])
def test_a_channel_checks_the_server_as_its_server_name(worker_edge, pki, name, answers):
    """Dialled at 127.0.0.1, the worker's certificate (127.0.0.1, localhost) is checked as
    `server_name`: one name for every pod, whatever its IP."""
    _, address = worker_edge
    tls = pki.internal_tls().model_copy(update={"server_name": name})
    with open_channel(address, tls, INTERNAL_TOKEN, MIB) as channel:
        drain = worker_pb2_grpc.WorkerStub(channel).Drain
        if answers:
            assert drain(worker_pb2.DrainRequest(), timeout=5).drained
        else:
            with pytest.raises(grpc.RpcError) as info:
                drain(worker_pb2.DrainRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_router_clients_reach_the_worker_edge_only_with_a_cert_of_its_ca(worker_edge, pki):
    _, address = worker_edge
    trusted = WorkerClients(MIB, 0.5, pki.internal_tls(), INTERNAL_TOKEN)
    stranger = WorkerClients(MIB, 0.5, pki.client_tls(pki.stranger), INTERNAL_TOKEN)
    try:
        assert await trusted.drain(address, 5) is True
        with pytest.raises(WorkerUnavailable):
            await stranger.drain(address, 5)
    finally:
        await trusted.close()
        await stranger.close()


def test_local_cluster_generates_with_tls_and_tokens_on_every_edge(
    ray_cluster, model_cache_dir, pki
):
    """Ray workers serve internal mTLS + token; router ↔ worker and decode → prefill (the
    lease ack) use them; the public API asks TLS + its own token."""
    cluster = start_cluster(
        model="tiny",
        model_cache_dir=model_cache_dir,
        num_prefill=1,
        num_decode=1,
        conditional_disaggregation=False,
        tls=pki.server_tls(),
        auth_token=TOKEN,
        internal_tls=pki.internal_tls(),
        internal_auth_token=INTERNAL_TOKEN,
    )
    try:
        channel, stub = client.connect(cluster.address, pki.client_tls(), TOKEN)
        with channel:
            completion = client.generate(
                stub, token_request(list(range(3, 40)), 8, ignore_eos=True), 120
            )
    finally:
        cluster.stop()
    assert len(completion.token_ids) == 8
    assert completion.final.prefill_worker_id == "prefill-0"
