"""Which workers exist, where they listen, and how loaded they are.

A worker is known by `worker_id`; each start of its process has a new, larger `epoch`.
Registering a newer epoch replaces the old incarnation (its load and liveness start
fresh); anything reported under an older epoch is ignored. `InMemoryRegistry` is the
embedded default for a single router; a shared (Redis) registry implements the same
interface.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from kv_transfer.pages import KVLayout, Role, TransportBackend
from kv_transfer.topology import DeviceKind, PeerTopology


class StaleEpoch(ValueError):
    """A registration or report from an older incarnation of a worker than the one known."""


@dataclass(slots=True)
class WorkerLoad:
    """What a worker's last GetStats said about its load and its KV pool."""

    queue_len: int = 0
    running: int = 0
    pages_in_use: int = 0
    pages_total: int = 0
    leases_outstanding: int = 0
    transfers_in_flight: int = 0
    request_pages: int = 0
    integrity_ok: bool = True
    queued_prefill_tokens: int = 0  # prompt tokens admitted, not computed yet
    draining: bool = False  # takes no new routes
    drained: bool = False  # draining and idle: may be stopped

    @property
    def pages_free(self) -> int:
        return self.pages_total - self.pages_in_use

    @property
    def pages_available(self) -> int:
        """Pages a new request could get: free ones plus idle cached ones (evictable)."""
        return self.pages_total - self.request_pages

    @property
    def page_usage(self) -> float:
        """Fraction of the pool in use; a pool of unknown size counts as empty."""
        return self.pages_in_use / self.pages_total if self.pages_total else 0.0


@dataclass(slots=True)
class WorkerRecord:
    """One worker incarnation as the router sees it. Records handed out are copies."""

    worker_id: str
    role: Role
    address: str  # host:port of its internal Worker gRPC service
    epoch: int
    layout: KVLayout
    node: str = ""
    pid: int = 0
    metrics_port: int = 0  # its Prometheus /metrics port on `node` (0: none)
    transport: TransportBackend = TransportBackend.LOCAL  # its default KV backend
    # What it can export or fetch through: shm always, cuda_ipc with its KV cache on CUDA,
    # gloo/nccl once it joined a KV group, tcp when configured.
    kv_backends: frozenset[TransportBackend] = frozenset({TransportBackend.SHM})
    device: DeviceKind = DeviceKind.CPU  # where its KV cache lives
    load: WorkerLoad = field(default_factory=WorkerLoad)
    alive: bool = True  # false once the monitor gave up on it; routing skips it
    last_seen_s: float = field(default_factory=time.time)  # unix time of its last report

    @property
    def routable(self) -> bool:
        """Whether new requests may be routed here."""
        return self.alive and not self.load.draining

    @property
    def topology(self) -> PeerTopology:
        """Where its KV cache lives: the node and device it reported (topology.py's table
        picks the pair's backend from the two)."""
        return PeerTopology(self.node, self.device)


def known_device(name: str) -> DeviceKind:
    """The device a worker reported ("cuda:1" reads as cuda). Empty (a worker older than the
    field) or unknown (a newer one's) reads as cpu, so a rolling upgrade never breaks on it:
    the host-staged backends (shm, gloo, tcp) serve a KV cache on any device."""
    kind = name.split(":")[0]
    known = {device.value for device in DeviceKind}
    return DeviceKind(kind) if kind in known else DeviceKind.CPU


class WorkerRegistry(ABC):
    """The set of known workers. Implementations are safe to use from one event loop."""

    @abstractmethod
    async def register(self, record: WorkerRecord) -> None:
        """Adds `record`, or replaces the known incarnation when `record.epoch` is newer or
        equal. Raises StaleEpoch for an older epoch. The registry keeps its own copy."""

    @abstractmethod
    async def deregister(self, worker_id: str, epoch: int | None = None) -> bool:
        """Removes the worker (only that epoch, when given). Returns whether one was removed;
        idempotent."""

    @abstractmethod
    async def update_load(self, worker_id: str, epoch: int, load: WorkerLoad) -> bool:
        """Records a load report, marks the worker alive and seen now. Returns False (and
        changes nothing) for an unknown worker or another epoch."""

    @abstractmethod
    async def mark_dead(self, worker_id: str, epoch: int) -> bool:
        """Excludes the incarnation from routing until a report or a re-registration revives
        it. Returns False for an unknown worker or another epoch."""

    @abstractmethod
    async def list_workers(self) -> list[WorkerRecord]:
        """A snapshot of every known worker, dead ones included, sorted by worker_id. The
        caller owns the copies; mutating them does not change the registry."""

    @abstractmethod
    async def get(self, worker_id: str) -> WorkerRecord | None:
        """A copy of the worker's record, or None."""

    async def sync(self) -> list[str]:
        """Takes in what other routers shared (once per monitor round); returns the ids of
        workers dropped because they are gone. A registry shared with nobody drops none."""
        return []

    async def close(self) -> None:
        """Releases connections; the registry is not used afterwards."""
        return None


class InMemoryRegistry(WorkerRegistry):
    """The embedded registry: a dict owned by this object, guarded by an asyncio lock."""

    def __init__(self) -> None:
        self._workers: dict[str, WorkerRecord] = {}
        self._lock = asyncio.Lock()

    async def register(self, record: WorkerRecord) -> None:
        async with self._lock:
            known = self._workers.get(record.worker_id)
            if known is not None and record.epoch < known.epoch:
                raise StaleEpoch(
                    f"worker {record.worker_id}: epoch {record.epoch} < known {known.epoch}"
                )
            self._workers[record.worker_id] = _copy(record)

    async def deregister(self, worker_id: str, epoch: int | None = None) -> bool:
        async with self._lock:
            known = self._workers.get(worker_id)
            if known is None or (epoch is not None and known.epoch != epoch):
                return False
            del self._workers[worker_id]
            return True

    async def update_load(self, worker_id: str, epoch: int, load: WorkerLoad) -> bool:
        async with self._lock:
            known = self._current(worker_id, epoch)
            if known is None:
                return False
            known.load, known.alive, known.last_seen_s = copy.copy(load), True, time.time()
            return True

    async def mark_dead(self, worker_id: str, epoch: int) -> bool:
        async with self._lock:
            known = self._current(worker_id, epoch)
            if known is not None:
                known.alive = False
            return known is not None

    async def list_workers(self) -> list[WorkerRecord]:
        async with self._lock:
            return [_copy(self._workers[key]) for key in sorted(self._workers)]

    async def get(self, worker_id: str) -> WorkerRecord | None:
        async with self._lock:
            known = self._workers.get(worker_id)
            return _copy(known) if known is not None else None

    def _current(self, worker_id: str, epoch: int) -> WorkerRecord | None:
        known = self._workers.get(worker_id)
        return known if known is not None and known.epoch == epoch else None

    def check_integrity(self) -> None:
        """Raises AssertionError if a record is filed under another worker's id."""
        for worker_id, record in self._workers.items():
            assert record.worker_id == worker_id, (worker_id, record.worker_id)


def _copy(record: WorkerRecord) -> WorkerRecord:
    """A copy the caller may change: every field but `load` is immutable, so only it is copied
    (cheaper than deepcopy on every request's snapshot)."""
    return dataclasses.replace(record, load=copy.copy(record.load))
