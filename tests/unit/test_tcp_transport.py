"""The tcp KV backend beyond the shared contract (tests/unit/test_transport_contract.py): its
connections are reused and survive a source's restart; a wrong secret, an unreachable or
stalled source, a source that breaks the protocol, and a full server each fail the one
transfer with a TransferError, within its deadline, and leave the server serving; TLS and
mTLS use the internal edge's certificates.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
import torch

from kv_transfer.checksum import Locator
from kv_transfer.pages import KVHandle, TransportBackend
from kv_transfer.tcp import TcpSettings, TcpTransport
from kv_transfer.tcp_server import TcpEndpoint
from kv_transfer.tcp_wire import REPLY, TcpAddress
from kv_transfer.transport import TransferError, TransferFailure
from pdserve.tls import ssl_client_context, ssl_server_context
from tests.certs import Pki, make_pki
from tests.unit.test_transport_contract import (
    DST_PAGES,
    SRC_PAGES,
    make_cache,
    make_handle,
    make_layout,
)

LAYOUT = make_layout()


def serving(**settings) -> TcpTransport:
    return TcpTransport(TcpSettings(listen=TcpEndpoint("127.0.0.1"), **settings))


@pytest.fixture
def source() -> Iterator[TcpTransport]:
    transport = serving()
    yield transport
    transport.close()


@pytest.fixture
def sink() -> Iterator[TcpTransport]:
    transport = TcpTransport()
    yield transport
    transport.close()


def export(source: TcpTransport, transfer_id: str, seed: int = 1) -> tuple[KVHandle, torch.Tensor]:
    kv_cache = make_cache(LAYOUT, seed)
    locator = source.export(transfer_id, kv_cache, SRC_PAGES)
    return make_handle(transfer_id, LAYOUT, locator, TransportBackend.TCP), kv_cache


def fetched(sink: TcpTransport, handle: KVHandle, timeout_s: float = 5.0) -> torch.Tensor:
    kv_cache = make_cache(LAYOUT, seed=99)
    sink.fetch(handle, kv_cache, DST_PAGES, timeout_s)
    return kv_cache[list(DST_PAGES)]


def with_address(handle: KVHandle, **changes) -> KVHandle:
    locator = Locator.decode(handle.locator)
    address = replace(TcpAddress.decode(locator.address, handle.transfer_id), **changes)
    return replace(handle, locator=replace(locator, address=address.encode()).encode())


def listener() -> socket.socket:
    return socket.create_server(("127.0.0.1", 0))


def test_one_connection_carries_every_transfer_to_a_source(source, sink):
    for i in range(5):
        handle, kv_cache = export(source, f"t-reuse-{i}", seed=i)
        assert torch.equal(fetched(sink, handle), kv_cache[list(SRC_PAGES)])
        source.release(handle.transfer_id)
    assert (source.server.num_connections(), sink._client.num_idle()) == (1, 1)


def test_concurrent_fetches_each_get_their_own_pages(source, sink):
    exports = [export(source, f"t-many-{i}", seed=i) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda pair: fetched(sink, pair[0]), exports))
    for (_, kv_cache), result in zip(exports, results, strict=True):
        assert torch.equal(result, kv_cache[list(SRC_PAGES)])


def test_a_wrong_secret_is_refused_like_an_unknown_id_and_the_connection_stays(source, sink):
    handle, kv_cache = export(source, "t-secret")
    wrong = with_address(
        handle, secret=TcpAddress.decode(Locator.decode(handle.locator).address, "t").secret ^ 1
    )
    with pytest.raises(TransferError, match="refused it \\(unknown\\)"):
        fetched(sink, wrong)
    assert torch.equal(fetched(sink, handle), kv_cache[list(SRC_PAGES)])
    assert source.server.num_connections() == 1


def test_a_source_restarted_on_its_port_is_reached_past_the_stale_connection(source, sink):
    handle, _ = export(source, "t-before")
    fetched(sink, handle)
    port = source.server.port
    source.close()
    restarted = TcpTransport(TcpSettings(listen=TcpEndpoint("127.0.0.1", port)))
    try:
        handle, kv_cache = export(restarted, "t-after", seed=5)
        assert torch.equal(fetched(sink, handle), kv_cache[list(SRC_PAGES)])
    finally:
        restarted.close()


def test_an_unreachable_source_fails_the_transfer_at_once(source, sink):
    handle, _ = export(source, "t-gone")
    source.close()
    started_s = time.monotonic()
    with pytest.raises(TransferError, match="cannot reach") as failed:
        fetched(sink, handle)
    assert failed.value.reason is TransferFailure.ERROR
    assert time.monotonic() - started_s < 1.0


def test_a_source_that_never_answers_times_out_at_the_deadline(source, sink):
    handle, _ = export(source, "t-stalled")
    with listener() as silent:  # accepts (the kernel's backlog) and never replies
        stalled = with_address(handle, port=silent.getsockname()[1])
        started_s = time.monotonic()
        with pytest.raises(TransferError, match="deadline") as failed:
            fetched(sink, stalled, timeout_s=0.3)
    assert failed.value.reason is TransferFailure.TIMEOUT
    assert 0.3 <= time.monotonic() - started_s < 1.5
    assert sink._client.num_idle() == 0  # the timed-out connection was closed, not pooled


def answer_once(server: socket.socket, reply: bytes) -> threading.Thread:
    def run() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(reply)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    "reply, message",
    [
        (REPLY.pack(0, 7), "sent 7 bytes"),  # a size other than the handle's
        (b"\x00\x01", "connection closed after 2 of 9 bytes"),  # a cut reply header
        (REPLY.pack(9, 0), "refused it \\(status 9\\)"),  # a status this version never sends
    ],
    ids=["size", "cut", "status"],
)
def test_a_source_breaking_the_protocol_fails_the_transfer(source, sink, reply, message):
    handle, _ = export(source, "t-broken")
    with listener() as impostor:
        thread = answer_once(impostor, reply)
        with pytest.raises(TransferError, match=message):
            fetched(sink, with_address(handle, port=impostor.getsockname()[1]))
        thread.join(5)


def test_garbage_on_a_connection_closes_only_that_connection(source, sink):
    with socket.create_connection(("127.0.0.1", source.server.port)) as rogue:
        rogue.sendall(b"GET / HTTP/1.1\r\n\r\n" * 4)
        assert rogue.recv(1) == b""  # closed by the server
    handle, kv_cache = export(source, "t-after-garbage")
    assert torch.equal(fetched(sink, handle), kv_cache[list(SRC_PAGES)])


def test_a_full_server_turns_connections_away_and_serves_its_own():
    source = serving(max_connections=1)
    first, second = TcpTransport(), TcpTransport()
    try:
        handle, kv_cache = export(source, "t-full")
        assert torch.equal(fetched(first, handle), kv_cache[list(SRC_PAGES)])
        with pytest.raises(TransferError, match="closed the connection|reset|closed after"):
            fetched(second, handle)
        assert torch.equal(fetched(first, handle), kv_cache[list(SRC_PAGES)])
    finally:
        for transport in (source, first, second):
            transport.close()


def test_close_ends_every_connection_and_export(source, sink):
    handle, _ = export(source, "t-close")
    fetched(sink, handle)
    source.close()
    assert (source.server.num_connections(), source.num_exported()) == (0, 0)
    assert not [t for t in threading.enumerate() if t.name.startswith("kv-tcp")]


def test_a_transport_that_only_fetches_cannot_export(sink):
    with pytest.raises(ValueError, match="only fetches"):
        sink.export("t-no", make_cache(LAYOUT, 1), SRC_PAGES)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_mutual_tls_moves_the_pages(pki):
    internal = pki.internal_tls()
    source = serving(server_ssl=ssl_server_context(internal))
    sink = TcpTransport(TcpSettings(client_ssl=ssl_client_context(internal)))
    try:
        handle, kv_cache = export(source, "t-mtls")
        assert torch.equal(fetched(sink, handle), kv_cache[list(SRC_PAGES)])
    finally:
        source.close()
        sink.close()


@pytest.mark.parametrize("client", ["plaintext", "no-certificate", "stranger"])
def test_mutual_tls_refuses_a_client_it_cannot_verify(pki, client):
    source = serving(server_ssl=ssl_server_context(pki.internal_tls()))
    client_tls = {
        "plaintext": None,
        "no-certificate": pki.client_tls(),
        "stranger": pki.client_tls(pki.stranger),
    }[client]
    sink = TcpTransport(TcpSettings(client_ssl=ssl_client_context(client_tls)))
    try:
        handle, _ = export(source, f"t-refused-{client}")
        with pytest.raises(TransferError):
            fetched(sink, handle, timeout_s=2.0)
    finally:
        source.close()
        sink.close()


@pytest.mark.parametrize("name, moves", [("localhost", True), ("pdserve-elsewhere", False)])
def test_a_server_name_is_what_the_sources_certificate_is_checked_as(pki, name, moves):
    """The test certificate names 127.0.0.1 and localhost: dialled at 127.0.0.1, a source
    checked as `localhost` passes and as a name it lacks is refused."""
    internal = pki.internal_tls()
    source = serving(server_ssl=ssl_server_context(internal))
    settings = TcpSettings(client_ssl=ssl_client_context(internal), server_name=name)
    sink = TcpTransport(settings)
    try:
        handle, kv_cache = export(source, f"t-name-{moves}")
        if moves:
            assert torch.equal(fetched(sink, handle), kv_cache[list(SRC_PAGES)])
        else:
            with pytest.raises(TransferError, match="certificate"):
                fetched(sink, handle, timeout_s=2.0)
    finally:
        source.close()
        sink.close()
