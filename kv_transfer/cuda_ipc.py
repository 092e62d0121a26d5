"""Same-node GPU KV transport over CUDA IPC: device to device, no host staging. Works between
two processes sharing one GPU.

One transfer:
  1. export   gather kv_cache[page_ids] into a fresh device buffer (one index_select) and
              share its allocation (torch.multiprocessing.reductions.reduce_tensor); the
              handle's fields are encoded explicitly into the locator (struct, never pickle)
  2. fetch    rebuild the tensor from those fields (torch caches opened IPC handles and waits
              on the exporter's event), copy it into kv_cache[dst_page_ids] with one
              index_copy_, drop it
  3. release  drop the buffer: torch's IPC ref-counting keeps the allocation alive while a
              consumer still holds it

The fetcher opens the handle on its own kv_cache's device, so both processes must see the GPU
under the same index. An export that is never fetched stays in torch's IPC limbo until the
exporting process exits: its ref counter waits for a consumer that never came.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.multiprocessing.reductions import rebuild_cuda_tensor, reduce_tensor

from kv_transfer.checksum import (
    Locator,
    checksum_if,
    gather_rows,
    page_index,
    scatter_rows,
    verify_checksum,
)
from kv_transfer.exports import ExportTable, start_fetch
from kv_transfer.pages import KVHandle, TransportBackend
from kv_transfer.transport import KVTransport, TransferError, TransferState

# tensor offset, storage bytes, storage offset bytes, ref-counter offset, event sync required
_FIXED = struct.Struct("<qqqq?")
_BLOB_LEN = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class IpcHandle:
    """The fields of reduce_tensor's CUDA rebuild arguments that vary by allocation."""

    tensor_offset: int
    storage_size_bytes: int
    storage_offset_bytes: int
    ref_counter_offset: int
    event_sync_required: bool
    storage_handle: bytes
    ref_counter_handle: bytes
    event_handle: bytes

    @classmethod
    def share(cls, rows: torch.Tensor) -> IpcHandle:
        _, args = reduce_tensor(rows)
        # args: (tensor_cls, size, stride, tensor_offset, storage_cls, dtype, device,
        #        storage_handle, storage_size_bytes, storage_offset_bytes, requires_grad,
        #        ref_counter_handle, ref_counter_offset, event_handle, event_sync_required)
        return cls(args[3], args[8], args[9], args[12], args[14], args[7], args[11], args[13])

    def encode(self) -> bytes:
        fixed = _FIXED.pack(
            self.tensor_offset,
            self.storage_size_bytes,
            self.storage_offset_bytes,
            self.ref_counter_offset,
            self.event_sync_required,
        )
        blobs = (self.storage_handle, self.ref_counter_handle, self.event_handle or b"")
        return fixed + b"".join(_BLOB_LEN.pack(len(blob)) + blob for blob in blobs)

    @classmethod
    def decode(cls, raw: bytes, transfer_id: str) -> IpcHandle:
        try:
            fixed = _FIXED.unpack_from(raw)
            blobs, offset = [], _FIXED.size
            for _ in range(3):
                (length,) = _BLOB_LEN.unpack_from(raw, offset)
                blobs.append(raw[offset + _BLOB_LEN.size : offset + _BLOB_LEN.size + length])
                offset += _BLOB_LEN.size + length
        except struct.error as exc:
            raise TransferError(f"{transfer_id}: malformed cuda_ipc locator") from exc
        if offset != len(raw):
            raise TransferError(f"{transfer_id}: malformed cuda_ipc locator")
        return cls(*fixed, *blobs)

    def open(self, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
        """The exporter's rows [num_pages, page_nbytes] as a tensor of this process."""
        return rebuild_cuda_tensor(
            torch.Tensor,
            torch.Size(shape),
            (shape[1], 1),
            self.tensor_offset,
            torch.storage.TypedStorage,
            torch.uint8,
            device.index,
            self.storage_handle,
            self.storage_size_bytes,
            self.storage_offset_bytes,
            False,
            self.ref_counter_handle,
            self.ref_counter_offset,
            self.event_handle,
            self.event_sync_required,
        )


class CudaIpcTransport(KVTransport):
    """CUDA IPC between processes on one node; CUDA kv caches only."""

    backend = TransportBackend.CUDA_IPC

    def __init__(self, *, verify_checksum: bool = False) -> None:
        # verify_checksum hashes a host copy of every buffer on both sides: a debugging aid here.
        self._verify = verify_checksum
        self._exports: ExportTable[torch.Tensor] = ExportTable()

    def export(self, transfer_id: str, kv_cache: torch.Tensor, page_ids: Sequence[int]) -> bytes:
        self._exports.check_new(transfer_id)
        _check_cuda(kv_cache, transfer_id)
        rows = gather_rows(kv_cache, page_index(page_ids, kv_cache.shape[0]))
        checksum = checksum_if(self._verify, rows)
        address = IpcHandle.share(rows).encode()
        self._exports.add(transfer_id, rows)
        return Locator(rows.numel(), checksum, address).encode()

    def fetch(
        self,
        handle: KVHandle,
        kv_cache: torch.Tensor,
        dst_page_ids: Sequence[int],
        timeout_s: float,
    ) -> None:
        start = start_fetch(handle, kv_cache, dst_page_ids, timeout_s)
        locator, dst_index = start.locator, start.dst_index
        _check_cuda(kv_cache, handle.transfer_id)
        ipc = IpcHandle.decode(locator.address, handle.transfer_id)
        shape = (len(dst_page_ids), handle.layout.page_nbytes)
        try:
            rows = ipc.open(shape, kv_cache.device)
        except RuntimeError as exc:  # a released or foreign handle fails to open
            raise TransferError(f"{handle.transfer_id}: cannot open the IPC handle: {exc}") from exc
        if self._verify:
            verify_checksum(locator, rows, handle.transfer_id)
        scatter_rows(kv_cache, dst_index, rows)
        torch.cuda.current_stream(kv_cache.device).synchronize()

    def release(self, transfer_id: str) -> None:
        self._exports.pop(transfer_id)

    def state(self, transfer_id: str) -> TransferState | None:
        return self._exports.state(transfer_id)

    def num_exported(self) -> int:
        return len(self._exports)

    def close(self) -> None:
        self._exports.pop_all()


def _check_cuda(kv_cache: torch.Tensor, transfer_id: str) -> None:
    if kv_cache.device.type != "cuda":
        raise TransferError(f"{transfer_id}: cuda_ipc moves CUDA kv caches only")
