"""Picks a KV transport backend for a (source, destination) pair and builds transports.

`choose_backend` is pure: same node and both CPU → shm, same node and both CUDA → cuda_ipc,
both CUDA on different nodes → nccl, anything else → gloo. An override wins when it can serve
the topology (`usable_backends`); `local` serves only peers of one node (in-process tests).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from kv_transfer.pages import TransportBackend
from kv_transfer.transport import KVTransport


class DeviceKind(enum.StrEnum):
    CPU = "cpu"
    CUDA = "cuda"


@dataclass(frozen=True, slots=True)
class PeerTopology:
    """Where one worker's KV cache lives: its node and its device ("cpu", "cuda", "cuda:1")."""

    node_id: str
    device: DeviceKind

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", DeviceKind(str(self.device).split(":")[0]))


def choose_backend(
    src: PeerTopology, dst: PeerTopology, override: TransportBackend | None = None
) -> TransportBackend:
    """The backend for moving KV from src to dst. ValueError, naming the override, when the
    override cannot serve this pair."""
    if override is not None:
        if override not in usable_backends(src, dst):
            raise ValueError(f"transport override {override.value!r} cannot serve {src} → {dst}")
        return override
    same_node = src.node_id == dst.node_id
    both = {src.device, dst.device}
    if same_node and both == {DeviceKind.CPU}:
        return TransportBackend.SHM
    if same_node and both == {DeviceKind.CUDA}:
        return TransportBackend.CUDA_IPC
    if both == {DeviceKind.CUDA}:
        return TransportBackend.NCCL
    return TransportBackend.GLOO


def usable_backends(src: PeerTopology, dst: PeerTopology) -> frozenset[TransportBackend]:
    """Every backend valid for these two peers; gloo, the fallback, always is."""
    same_node = src.node_id == dst.node_id
    both = {src.device, dst.device}
    usable = {TransportBackend.GLOO}
    if same_node:
        usable.add(TransportBackend.LOCAL)
    if same_node and both == {DeviceKind.CPU}:
        usable.add(TransportBackend.SHM)
    if same_node and both == {DeviceKind.CUDA}:
        usable.add(TransportBackend.CUDA_IPC)
    if both == {DeviceKind.CUDA}:
        usable.add(TransportBackend.NCCL)
    return frozenset(usable)


def make_transport(backend: TransportBackend, **options: Any) -> KVTransport:
    """A transport of `backend`; options are its constructor's keyword arguments:

    local: exchange, verify_checksum            shm: verify_checksum, pool_bytes, max_mappings
    cuda_ipc: verify_checksum                   gloo / nccl: rank, request_send, verify_checksum,
                                                group_name (after join_kv_group)
    """
    backend = TransportBackend(backend)
    if backend == TransportBackend.LOCAL:
        from kv_transfer.local import LocalTransport

        return LocalTransport(**options)
    if backend == TransportBackend.SHM:
        from kv_transfer.shm import ShmTransport

        return ShmTransport(**options)
    if backend == TransportBackend.CUDA_IPC:
        from kv_transfer.cuda_ipc import CudaIpcTransport

        return CudaIpcTransport(**options)
    from kv_transfer.collective import CollectiveTransport

    return CollectiveTransport(backend, **options)
