"""KV transport over point-to-point TCP streams: any two workers that can reach each other,
on any nodes, formed on demand — no group to join, so pools can grow and shrink (Kubernetes).

One transfer is a pull:
  1. export   (source) gather kv_cache[page_ids] into a staged host buffer, held until
              release; the locator carries the source's stream address and a fresh secret
  2. fetch    (destination) ask the source's stream server for (transfer id, secret, size)
              and receive the rows straight into a pooled host buffer; verify, then scatter
              them into kv_cache[dst_page_ids] (through a host → device copy on a GPU)
  3. release  (source) drop the staged buffer (a send in flight holds it until it ends)

A source serves its exports on `TcpSettings.listen` (kv_transfer/tcp_server.py); a worker
that only fetches listens nowhere. Connections are reused (kv_transfer/tcp_client.py) and may
run TLS with the internal edge's certificates. The server sends from the staged copy, held for
the whole send: a fetch that returns read the export whole, so it needs no ack to be trusted.
"""

from __future__ import annotations

import secrets
import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from kv_transfer.checksum import (
    Integrity,
    page_index,
    scatter_rows,
)
from kv_transfer.exports import Staged, StagedExports, StagedSource, start_fetch
from kv_transfer.pages import KVHandle, TransportBackend
from kv_transfer.tcp_client import KVStreamClient
from kv_transfer.tcp_server import KVStreamServer, Refused, TcpEndpoint
from kv_transfer.tcp_wire import KVRequest, ReplyStatus, TcpAddress
from kv_transfer.transport import KVTransport, TransferState

_HOST = torch.device("cpu")


@dataclass(frozen=True, slots=True)
class TcpSettings:
    """One worker's tcp backend: where it serves its exports (None: it only fetches), and the
    TLS contexts of its server and of its connections to sources (None: plaintext); a source's
    certificate is verified as `server_name`, else as the host dialled. A source serves at
    most `max_connections` fetchers' connections at once."""

    listen: TcpEndpoint | None = None
    server_ssl: ssl.SSLContext | None = None
    client_ssl: ssl.SSLContext | None = None
    server_name: str | None = None
    max_connections: int = 64


class TcpTransport(StagedSource, KVTransport):
    backend = TransportBackend.TCP
    fetch_proves_export_held = True

    def __init__(
        self,
        settings: TcpSettings = TcpSettings(),
        *,
        verify_checksum: bool = True,
        checksum_sample_rate: float = 1.0,
        pool_bytes: int = 512 << 20,
    ) -> None:
        self.integrity = Integrity(verify_checksum, checksum_sample_rate)
        self._staged = StagedExports(pool_bytes)
        self._client = KVStreamClient(settings.client_ssl, server_name=settings.server_name)
        self._server: KVStreamServer | None = None
        if settings.listen is not None:
            self._server = KVStreamServer(
                settings.listen,
                self._payload,
                ssl_context=settings.server_ssl,
                max_connections=settings.max_connections,
            )

    @property
    def server(self) -> KVStreamServer | None:
        """The stream server exports are read from; None on a worker that only fetches."""
        return self._server

    def export(self, transfer_id: str, kv_cache: torch.Tensor, page_ids: Sequence[int]) -> bytes:
        if self._server is None:
            raise ValueError("tcp: this transport only fetches (no listen endpoint)")
        index = page_index(page_ids, kv_cache.shape[0])
        buffer, rows = self._staged.stage(transfer_id, kv_cache, index, _HOST)
        secret = secrets.randbits(64)
        address = TcpAddress(secret, self._server.advertise_host, self._server.port)
        locator = self.integrity.seal(transfer_id, rows, rows.numel(), address.encode())
        self._staged.add(transfer_id, Staged(buffer, rows, secret))
        return locator.encode()

    def fetch(
        self,
        handle: KVHandle,
        kv_cache: torch.Tensor,
        dst_page_ids: Sequence[int],
        timeout_s: float,
    ) -> None:
        start = start_fetch(handle, kv_cache, dst_page_ids, timeout_s)
        deadline, locator, dst_index = start.deadline, start.locator, start.dst_index
        address = TcpAddress.decode(locator.address, handle.transfer_id)
        deadline.check(handle.transfer_id)
        buffer, rows = self._staged.take_rows(len(dst_page_ids), kv_cache, _HOST)
        try:
            request = KVRequest(handle.transfer_id, address.secret, locator.nbytes)
            self._client.pull(address, request, memoryview(rows.numpy()).cast("B"), deadline)
            checked = self.integrity.received(locator, rows, handle.transfer_id)
            scatter_rows(kv_cache, dst_index, torch.as_tensor(checked).to(kv_cache.device))
        finally:
            self._staged.give_back(buffer)  # a failed pull closed its connection: no late writes

    def close(self) -> None:
        """Stops serving (sends in flight fail), drops every export, closes idle connections."""
        if self._server is not None:
            self._server.close()
        self._staged.close()
        self._client.close()

    @contextmanager
    def _payload(self, request: KVRequest) -> Iterator[memoryview]:
        """The rows `request` asks for, held while the server sends them; Refused otherwise."""
        staged = self._staged.hold(request.transfer_id)
        if staged is None:
            raise Refused(ReplyStatus.UNKNOWN)
        try:
            if not secrets.compare_digest(_key(staged.key), _key(request.secret)):
                raise Refused(ReplyStatus.UNKNOWN)  # the same answer as an unknown id
            if request.nbytes != staged.rows.numel():
                raise Refused(ReplyStatus.SIZE)
            self._staged.table.set_state(request.transfer_id, TransferState.TRANSFERRING)
            yield memoryview(staged.rows.numpy()).cast("B")
            self._staged.table.set_state(request.transfer_id, TransferState.DONE)
        finally:
            self._staged.let_go(staged)


def _key(secret: int) -> bytes:
    return secret.to_bytes(8, "little")
