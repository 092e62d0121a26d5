"""The tcp KV backend's wire format (torch-free): where an export is served, and the one
request and reply a stream connection carries at a time.

    address   secret u64 | port u16 | host (utf-8)       inside the locator envelope
    request   magic "PDKT" | secret u64 | nbytes u64 | id length u16 | transfer id (utf-8)
    reply     status u8 | nbytes u64, then the nbytes of KV rows when status is OK

A connection carries any number of request/reply pairs, one after another. The secret is
drawn per export and known only to holders of the handle: a peer that can reach the port
but was not handed the transfer reads nothing. Everything read off the wire is checked
before use; nothing is unpickled.
"""

from __future__ import annotations

import enum
import socket
import struct
from dataclasses import dataclass

from kv_transfer.exports import Deadline
from kv_transfer.transport import TransferError, TransferFailure

_ADDRESS = struct.Struct("<QH")
_MAGIC = b"PDKT"
_REQUEST = struct.Struct("<4sQQH")
REPLY = struct.Struct("<BQ")
MAX_TRANSFER_ID_BYTES = 1024


class ReplyStatus(enum.IntEnum):
    OK = 0
    UNKNOWN = 1  # released, never exported, or the secret does not match
    SIZE = 2  # the reader expects another size than the export has


@dataclass(frozen=True, slots=True)
class TcpAddress:
    """Where one export is served, and the secret that reads it."""

    secret: int
    host: str
    port: int

    def encode(self) -> bytes:
        return _ADDRESS.pack(self.secret, self.port) + self.host.encode()

    @classmethod
    def decode(cls, raw: bytes, transfer_id: str) -> TcpAddress:
        """Raises TransferError when `raw` is not a tcp address."""
        if len(raw) <= _ADDRESS.size:
            raise TransferError(f"{transfer_id}: malformed tcp locator")
        secret, port = _ADDRESS.unpack_from(raw)
        try:
            host = raw[_ADDRESS.size :].decode()
        except UnicodeDecodeError:
            raise TransferError(f"{transfer_id}: malformed tcp locator host") from None
        if port == 0:
            raise TransferError(f"{transfer_id}: tcp locator without a port")
        return cls(secret, host, port)

    @property
    def peer(self) -> tuple[str, int]:
        return self.host, self.port


@dataclass(frozen=True, slots=True)
class KVRequest:
    transfer_id: str
    secret: int
    nbytes: int

    def encode(self) -> bytes:
        raw_id = self.transfer_id.encode()
        return _REQUEST.pack(_MAGIC, self.secret, self.nbytes, len(raw_id)) + raw_id


class ProtocolError(Exception):
    """The peer sent something that is not this protocol; the connection must be closed."""


def read_request(sock: socket.socket) -> KVRequest | None:
    """The next request on a server connection; None when the peer closed it cleanly between
    requests. Raises ProtocolError on anything malformed, OSError on socket errors."""
    header = recv_exactly(sock, _REQUEST.size, allow_eof=True)
    if header is None:
        return None
    magic, secret, nbytes, id_length = _REQUEST.unpack(header)
    if magic != _MAGIC or not 0 < id_length <= MAX_TRANSFER_ID_BYTES:
        raise ProtocolError("not a pdserve KV request")
    raw_id = recv_exactly(sock, id_length)
    assert raw_id is not None
    try:
        return KVRequest(raw_id.decode(), secret, nbytes)
    except UnicodeDecodeError:
        raise ProtocolError("transfer id is not utf-8") from None


def recv_exactly(sock: socket.socket, nbytes: int, allow_eof: bool = False) -> bytes | None:
    """`nbytes` from sock. None if allow_eof and the peer closed before sending any;
    ProtocolError if it closed part way."""
    received = bytearray(nbytes)
    view, got = memoryview(received), 0
    while got < nbytes:
        count = sock.recv_into(view[got:])
        if count == 0:
            if got == 0 and allow_eof:
                return None
            raise ProtocolError(f"connection closed after {got} of {nbytes} bytes")
        got += count
    return bytes(received)


def recv_into_by(sock: socket.socket, into: memoryview, deadline: Deadline, what: str) -> None:
    """Fills `into` from sock before the deadline; TransferError (TIMEOUT) when it passes,
    ProtocolError when the peer closes part way."""
    got = 0
    while got < len(into):
        remaining_s = deadline.remaining_s()
        if remaining_s <= 0:
            raise TransferError(f"{what}: deadline passed while receiving", TransferFailure.TIMEOUT)
        sock.settimeout(remaining_s)
        try:
            count = sock.recv_into(into[got:])
        except TimeoutError:
            raise TransferError(
                f"{what}: deadline passed while receiving", TransferFailure.TIMEOUT
            ) from None
        if count == 0:
            raise ProtocolError(f"connection closed after {got} of {len(into)} bytes")
        got += count
