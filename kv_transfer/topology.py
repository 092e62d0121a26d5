"""Which KV backend moves a request's pages between two workers: a pure, torch-free choice.

The router imports this (it must load neither torch nor ray); the workers build transports
with kv_transfer/factory.py. The table (ARCHITECTURE.md §5):
    same node, both CUDA  -> cuda_ipc     same node, otherwise -> shm (host-staged)
    both CUDA, two nodes  -> nccl         anything else        -> gloo
then tcp and gloo as fallbacks, for pairs that do not both hold the first choice (workers
started one by one, on Kubernetes, form no KV group: they pair over tcp). The router passes
the backends both peers hold. An override (config `kv_backend`) wins when it can serve the
pair (`usable_backends`) and both hold it; `local` serves only peers of one node (in-process
tests).
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
    src: PeerTopology,
    dst: PeerTopology,
    override: TransportBackend | None = None,
    held: frozenset[TransportBackend] | None = None,
) -> TransportBackend:
    """The backend for moving KV from src to dst: the override, or the first of the pair's
    preferences (`preferred_backends`) in `held` (the backends both peers hold; None = any).
    ValueError, naming the `kv_backend` field, when none can serve this pair."""
    if override is not None:
        if override not in usable_backends(src, dst):
            raise ValueError(f"kv_backend: override {override.value!r} cannot serve {src} → {dst}")
        if held is not None and override not in held:
            raise ValueError(
                f"kv_backend: override {override.value!r} is not held by {src} → {dst}"
            )
        return override
    for backend in preferred_backends(src, dst):
        if held is None or backend in held:
            return backend
    names = ", ".join(sorted(held or ()))
    raise ValueError(f"kv_backend: no backend held by both ({names}) serves {src} → {dst}")


def preferred_backends(src: PeerTopology, dst: PeerTopology) -> tuple[TransportBackend, ...]:
    """The backends for this pair, best first: the table's choice, then tcp (no group needed,
    any nodes and devices), then gloo."""
    same_node = src.node_id == dst.node_id
    both = {src.device, dst.device}
    if same_node and both == {DeviceKind.CUDA}:
        first = TransportBackend.CUDA_IPC
    elif same_node:  # shm stages through host memory, from and to either device
        first = TransportBackend.SHM
    elif both == {DeviceKind.CUDA}:
        first = TransportBackend.NCCL
    else:
        first = TransportBackend.GLOO
    rest = (TransportBackend.TCP, TransportBackend.GLOO)
    return (first, *(backend for backend in rest if backend != first))


def usable_backends(src: PeerTopology, dst: PeerTopology) -> frozenset[TransportBackend]:
    """Every backend valid for these two peers; gloo and tcp, the fallbacks, always are."""
    same_node = src.node_id == dst.node_id
    both = {src.device, dst.device}
    usable = {TransportBackend.GLOO, TransportBackend.TCP}
    if same_node:
        usable.add(TransportBackend.LOCAL)
    if same_node:
        usable.add(TransportBackend.SHM)
    if same_node and both == {DeviceKind.CUDA}:
        usable.add(TransportBackend.CUDA_IPC)
    if both == {DeviceKind.CUDA}:
        usable.add(TransportBackend.NCCL)
    return frozenset(usable)
