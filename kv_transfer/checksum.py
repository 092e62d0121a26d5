"""What every KV transport backend shares: the locator envelope with its checksum, and the
checks that a destination matches what was promised (deadlines, buffers and the source-side
export table: kv_transfer/exports.py).

A locator is the backend's address of one exported buffer, wrapped in an envelope that also
carries the buffer's size and (when the source computed one) its xxh3_64 checksum, so the
checksum travels inside `KVHandle.locator` and `export()` keeps its signature:

    envelope: magic "PDK1" | flags u8 | 3 pad | nbytes u64 | checksum u64 | address bytes

`Integrity` is one transport's checksum policy on both halves: what export seals into the
envelope, what fetch verifies before it copies.

Locators cross a process boundary, so they are plain structs, never pickle, and every field
read from one is checked before it is used.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import xxhash

from kv_transfer.pages import KVHandle, KVLayout
from kv_transfer.transport import TransferError, TransferFailure

_MAGIC = b"PDK1"
_ENVELOPE = struct.Struct("<4sB3xQQ")
_HAS_CHECKSUM = 1
_SAMPLED_OUT = 2  # the source skipped this transfer's checksum by sampling, not by policy

Buffer = np.ndarray | torch.Tensor
ReceiveTap = Callable[[str, Buffer], Buffer]


@dataclass(frozen=True, slots=True)
class Locator:
    """One exported buffer: its size, its checksum (None when not computed), its address;
    `sampled_out` when the source checksums only a sample of transfers and skipped this one."""

    nbytes: int
    checksum: int | None
    address: bytes
    sampled_out: bool = False

    def encode(self) -> bytes:
        flags = _HAS_CHECKSUM if self.checksum is not None else 0
        flags |= _SAMPLED_OUT if self.sampled_out else 0
        header = _ENVELOPE.pack(_MAGIC, flags, self.nbytes, self.checksum or 0)
        return header + self.address

    @classmethod
    def decode(cls, raw: bytes) -> Locator:
        """Raises TransferError when `raw` is not a locator this version wrote."""
        if len(raw) < _ENVELOPE.size or raw[:4] != _MAGIC:
            raise TransferError("malformed KV locator")
        _, flags, nbytes, checksum = _ENVELOPE.unpack_from(raw)
        has_checksum = bool(flags & _HAS_CHECKSUM)
        checksum = checksum if has_checksum else None
        return cls(nbytes, checksum, raw[_ENVELOPE.size :], bool(flags & _SAMPLED_OUT))


def buffer_checksum(buffer: np.ndarray | torch.Tensor) -> int:
    """xxh3_64 of the buffer's bytes in memory order; a device tensor is hashed from a host copy."""
    if isinstance(buffer, torch.Tensor):
        buffer = page_rows(buffer.cpu() if buffer.device.type != "cpu" else buffer)
    return xxhash.xxh3_64_intdigest(buffer)


def checksum_if(enabled: bool, buffer: np.ndarray | torch.Tensor) -> int | None:
    return buffer_checksum(buffer) if enabled else None


def verify_checksum(locator: Locator, buffer: np.ndarray | torch.Tensor, transfer_id: str) -> None:
    """Fails closed: a source that sent no checksum fails verification too, unless it says it
    sampled this transfer out."""
    if locator.sampled_out:
        return
    if locator.checksum is None:
        raise TransferError(f"{transfer_id}: the source sent no checksum", TransferFailure.CHECKSUM)
    if buffer_checksum(buffer) != locator.checksum:
        raise TransferError(
            f"{transfer_id}: checksum mismatch, the KV buffer is corrupt", TransferFailure.CHECKSUM
        )


@dataclass(slots=True)
class Integrity:
    """One transport's checksum policy, used by both of its halves.

    Export: `seal` puts the buffer's xxh3 in its locator when `verify` is on and the transfer
    is in the sample: a share `sample_rate` of transfer ids, picked by their hash, so both
    halves and a rerun agree. A sampled-out locator says so and carries no checksum.
    Fetch: `received` runs what arrived through `tap`, then verifies it unless `verify` is off
    or the source sampled it out; the caller copies the buffer it returns, never the one it
    passed. `tap` is for chaos testing only (kv_transfer/faults.py corrupts bytes there, where
    the real verification must catch them); None in production.
    """

    verify: bool = True
    sample_rate: float = 1.0
    tap: ReceiveTap | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ValueError(f"checksum_sample_rate: {self.sample_rate} is not in [0, 1]")

    def is_sampled(self, transfer_id: str) -> bool:
        if self.sample_rate >= 1.0:
            return True
        return xxhash.xxh3_64_intdigest(transfer_id.encode()) < self.sample_rate * 2**64

    def seal(self, transfer_id: str, buffer: Buffer, nbytes: int, address: bytes) -> Locator:
        """The locator of an exported buffer; call it once the buffer holds what is sent."""
        if not self.verify:
            return Locator(nbytes, None, address)
        if not self.is_sampled(transfer_id):
            return Locator(nbytes, None, address, sampled_out=True)
        return Locator(nbytes, buffer_checksum(buffer), address)

    def received(self, locator: Locator, buffer: Buffer, transfer_id: str) -> Buffer:
        """The buffer to copy into the destination, checked; raises TransferError (reason
        CHECKSUM) on a mismatch, before anything was copied."""
        if self.tap is not None:
            buffer = self.tap(transfer_id, buffer)
        if not self.verify:
            return buffer
        if locator.sampled_out and self.is_sampled(transfer_id):
            # The peer's word alone never turns verification off: this worker samples it.
            raise TransferError(
                f"{transfer_id}: no checksum for a transfer in this worker's sample",
                TransferFailure.CHECKSUM,
            )
        verify_checksum(locator, buffer, transfer_id)
        return buffer


def page_rows(kv: torch.Tensor) -> np.ndarray:
    """A uint8 view [num_pages, page_nbytes] of a contiguous CPU tensor, sharing its memory."""
    # kv: [num_pages, num_layers, 2, page_size, num_kv_heads, head_dim] (or any [n, ...])
    return kv.view(kv.shape[0], -1).view(torch.uint8).numpy()


def gather_rows(
    kv_cache: torch.Tensor, index: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """kv_cache[index] as uint8 rows [len(index), page_nbytes] (into `out` if given), one
    indexed copy."""
    # kv_cache: [num_pages, num_layers, 2, page_size, num_kv_heads, head_dim], contiguous
    kv_rows = kv_cache.view(kv_cache.shape[0], -1).view(torch.uint8)
    if out is None:
        out = kv_rows.new_empty((len(index), kv_rows.shape[1]))
    return torch.index_select(kv_rows, 0, index.to(kv_cache.device), out=out)


def scatter_rows(kv_cache: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> None:
    """kv_cache[index] = rows, one indexed copy; on CPU numpy's, which runs at memcpy speed
    where torch's index_copy_ reaches half of it."""
    # kv_cache: [num_pages, ...page]; rows: uint8 [len(index), page_nbytes]
    if kv_cache.device.type == "cpu":
        page_rows(kv_cache)[index.numpy()] = rows.numpy()
    else:
        kv_rows = kv_cache.view(kv_cache.shape[0], -1).view(torch.uint8)
        kv_rows.index_copy_(0, index.to(kv_cache.device), rows)


def torch_dtype(layout: KVLayout) -> torch.dtype:
    return getattr(torch, layout.dtype)


def buffer_shape(layout: KVLayout, num_pages: int) -> tuple[int, ...]:
    """[num_pages, num_layers, 2, page_size, num_kv_heads, head_dim], the transport.py layout."""
    return (num_pages, layout.num_layers, 2, layout.page_size, layout.num_kv_heads, layout.head_dim)


def page_index(page_ids: Sequence[int], num_pages: int) -> torch.Tensor:
    """The ids as an int64 index; ValueError when empty or out of [0, num_pages)."""
    index = torch.as_tensor(list(page_ids), dtype=torch.int64)
    if index.numel() == 0:
        raise ValueError("page_ids must not be empty")
    if int(index.min()) < 0 or int(index.max()) >= num_pages:
        raise ValueError(f"page_ids must lie in [0, {num_pages})")
    return index


def check_destination(
    handle: KVHandle, locator: Locator, kv_cache: torch.Tensor, dst_page_ids: Sequence[int]
) -> torch.Tensor:
    """The destination index, after checking that kv_cache, the pages and the sizes all match
    the handle; raises TransferError before anything is written otherwise."""
    expected = buffer_shape(handle.layout, kv_cache.shape[0])
    if tuple(kv_cache.shape) != expected or kv_cache.dtype != torch_dtype(handle.layout):
        raise TransferError(f"{handle.transfer_id}: kv_cache does not match the handle's layout")
    if not kv_cache.is_contiguous():
        raise TransferError(f"{handle.transfer_id}: kv_cache must be contiguous")
    if len(dst_page_ids) != len(handle.page_ids) or len(set(dst_page_ids)) != len(dst_page_ids):
        raise TransferError(f"{handle.transfer_id}: need {len(handle.page_ids)} distinct pages")
    if locator.nbytes != handle.nbytes:
        raise TransferError(f"{handle.transfer_id}: locator size differs from the handle's")
    try:
        return page_index(dst_page_ids, kv_cache.shape[0])
    except ValueError as exc:
        raise TransferError(f"{handle.transfer_id}: {exc}") from exc
