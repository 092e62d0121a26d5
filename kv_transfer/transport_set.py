"""The KV transports one worker holds (`TransportSet`, built by kv_transfer/factory.py).

Every export and fetch of a worker passes through its TransportSet, so that is where an
optional TransferObserver (the worker's metrics) sees each one: bytes and seconds of those that
succeeded, a failure for each TransferError, by its reason. For chaos testing only, a set may
inject faults into its fetches (kv_transfer/faults.py); its ledger counts them.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Protocol, TypeVar

import torch

from kv_transfer.collective import CollectiveTransport, join_kv_group, leave_kv_group
from kv_transfer.faults import FaultInjector, FaultKind
from kv_transfer.pages import KVHandle, TransferDirection, TransportBackend
from kv_transfer.transport import KVTransport, TransferError, TransferFailure

if TYPE_CHECKING:
    from kv_transfer.collective import KVGroupSpec

T = TypeVar("T")


class TransferObserver(Protocol):
    """Told of each export and fetch once it returned. Called on the transferring thread, so
    it must be thread-safe and quick; it must not raise."""

    def observe_transfer(
        self, backend: TransportBackend, direction: TransferDirection, nbytes: int, seconds: float
    ) -> None:
        """One transfer succeeded: `nbytes` of KV pages moved in `seconds`."""

    def count_transfer_failure(
        self, backend: TransportBackend, direction: TransferDirection, reason: TransferFailure
    ) -> None:
        """One transfer raised TransferError, for `reason`."""


class UnavailableBackend(ValueError):
    """A backend this worker does not hold (or, for `send`, one that is not pulled by rank)."""


class TransportSet:
    """The KV transports one worker holds, by backend, and the one counter of what they moved.

    Thread-safe: the transports are, and the counts are kept under a lock. Exports and fetches
    are counted once they succeeded, per backend: what a worker's stats report as proof of the
    path its KV really took.
    """

    def __init__(
        self,
        transports: Mapping[TransportBackend, KVTransport],
        default: TransportBackend,
        kv_group: KVGroupSpec | None = None,
        *,
        observer: TransferObserver | None = None,
        injector: FaultInjector | None = None,
    ) -> None:
        self._transports = dict(transports)
        self._observer = observer
        self._injector = injector
        if injector is not None:
            for transport in self._transports.values():
                injector.attach(transport)
        self.default = default
        self._kv_group = kv_group
        self._joined = False
        self._num_exports: Counter[TransportBackend] = Counter()
        self._num_fetches: Counter[TransportBackend] = Counter()
        self._lock = threading.Lock()
        self.resolve(default)  # a default it does not hold fails here, not on a request

    @property
    def backends(self) -> tuple[TransportBackend, ...]:
        return tuple(self._transports)

    def resolve(self, backend: TransportBackend | None) -> TransportBackend:
        """`backend`, or the default for None. Raises UnavailableBackend if it is not held."""
        chosen = self.default if backend is None else backend
        if chosen not in self._transports:
            held = ", ".join(self._transports)
            raise UnavailableBackend(f"kv_backend: {chosen} is not held here (only {held})")
        return chosen

    def fetch_proves_export_held(self, backend: TransportBackend) -> bool:
        """Whether a fetch through `backend` that returns needs no ack to be trusted."""
        return self._transports[self.resolve(backend)].fetch_proves_export_held

    def join_group(self) -> None:
        """Joins the KV group; blocks until every rank joined, so call it on every worker at
        once. A no-op without a group."""
        if self._kv_group is not None:
            join_kv_group(self._kv_group)
            self._joined = True

    def export(
        self,
        backend: TransportBackend,
        transfer_id: str,
        kv_cache: torch.Tensor,
        page_ids: Sequence[int],
    ) -> bytes:
        """KVTransport.export through `backend`; raises UnavailableBackend if not held."""
        chosen = self.resolve(backend)
        # kv_cache: [num_pages, ...page], page-major: a page spans stride(0) elements
        nbytes = len(page_ids) * kv_cache.stride(0) * kv_cache.element_size()
        locator = self._observed(
            chosen,
            TransferDirection.EXPORT,
            nbytes,
            lambda: self._transports[chosen].export(transfer_id, kv_cache, page_ids),
        )
        self._count(self._num_exports, backend)
        return locator

    def fetch(
        self,
        handle: KVHandle,
        kv_cache: torch.Tensor,
        dst_page_ids: Sequence[int],
        timeout_s: float,
    ) -> None:
        """KVTransport.fetch through the handle's backend; raises UnavailableBackend if not held."""
        chosen = self.resolve(handle.backend)
        transport = self._transports[chosen]
        if self._injector is None:
            fetch = transport.fetch
        else:
            fetch = partial(self._injector.fetch, transport)
        self._observed(
            chosen,
            TransferDirection.FETCH,
            handle.nbytes,
            lambda: fetch(handle, kv_cache, dst_page_ids, timeout_s),
        )
        self._count(self._num_fetches, handle.backend)

    def send(self, backend: TransportBackend | None, transfer_id: str, dst_rank: int) -> None:
        """CollectiveTransport.send: the source side of a pull by rank (gloo, nccl)."""
        chosen = self.resolve(backend)
        transport = self._transports[chosen]
        if not isinstance(transport, CollectiveTransport):
            raise UnavailableBackend(f"kv_backend: {chosen} transfers are not pulled by rank")
        transport.send(transfer_id, dst_rank)

    def release(self, backend: TransportBackend, transfer_id: str) -> None:
        """KVTransport.release; idempotent, and unknown ids or backends are ignored."""
        transport = self._transports.get(backend)
        if transport is not None:
            transport.release(transfer_id)

    def num_exported(self) -> int:
        return sum(transport.num_exported() for transport in self._transports.values())

    def num_exports(self) -> dict[TransportBackend, int]:
        with self._lock:
            return dict(self._num_exports)

    def num_fetches(self) -> dict[TransportBackend, int]:
        with self._lock:
            return dict(self._num_fetches)

    def faults_injected(self) -> dict[FaultKind, int]:
        """Faults injected into this set's fetches, by kind (chaos testing; else empty)."""
        return self._injector.ledger.counts() if self._injector is not None else {}

    def close(self) -> None:
        """Closes every transport, then leaves the KV group if this set joined it."""
        for transport in self._transports.values():
            transport.close()
        if self._joined:
            leave_kv_group(self._kv_group)
            self._joined = False

    def _count(self, counts: Counter[TransportBackend], backend: TransportBackend) -> None:
        with self._lock:
            counts[backend] += 1

    def _observed(
        self,
        backend: TransportBackend,
        direction: TransferDirection,
        nbytes: int,
        transfer: Callable[[], T],
    ) -> T:
        """`transfer()`, timed and reported to the observer, if any; its TransferError is
        counted as a failure and re-raised."""
        if self._observer is None:
            return transfer()
        started_s = time.perf_counter()
        try:
            result = transfer()
        except TransferError as exc:
            self._observer.count_transfer_failure(backend, direction, exc.reason)
            raise
        self._observer.observe_transfer(backend, direction, nbytes, time.perf_counter() - started_s)
        return result
