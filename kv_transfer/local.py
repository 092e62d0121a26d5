"""In-process KV transport for tests: both halves live in one process and share a LocalExchange.

export gathers the pages into a private copy and publishes it under the transfer id; fetch
copies that copy into the destination pages. Nothing crosses a process boundary, so the
locator carries only the envelope (size and checksum).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch

from kv_transfer.checksum import (
    Integrity,
    gather_rows,
    page_index,
    scatter_rows,
)
from kv_transfer.exports import ExportTable, start_fetch
from kv_transfer.pages import KVHandle, TransportBackend
from kv_transfer.transport import KVTransport, TransferError, TransferState


class LocalExchange:
    """The in-process 'wire': gathered pages (uint8 rows [num_pages, page_nbytes]) by transfer
    id, shared by the transports of one test. Owned by the transport that published them."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()

    def publish(self, transfer_id: str, buffer: torch.Tensor) -> None:
        with self._lock:
            self._buffers[transfer_id] = buffer

    def lookup(self, transfer_id: str) -> torch.Tensor | None:
        """The published buffer itself (not a copy): tests corrupt it to exercise the checksum."""
        return self._buffers.get(transfer_id)

    def withdraw(self, transfer_id: str) -> None:
        with self._lock:
            self._buffers.pop(transfer_id, None)

    def __len__(self) -> int:
        return len(self._buffers)


class LocalTransport(KVTransport):
    """Transfers within one process. Pair two instances by giving them the same exchange."""

    backend = TransportBackend.LOCAL

    def __init__(
        self,
        *,
        exchange: LocalExchange | None = None,
        verify_checksum: bool = True,
        checksum_sample_rate: float = 1.0,
    ):
        self._exchange = exchange if exchange is not None else LocalExchange()
        self.integrity = Integrity(verify_checksum, checksum_sample_rate)
        self._exports: ExportTable[None] = ExportTable()

    def export(self, transfer_id: str, kv_cache: torch.Tensor, page_ids: Sequence[int]) -> bytes:
        self._exports.check_new(transfer_id)
        rows = gather_rows(kv_cache, page_index(page_ids, kv_cache.shape[0]))
        locator = self.integrity.seal(transfer_id, rows, rows.numel(), b"")
        self._exports.add(transfer_id, None)
        self._exchange.publish(transfer_id, rows)
        return locator.encode()

    def fetch(
        self,
        handle: KVHandle,
        kv_cache: torch.Tensor,
        dst_page_ids: Sequence[int],
        timeout_s: float,
    ) -> None:
        start = start_fetch(handle, kv_cache, dst_page_ids, timeout_s)
        locator, dst_index = start.locator, start.dst_index
        rows = self._exchange.lookup(handle.transfer_id)
        if rows is None:
            raise TransferError(f"{handle.transfer_id}: released or never exported")
        rows = self.integrity.received(locator, rows, handle.transfer_id)
        scatter_rows(kv_cache, dst_index, rows)

    def release(self, transfer_id: str) -> None:
        if transfer_id in self._exports:
            self._exchange.withdraw(transfer_id)
            self._exports.pop(transfer_id)

    def state(self, transfer_id: str) -> TransferState | None:
        return self._exports.state(transfer_id)

    def num_exported(self) -> int:
        return len(self._exports)

    def close(self) -> None:
        for transfer_id in self._exports.pop_all():
            self._exchange.withdraw(transfer_id)
