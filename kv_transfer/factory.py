"""Builds KV transports: one backend (`make_transport`), or the set one worker holds
(`make_worker_transports`). Which backend a pair uses is kv_transfer/topology.py's choice.

A worker holds (`held_backends`) shm always, for peers of its node (it stages a CUDA cache
through host memory), plus cuda_ipc when its KV cache is on CUDA, plus the KV group's backend
(gloo or nccl) when the cluster formed one, plus tcp when configured (peers on any node, no
group: kv_transfer/tcp.py). Each request names the backend to use, chosen by
the router per pair; a request naming none gets the worker's default (its config `transport`).
The set is a kv_transfer/transport_set.TransportSet.
"""

from __future__ import annotations

from typing import Any

from kv_transfer.collective import CollectiveTransport, KVGroupSpec, RequestSend
from kv_transfer.faults import FaultInjector, FaultPlan
from kv_transfer.pages import KVHandle, TransportBackend
from kv_transfer.tcp import TcpSettings
from kv_transfer.transport import KVTransport, TransferError
from kv_transfer.transport_set import TransferObserver, TransportSet

COLLECTIVE_BACKENDS = frozenset({TransportBackend.GLOO, TransportBackend.NCCL})


def make_transport(backend: TransportBackend, **options: Any) -> KVTransport:
    """A transport of `backend`; options are its constructor's keyword arguments:

    local: exchange, verify_checksum, checksum_sample_rate
    shm: verify_checksum, checksum_sample_rate, pool_bytes, max_mappings
    cuda_ipc: verify_checksum
    tcp: settings (TcpSettings), verify_checksum, checksum_sample_rate, pool_bytes
    gloo / nccl: rank, request_send, verify_checksum, checksum_sample_rate,
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
    if backend == TransportBackend.TCP:
        from kv_transfer.tcp import TcpTransport

        return TcpTransport(**options)
    return CollectiveTransport(backend, **options)


def held_backends(
    default: TransportBackend,
    kv_group: KVGroupSpec | None,
    tcp: bool = False,
    cuda: bool = False,
) -> tuple[TransportBackend, ...]:
    """The backends a worker with this config holds (`cuda`: its KV cache is on CUDA).
    ValueError, naming the field, when the group's backend is not collective or `default` is
    not held."""
    held = [TransportBackend.SHM]
    if cuda:
        held.append(TransportBackend.CUDA_IPC)
    elif default == TransportBackend.CUDA_IPC:
        raise ValueError("transport: cuda_ipc moves CUDA KV caches only; this one is on cpu")
    if kv_group is not None:
        if kv_group.backend not in COLLECTIVE_BACKENDS:
            raise ValueError(f"kv_group.backend: {kv_group.backend} is not gloo or nccl")
        held.append(kv_group.backend)
    if tcp:
        held.append(TransportBackend.TCP)
    if default not in held:
        names = ", ".join(held)
        raise ValueError(f"transport: {default} is not held by a worker holding only {names}")
    return tuple(held)


def make_worker_transports(
    default: TransportBackend,
    kv_group: KVGroupSpec | None,
    *,
    verify_checksum: bool,
    checksum_sample_rate: float = 1.0,
    request_send: RequestSend | None = None,
    observer: TransferObserver | None = None,
    faults: FaultPlan | None = None,
    tcp: TcpSettings | None = None,
    cuda: bool = False,
) -> TransportSet:
    """One transport per held backend. The collective one must still join its group
    (`TransportSet.join_group`). `request_send` is how a fetching (decode) worker asks a source
    to send; a worker that never fetches leaves it None. `observer` sees every transfer.
    `faults` (chaos testing only) are injected into every fetch when the plan is active.
    `tcp`, when given, adds the tcp backend (its server starts here when it listens); `cuda`
    (the worker's KV cache is on CUDA) adds cuda_ipc."""
    transports: dict[TransportBackend, KVTransport] = {}
    for backend in held_backends(default, kv_group, tcp is not None, cuda):
        options: dict[str, Any] = {"verify_checksum": verify_checksum}
        if backend == TransportBackend.CUDA_IPC:
            # Its checksum is a host round trip of every buffer on both sides, which would
            # undo a device-to-device copy: a debugging aid (CudaIpcTransport), off here.
            options["verify_checksum"] = False
        else:
            options["checksum_sample_rate"] = checksum_sample_rate
        if backend == TransportBackend.TCP:
            options["settings"] = tcp
        if kv_group is not None and backend == kv_group.backend:
            options |= {
                "rank": kv_group.rank,
                "request_send": request_send or _never_fetches,
                "group_name": kv_group.group_name,
            }
        transports[backend] = make_transport(backend, **options)
    injector = FaultInjector(faults) if faults is not None and faults.is_active else None
    return TransportSet(transports, default, kv_group, observer=observer, injector=injector)


def _never_fetches(handle: KVHandle, dst_rank: int, timeout_s: float) -> None:
    raise TransferError(f"{handle.transfer_id}: this worker does not fetch KV")
