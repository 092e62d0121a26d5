"""The decode worker's calls to prefill workers: the lease ack and keep-alive, and SendKV for
a pull by rank.

A collective transport (gloo, nccl) asks the source to send through `request_send`, which it
calls with the handle alone; the source's address came with the Decode call. So the scheduler
opens `pulling_from(transfer_id, src_address)` around the fetch, and `request_send` finds the
address by the handle's transfer id (unique per transfer, so no stale address is ever used).
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import grpc
from pydantic import SecretStr

from kv_transfer.pages import KVHandle
from kv_transfer.transport import TransferError
from pdserve.channels import open_channel
from pdserve.tls import TLSConfig
from pdserve.v1 import worker_pb2, worker_pb2_grpc
from pdserve.workers import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)


class Ack(enum.Enum):
    RELEASED = "released"  # the source had the lease until now: what was read is its KV
    UNKNOWN = "unknown"  # the lease had ended (expired or released): the pages may be reused
    UNREACHABLE = "unreachable"  # no answer: the source may be dead; its lease TTL ends it


class PrefillPeers:
    """Caches one channel per prefill address; owns the addresses of the pulls in progress.
    Thread-safe: every Decode stream runs on its own gRPC thread."""

    def __init__(
        self,
        ack_timeout_s: float,
        tls: TLSConfig | None = None,
        token: SecretStr | None = None,
    ) -> None:
        self._ack_timeout_s = ack_timeout_s
        self._tls, self._token = tls, token  # the internal edge's, as the worker's server
        self._stubs: dict[str, worker_pb2_grpc.WorkerStub] = {}
        self._channels: list[grpc.Channel] = []
        self._sources: dict[str, str] = {}  # transfer id -> its source's address
        self._lock = threading.Lock()
        # Acks nobody waits for; one thread, so at most one is sent at a time.
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lease-ack")

    def ack(self, address: str, transfer_id: str) -> Ack:
        """ReleaseLease; a failed call is UNREACHABLE (the lease TTL backs it)."""
        try:
            reply = self._stub(address).ReleaseLease(
                worker_pb2.ReleaseLeaseRequest(transfer_id=transfer_id),
                timeout=self._ack_timeout_s,
            )
        except grpc.RpcError as exc:
            log.warning("ack of %s to %s failed: %s", transfer_id, address, exc.code())
            return Ack.UNREACHABLE
        return Ack.RELEASED if reply.released else Ack.UNKNOWN

    def ack_soon(self, address: str, transfer_id: str) -> None:
        """`ack` in the background, for a pull already trusted; one that never arrives (the
        worker stopped first) is ended by the lease's TTL."""
        self._background.submit(self.ack, address, transfer_id)

    def renew(self, address: str, transfer_id: str) -> float | None:
        """RenewLease: the lease's new expiry (unix s); None when the source no longer holds
        it. Raises grpc.RpcError when the source does not answer."""
        reply = self._stub(address).RenewLease(
            worker_pb2.RenewLeaseRequest(transfer_id=transfer_id), timeout=self._ack_timeout_s
        )
        return reply.expiry_unix_s if reply.renewed else None

    @contextmanager
    def pulling_from(self, transfer_id: str, address: str) -> Iterator[None]:
        """While open, `request_send` for `transfer_id` asks the worker at `address`."""
        with self._lock:
            self._sources[transfer_id] = address
        try:
            yield
        finally:
            with self._lock:
                del self._sources[transfer_id]

    def request_send(self, handle: KVHandle, dst_rank: int, timeout_s: float) -> None:
        """kv_transfer.collective.RequestSend: SendKV on the handle's source. Returns once the
        source posted the send; raises TransferError or grpc.RpcError when the pull is not
        open here, or the source refused or did not answer within timeout_s."""
        with self._lock:
            address = self._sources.get(handle.transfer_id)
        if address is None:
            raise TransferError(f"{handle.transfer_id}: no source address for this pull")
        message = worker_pb2.SendKVRequest(
            transfer_id=handle.transfer_id, backend=handle.backend.value, dst_rank=dst_rank
        )
        self._stub(address).SendKV(message, timeout=timeout_s)

    def _stub(self, address: str) -> worker_pb2_grpc.WorkerStub:
        with self._lock:
            if address not in self._stubs:
                channel = open_channel(address, self._tls, self._token, MAX_MESSAGE_BYTES)
                self._channels.append(channel)
                self._stubs[address] = worker_pb2_grpc.WorkerStub(channel)
            return self._stubs[address]

    def close(self) -> None:
        self._background.shutdown(wait=True, cancel_futures=False)
        with self._lock:
            for channel in self._channels:
                channel.close()
            self._channels.clear()
            self._stubs.clear()
