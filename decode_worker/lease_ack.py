"""The decode side's ack to a prefill worker: its leased pages may be unpinned."""

from __future__ import annotations

import logging
import threading

import grpc

from pdserve.v1 import worker_pb2, worker_pb2_grpc

log = logging.getLogger(__name__)


class LeaseAcker:
    """Caches one channel per prefill address; acks are best effort (the lease TTL backs them)."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._stubs: dict[str, worker_pb2_grpc.WorkerStub] = {}
        self._channels: list[grpc.Channel] = []
        self._lock = threading.Lock()

    def ack(self, address: str, transfer_id: str) -> bool:
        try:
            reply = self._stub(address).ReleaseLease(
                worker_pb2.ReleaseLeaseRequest(transfer_id=transfer_id), timeout=self._timeout_s
            )
            return reply.released
        except grpc.RpcError as exc:
            log.warning("ack of %s to %s failed: %s", transfer_id, address, exc.code())
            return False

    def _stub(self, address: str) -> worker_pb2_grpc.WorkerStub:
        with self._lock:
            if address not in self._stubs:
                channel = grpc.insecure_channel(address)
                self._channels.append(channel)
                self._stubs[address] = worker_pb2_grpc.WorkerStub(channel)
            return self._stubs[address]

    def close(self) -> None:
        with self._lock:
            for channel in self._channels:
                channel.close()
            self._channels.clear()
            self._stubs.clear()
