"""What each KV transport backend keeps on its side: a transfer's deadline, a pool of staging
buffers, and the source-side table of exported transfers (one owner per transport).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

from kv_transfer.checksum import Locator, check_destination, gather_rows
from kv_transfer.pages import KVHandle
from kv_transfer.transport import TransferError, TransferFailure, TransferState


@dataclass(frozen=True, slots=True)
class Deadline:
    """A point on the monotonic clock after which a transfer has failed."""

    at_s: float

    @classmethod
    def after(cls, timeout_s: float) -> Deadline:
        return cls(time.monotonic() + timeout_s)

    def remaining_s(self) -> float:
        return self.at_s - time.monotonic()

    def check(self, transfer_id: str) -> None:
        if self.remaining_s() <= 0:
            raise TransferError(f"{transfer_id}: deadline passed", TransferFailure.TIMEOUT)


class BufferPool:
    """Idle flat uint8 buffers by capacity (a power of two) and device, at most `max_bytes` of
    them. Reuse spares the page faults a fresh large allocation pays: ~1.2 GB/s on these VMs,
    slower than the copy into it. `pin_memory`: host buffers are page-locked (staging for a
    GPU: their copies are one DMA, and pinning is slow enough to be worth reusing)."""

    def __init__(self, max_bytes: int, pin_memory: bool = False) -> None:
        self._max_bytes = max_bytes
        self._pin_memory = pin_memory
        self._idle: dict[tuple[int, str], list[torch.Tensor]] = {}
        self._idle_bytes = 0
        self._lock = threading.Lock()

    def take(self, nbytes: int, device: torch.device) -> torch.Tensor:
        """A buffer of at least nbytes, owned by the caller until give_back."""
        capacity = 1 << max(0, nbytes - 1).bit_length()
        with self._lock:
            idle = self._idle.get((capacity, str(device)))
            if idle:
                self._idle_bytes -= capacity
                return idle.pop()
        return torch.empty(capacity, dtype=torch.uint8, device=device, pin_memory=self._pin_memory)

    def give_back(self, buffer: torch.Tensor) -> None:
        with self._lock:
            if self._idle_bytes + buffer.numel() <= self._max_bytes:
                self._idle.setdefault((buffer.numel(), str(buffer.device)), []).append(buffer)
                self._idle_bytes += buffer.numel()

    def clear(self) -> None:
        with self._lock:
            self._idle.clear()
            self._idle_bytes = 0


def gather_into(kv_cache: torch.Tensor, index: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """kv_cache[index] as uint8 rows into `out` [len(index), page_nbytes], which may live on
    another device than the cache (a host buffer for a CUDA cache): one indexed gather where
    the cache lives, then one copy across."""
    if kv_cache.device == out.device:
        return gather_rows(kv_cache, index, out=out)
    return out.copy_(gather_rows(kv_cache, index))


R = TypeVar("R")


class ExportTable(Generic[R]):
    """Source-side transfers exported and not yet released, each with its state and the resource
    that holds its data. The one owner of that set; safe to use from several threads."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[TransferState, R]] = {}
        self._lock = threading.Lock()

    def check_new(self, transfer_id: str) -> None:
        if transfer_id in self._entries:
            raise ValueError(f"transfer {transfer_id!r} is already exported")

    def add(self, transfer_id: str, resource: R) -> None:
        with self._lock:
            self.check_new(transfer_id)
            self._entries[transfer_id] = (TransferState.PENDING, resource)

    def get(self, transfer_id: str) -> R | None:
        entry = self._entries.get(transfer_id)
        return entry[1] if entry else None

    def state(self, transfer_id: str) -> TransferState | None:
        entry = self._entries.get(transfer_id)
        return entry[0] if entry else None

    def set_state(self, transfer_id: str, state: TransferState) -> None:
        with self._lock:
            if transfer_id in self._entries:
                self._entries[transfer_id] = (state, self._entries[transfer_id][1])

    def pop(self, transfer_id: str) -> R | None:
        with self._lock:
            entry = self._entries.pop(transfer_id, None)
        return entry[1] if entry else None

    def resources(self) -> list[R]:
        """A snapshot of the live transfers' resources."""
        with self._lock:
            return [resource for _, resource in self._entries.values()]

    def pop_all(self) -> dict[str, R]:
        with self._lock:
            popped = {tid: resource for tid, (_, resource) in self._entries.items()}
            self._entries.clear()
        return popped

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, transfer_id: str) -> bool:
        return transfer_id in self._entries


@dataclass(slots=True)
class Staged:
    """One export gathered into a pooled buffer on the source. `key` is the backend's name for
    it on the wire (collective: the tag; tcp: the secret a reader must present)."""

    buffer: torch.Tensor  # flat uint8, from the pool
    rows: torch.Tensor  # uint8 [num_pages, page_nbytes], a view of buffer
    key: int
    holders: int = 1


class StagedSource:
    """The source-side calls of a KVTransport whose exports are a StagedExports (`_staged`)."""

    _staged: StagedExports

    def release(self, transfer_id: str) -> None:
        self._staged.release(transfer_id)

    def state(self, transfer_id: str) -> TransferState | None:
        return self._staged.table.state(transfer_id)

    def num_exported(self) -> int:
        return len(self._staged.table)


class StagedExports:
    """The source side of the backends that send a gathered copy (gloo, nccl, tcp): the export
    table and the buffer pool behind it, one owner of both.

    An export's buffer is held by the export itself until `release`, and by each send in
    flight (`hold` … `let_go`): it goes back to the pool only once nobody holds it, so a send
    never reads a buffer a later export reuses.
    """

    def __init__(self, pool_bytes: int) -> None:
        self.table: ExportTable[Staged] = ExportTable()
        self._buffers = BufferPool(pool_bytes)
        self._holders = threading.Lock()

    def take_rows(
        self, num_pages: int, kv_cache: torch.Tensor, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A pooled buffer on `device` and its view as uint8 rows [num_pages, page_nbytes]
        for pages of kv_cache (page-major: one page is kv_cache[0])."""
        page_nbytes = kv_cache[0].numel() * kv_cache.element_size()
        buffer = self._buffers.take(num_pages * page_nbytes, device)
        return buffer, buffer[: num_pages * page_nbytes].view(num_pages, page_nbytes)

    def stage(
        self, transfer_id: str, kv_cache: torch.Tensor, index: torch.Tensor, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """kv_cache[index] gathered into a pooled buffer on `device` (one indexed gather, then
        one copy when `device` is not the cache's); returns (buffer, rows) for `add`. Raises
        ValueError if transfer_id is exported already."""
        self.table.check_new(transfer_id)
        buffer, rows = self.take_rows(len(index), kv_cache, device)
        gather_into(kv_cache, index, rows)
        return buffer, rows

    def give_back(self, buffer: torch.Tensor) -> None:
        """Returns a buffer from take_rows that no export holds (a receive's, once done)."""
        self._buffers.give_back(buffer)

    def add(self, transfer_id: str, staged: Staged) -> None:
        self.table.add(transfer_id, staged)

    def hold(self, transfer_id: str) -> Staged | None:
        """The export, held for one more send; None when released or never exported."""
        with self._holders:
            staged = self.table.get(transfer_id)
            if staged is not None:
                staged.holders += 1
            return staged

    def let_go(self, staged: Staged) -> None:
        with self._holders:
            staged.holders -= 1
            unheld = staged.holders == 0
        if unheld:
            self._buffers.give_back(staged.buffer)

    def release(self, transfer_id: str) -> None:
        with self._holders:
            staged = self.table.pop(transfer_id)
        if staged is not None:
            self.let_go(staged)

    def close(self) -> None:
        """Drops every export; buffers still held by a send go back when it ends."""
        with self._holders:
            staged = list(self.table.pop_all().values())
        for entry in staged:
            self.let_go(entry)
        self._buffers.clear()


@dataclass(frozen=True, slots=True)
class FetchStart:
    """What every transport's fetch opens with."""

    deadline: Deadline
    locator: Locator
    dst_index: torch.Tensor  # the destination pages, checked against the handle


def start_fetch(
    handle: KVHandle, kv_cache: torch.Tensor, dst_page_ids: Sequence[int], timeout_s: float
) -> FetchStart:
    """The fetch's deadline (TIMEOUT at once when already passed), its decoded locator and its
    checked destination; raises TransferError before anything is read or written."""
    deadline = Deadline.after(timeout_s)
    deadline.check(handle.transfer_id)
    locator = Locator.decode(handle.locator)
    return FetchStart(deadline, locator, check_destination(handle, locator, kv_cache, dst_page_ids))
