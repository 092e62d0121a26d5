"""The destination half of the tcp KV backend: pulls one export's rows from its source's
stream server (wire format: kv_transfer/tcp_wire.py) over connections kept for reuse.

A connection is taken from the peer's idle ones (or dialled), carries one request and its
reply, and goes back idle only if the exchange ended cleanly (rows received, or a refusal
read whole); after any error it is closed, so no late bytes reach a later transfer. A
connection the source closed while idle (its idle timeout, or a restart) fails before any
reply byte: that one exchange is retried once on a fresh connection. At most
`max_idle_per_peer` idle connections per source and `max_peers` sources are kept (the least
recently used source's are closed). Every wait is bounded by the transfer's deadline.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections import OrderedDict

from kv_transfer.exports import Deadline
from kv_transfer.tcp_wire import (
    REPLY,
    KVRequest,
    ProtocolError,
    ReplyStatus,
    TcpAddress,
    recv_into_by,
)
from kv_transfer.transport import TransferError, TransferFailure

Peer = tuple[str, int]


class _Stale(Exception):
    """A reused connection failed before any byte of the reply: the source had closed it."""


class KVStreamClient:
    def __init__(
        self,
        ssl_context: ssl.SSLContext | None = None,
        *,
        server_name: str | None = None,
        max_idle_per_peer: int = 4,
        max_peers: int = 64,
    ) -> None:
        self._ssl = ssl_context
        self._server_name = server_name  # the name certificates are checked as; None: the host
        self._max_idle_per_peer = max_idle_per_peer
        self._max_peers = max_peers
        self._idle: OrderedDict[Peer, list[socket.socket]] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = False

    def pull(
        self, address: TcpAddress, request: KVRequest, into: memoryview, deadline: Deadline
    ) -> None:
        """Fills `into` with the export's rows. Raises TransferError: TIMEOUT when the deadline
        passes, ERROR when the source is unreachable, refuses, or breaks the protocol."""
        what = request.transfer_id
        reused = self._take_idle(address.peer)
        if reused is not None:
            try:
                return self._exchange(reused, address, request, into, deadline, reused=True)
            except _Stale:
                pass  # the source closed it while idle; one retry, fresh
        conn = self._dial(address, deadline, what)
        try:
            self._exchange(conn, address, request, into, deadline, reused=False)
        except _Stale:
            raise TransferError(f"{what}: the source closed the connection") from None

    def num_idle(self) -> int:
        with self._lock:
            return sum(len(conns) for conns in self._idle.values())

    def close(self) -> None:
        """Closes every idle connection; pulls in flight close theirs when they end."""
        with self._lock:
            self._closed = True
            idle = [conn for conns in self._idle.values() for conn in conns]
            self._idle.clear()
        for conn in idle:
            conn.close()

    def _exchange(
        self,
        conn: socket.socket,
        address: TcpAddress,
        request: KVRequest,
        into: memoryview,
        deadline: Deadline,
        *,
        reused: bool,
    ) -> None:
        """One request and its reply on conn; conn is kept (idle) or closed, never leaked."""
        what = request.transfer_id
        clean = False
        try:
            header = bytearray(REPLY.size)
            try:
                conn.settimeout(max(deadline.remaining_s(), 1e-3))
                conn.sendall(request.encode())
                recv_into_by(conn, memoryview(header), deadline, what)
            except (ProtocolError, ConnectionError) as exc:
                if reused:
                    raise _Stale from exc
                raise
            status, nbytes = REPLY.unpack(header)
            if status != ReplyStatus.OK:
                clean = True  # a refusal is read whole: the connection stays usable
                raise TransferError(f"{what}: the source refused it ({_status_name(status)})")
            if nbytes != len(into):
                raise ProtocolError(f"the source sent {nbytes} bytes, not {len(into)}")
            recv_into_by(conn, into, deadline, what)
            clean = True
        except TimeoutError:
            raise TransferError(f"{what}: deadline passed", TransferFailure.TIMEOUT) from None
        except (OSError, ProtocolError) as exc:
            raise TransferError(
                f"{what}: KV stream from {address.host}:{address.port} failed: {exc}"
            ) from exc
        finally:
            if clean:
                self._give_back(address.peer, conn)
            else:
                conn.close()

    def _dial(self, address: TcpAddress, deadline: Deadline, what: str) -> socket.socket:
        deadline.check(what)
        try:
            conn = socket.create_connection(address.peer, timeout=deadline.remaining_s())
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                name = self._server_name or address.host
                conn = self._ssl.wrap_socket(conn, server_hostname=name)
            return conn
        except TimeoutError:
            raise TransferError(
                f"{what}: deadline passed dialling", TransferFailure.TIMEOUT
            ) from None
        except OSError as exc:
            raise TransferError(
                f"{what}: cannot reach {address.host}:{address.port}: {exc}"
            ) from exc

    def _take_idle(self, peer: Peer) -> socket.socket | None:
        with self._lock:
            conns = self._idle.get(peer)
            return conns.pop() if conns else None

    def _give_back(self, peer: Peer, conn: socket.socket) -> None:
        evicted: list[socket.socket] = []
        with self._lock:
            conns = self._idle.setdefault(peer, [])
            self._idle.move_to_end(peer)
            if self._closed or len(conns) >= self._max_idle_per_peer:
                evicted.append(conn)
            else:
                conns.append(conn)
            while len(self._idle) > self._max_peers:
                evicted.extend(self._idle.popitem(last=False)[1])
        for stale in evicted:
            stale.close()


def _status_name(status: int) -> str:
    try:
        return ReplyStatus(status).name.lower()
    except ValueError:
        return f"status {status}"
