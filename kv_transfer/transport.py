"""The KV transport contract every backend implements.

KV cache tensor layout, on every worker (page-major, so a page is one contiguous block):
    kv_cache: [num_pages, num_layers, 2 (K, V), page_size, num_kv_heads, head_dim]
A transfer moves `kv_cache[src_page_ids]` as ONE gathered contiguous buffer
    buffer: [len(page_ids), num_layers, 2, page_size, num_kv_heads, head_dim]
into `kv_cache[dst_page_ids]` on the peer — never one message per page.

Lifecycle of one transfer (source = prefill worker, destination = decode worker):
    source.export(id, kv, pages) -> locator   pages gathered/shared; state PENDING
    dest.fetch(handle, kv, dst_pages, ...)    TRANSFERRING, then DONE or FAILED (raises)
    source.release(id)                        after the ack or the lease expiry; idempotent
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from kv_transfer.pages import KVHandle, TransportBackend


class TransferState(enum.StrEnum):
    PENDING = "pending"
    TRANSFERRING = "transferring"
    DONE = "done"
    FAILED = "failed"


class TransferFailure(enum.StrEnum):
    """Why a transfer failed, as counted by a worker's metrics."""

    CHECKSUM = "checksum"  # the bytes received differ from what the source checksummed
    TIMEOUT = "timeout"  # its deadline passed
    ERROR = "error"  # anything else: released, unreachable, refused, malformed


class TransferError(RuntimeError):
    """A transfer failed as a unit: nothing it wrote into the destination pages may be used."""

    def __init__(self, message: str, reason: TransferFailure = TransferFailure.ERROR) -> None:
        super().__init__(message)
        self.reason = reason


class KVTransport(ABC):
    """One backend's two halves. A worker holds one instance and uses the half of its role."""

    backend: TransportBackend
    # A fetch that returns proves the source held the export through the whole copy, so the
    # reader needs no ack to trust it (shm: the segment's token is checked after the copy).
    fetch_proves_export_held: bool = False

    @abstractmethod
    def export(self, transfer_id: str, kv_cache: torch.Tensor, page_ids: Sequence[int]) -> bytes:
        """Makes `kv_cache[page_ids]` readable by a peer and returns the handle's locator.

        Does not modify kv_cache. What it creates (a segment, a staged buffer) is owned by the
        transport until `release(transfer_id)`. The caller keeps the pages pinned until then.
        """

    @abstractmethod
    def fetch(
        self,
        handle: KVHandle,
        kv_cache: torch.Tensor,
        dst_page_ids: Sequence[int],
        timeout_s: float,
    ) -> None:
        """Copies the handle's pages into `kv_cache[dst_page_ids]`; blocks until DONE.

        Writes only the destination pages. Raises TransferError on any failure, including
        a checksum mismatch or `timeout_s` elapsing; the pages' content is then undefined and
        the caller must free them without using them.
        """

    @abstractmethod
    def release(self, transfer_id: str) -> None:
        """Frees what export() created for transfer_id. Idempotent; unknown ids are ignored."""

    def state(self, transfer_id: str) -> TransferState | None:
        """Source-side state of an exported transfer, None once released or never known."""
        return None

    def num_exported(self) -> int:
        """Source-side transfers exported and not yet released (leak check)."""
        return 0

    def close(self) -> None:
        """Releases every exported transfer and any connection. Safe to call twice."""
        return None
