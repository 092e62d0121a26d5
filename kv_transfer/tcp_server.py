"""The source half of the tcp KV backend: a stream server that sends exported KV rows to the
decode workers that present the export's secret (wire format: kv_transfer/tcp_wire.py).

Lifecycle: bound and listening once constructed (a port that cannot be bound fails the
worker's start, not a request); one thread accepts, one thread serves each connection, at
most `max_connections` at once (more are closed on accept); `close()` stops accepting, shuts
every connection and joins the threads. Every wait is bounded: a connection idle for
`idle_timeout_s` between requests is closed, a send that makes no progress for
`send_timeout_s` fails, a TLS handshake gets `send_timeout_s`.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from kv_transfer.tcp_wire import REPLY, KVRequest, ProtocolError, ReplyStatus, read_request

log = logging.getLogger(__name__)

_JOIN_S = 5.0


@dataclass(frozen=True, slots=True)
class TcpEndpoint:
    """Where a source serves: bound on host:port (0 = a free port), dialled at advertise_host
    (empty = host, which must then be dialable)."""

    host: str
    port: int = 0
    advertise_host: str = ""


class Refused(Exception):
    """Why a request is answered without rows."""

    def __init__(self, status: ReplyStatus) -> None:
        super().__init__(status.name)
        self.status = status


Payload = Callable[[KVRequest], AbstractContextManager[memoryview]]
"""Opens the rows a request asks for, held until the context exits; raises Refused."""


class KVStreamServer:
    def __init__(
        self,
        endpoint: TcpEndpoint,
        payload: Payload,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 64,
        idle_timeout_s: float = 120.0,
        send_timeout_s: float = 30.0,
    ) -> None:
        self._payload = payload
        self._ssl = ssl_context
        self._max_connections = max_connections
        self._idle_timeout_s = idle_timeout_s
        self._send_timeout_s = send_timeout_s
        self._listener = socket.create_server((endpoint.host, endpoint.port), backlog=128)
        self.port: int = self._listener.getsockname()[1]
        self.advertise_host = endpoint.advertise_host or endpoint.host
        self._connections: dict[threading.Thread, socket.socket] = {}  # serving thread → its socket
        self._lock = threading.Lock()
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept, name="kv-tcp-accept", daemon=True)
        self._acceptor.start()

    def num_connections(self) -> int:
        with self._lock:
            return len(self._connections)

    def close(self) -> None:
        """Stops accepting and closes every connection; sends in flight fail. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            connections = dict(self._connections)
        _shut(self._listener)
        for conn in connections.values():
            _shut(conn)
        self._acceptor.join(_JOIN_S)
        for thread in connections:
            thread.join(_JOIN_S)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # the listener was closed
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            thread = threading.Thread(
                target=self._serve, args=(conn,), name="kv-tcp-conn", daemon=True
            )
            with self._lock:
                admitted = not self._closed and len(self._connections) < self._max_connections
                if admitted:
                    self._connections[thread] = conn
            if not admitted:
                log.warning("kv tcp: refusing a connection (%d open)", self._max_connections)
                _shut(conn)
                continue
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        me = threading.current_thread()
        try:
            if self._ssl is not None:
                conn.settimeout(self._send_timeout_s)
                conn = self._ssl.wrap_socket(conn, server_side=True)  # detaches the plain one
                with self._lock:
                    if self._closed:
                        return
                    self._connections[me] = conn  # what close() must shut now
            while self._serve_one(conn):
                pass
        except (OSError, ProtocolError) as exc:  # ssl.SSLError is an OSError
            log.debug("kv tcp: connection closed: %s", exc)
        finally:
            with self._lock:
                self._connections.pop(me, None)
            _shut(conn)

    def _serve_one(self, conn: socket.socket) -> bool:
        """Answers one request; False when the peer closed the connection or went idle."""
        conn.settimeout(self._idle_timeout_s)
        try:
            request = read_request(conn)
        except TimeoutError:
            return False
        if request is None:
            return False
        conn.settimeout(self._send_timeout_s)
        try:
            with self._payload(request) as rows:
                conn.sendall(REPLY.pack(ReplyStatus.OK, len(rows)))
                conn.sendall(rows)
        except Refused as refused:
            conn.sendall(REPLY.pack(refused.status, 0))
        return True


def _shut(sock: socket.socket) -> None:
    """Unblocks any thread waiting on sock, then closes it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected, or already shut
    sock.close()
