"""Which KV backend moves a request's pages between two workers: a pure, torch-free choice.

The router imports this (it must load neither torch nor ray); the workers build transports
with kv_transfer/factory.py. The table (ARCHITECTURE.md §5):
    same node, both CPU   -> shm          same node, both CUDA -> cuda_ipc
    both CUDA, two nodes  -> nccl         anything else        -> gloo
An override (config `kv_backend`) wins when it can serve the pair (`usable_backends`); `local`
serves only peers of one node (in-process tests).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from kv_transfer.pages import TransportBackend


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

    def __str__(self) -> str:
        return f"{self.node_id}/{self.device.value}"


def choose_backend(
    src: PeerTopology, dst: PeerTopology, override: TransportBackend | None = None
) -> TransportBackend:
    """The backend for moving KV from src to dst. ValueError, naming the `kv_backend` field,
    when the override cannot serve this pair."""
    if override is not None:
        if override not in usable_backends(src, dst):
            raise ValueError(f"kv_backend: override {override.value!r} cannot serve {src} → {dst}")
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
