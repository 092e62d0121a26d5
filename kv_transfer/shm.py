"""Same-node KV transport over POSIX shared memory (plain files under /dev/shm).

One transfer's life, source (exporter) and destination (fetcher) in different processes:
  1. export   take an idle segment from the pool (or create one), gather kv_cache[page_ids]
              straight into its data region (the one copy), then stamp its header token
  2. fetch    map the segment by name (mappings are cached), check the token, copy into
              kv_cache[dst_page_ids] with one indexed copy, check the token again
  3. release  zero the token, so any later fetch of this locator fails; then pool or unlink
  4. close    unlink every segment this transport created

Locator address: token u64 | segment file name (segment format: kv_transfer/shm_segments.py).
Why a token: a pooled segment is reused by later transfers, so a stale locator could otherwise
read another request's KV. It is a seqlock: the writer stamps it after the data (x86-64 keeps
stores in order), the reader checks it before and after copying.
Segments of a process that died are unlinked by the next ShmTransport created on the node.
A CUDA kv cache stages through host memory: export gathers on the device and copies the rows
into the segment; fetch copies them into a pooled pinned buffer, then to the device (one DMA)
and scatters there (cuda_ipc, when both hold it, skips the host).
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from kv_transfer.checksum import (
    Integrity,
    page_index,
    page_rows,
    scatter_rows,
)
from kv_transfer.exports import BufferPool, ExportTable, gather_into, start_fetch
from kv_transfer.pages import KVHandle, TransportBackend
from kv_transfer.shm_segments import (
    DATA_OFFSET,
    SHM_DIR,
    MappingCache,
    Segment,
    SegmentAddress,
    SegmentPool,
    read_header,
    sweep_orphan_segments,
)
from kv_transfer.transport import KVTransport, TransferError, TransferState


class ShmTransport(KVTransport):
    """Shared-memory transport between processes of one node; KV caches on CPU or CUDA.

    pool_bytes bounds the idle segments kept for reuse (0: unlink on release), and apart from
    them the idle pinned buffers a fetcher into a CUDA cache stages through;
    max_mappings bounds the peers' segments a fetcher keeps mapped; checksum_sample_rate is
    the share of transfers checksummed when verify_checksum is on (checksum.Integrity).
    """

    backend = TransportBackend.SHM
    # The segment's token is read before and after the copy; release zeroes it, reuse
    # restamps it: a fetch that returns read the export while it was still held.
    fetch_proves_export_held = True

    def __init__(
        self,
        *,
        verify_checksum: bool = True,
        checksum_sample_rate: float = 1.0,
        pool_bytes: int = 512 << 20,
        max_mappings: int = 64,
        shm_dir: Path = SHM_DIR,
    ) -> None:
        sweep_orphan_segments(shm_dir)
        self.integrity = Integrity(verify_checksum, checksum_sample_rate)
        self._pool = SegmentPool(shm_dir, pool_bytes)
        self._maps = MappingCache(shm_dir, max_mappings)
        self._staging = BufferPool(pool_bytes, pin_memory=True)  # CUDA fetches only
        self._exports: ExportTable[tuple[Segment, int]] = ExportTable()

    @property
    def segment_prefix(self) -> str:
        """File-name prefix of every segment this transport creates (leak checks)."""
        return self._pool.prefix

    def export(self, transfer_id: str, kv_cache: torch.Tensor, page_ids: Sequence[int]) -> bytes:
        self._exports.check_new(transfer_id)
        if not kv_cache.is_contiguous():
            raise ValueError("shm exports need a contiguous kv_cache")
        index = page_index(page_ids, kv_cache.shape[0])
        page_nbytes = kv_cache[0].numel() * kv_cache.element_size()
        nbytes = len(index) * page_nbytes
        segment = self._pool.take(nbytes)
        out = gather_into(kv_cache, index, segment.data[:nbytes].view(len(index), page_nbytes))
        token = segment.publish(nbytes)
        self._exports.add(transfer_id, (segment, token))
        address = SegmentAddress(token, segment.path.name).encode()
        return self.integrity.seal(transfer_id, out, nbytes, address).encode()

    def fetch(
        self,
        handle: KVHandle,
        kv_cache: torch.Tensor,
        dst_page_ids: Sequence[int],
        timeout_s: float,
    ) -> None:
        start = start_fetch(handle, kv_cache, dst_page_ids, timeout_s)
        deadline, locator, dst_index = start.deadline, start.locator, start.dst_index
        address = SegmentAddress.decode(locator.address, handle.transfer_id)
        mapping = self._maps.get(address.name, handle.transfer_id)
        deadline.check(handle.transfer_id)
        self._check_token(mapping, address, locator.nbytes, handle.transfer_id)
        # src: [num_pages, page_nbytes], a read-only view of the segment's data
        src = np.frombuffer(mapping, np.uint8, locator.nbytes, DATA_OFFSET)
        src = self.integrity.received(
            locator, src.reshape(len(dst_page_ids), -1), handle.transfer_id
        )
        self._scatter(kv_cache, dst_index, src)
        self._check_token(mapping, address, locator.nbytes, handle.transfer_id)

    def release(self, transfer_id: str) -> None:
        exported = self._exports.pop(transfer_id)
        if exported is not None:
            self._pool.give_back(exported[0])

    def state(self, transfer_id: str) -> TransferState | None:
        return self._exports.state(transfer_id)

    def num_exported(self) -> int:
        return len(self._exports)

    def close(self) -> None:
        for segment, _ in self._exports.pop_all().values():
            segment.free()
            segment.path.unlink(missing_ok=True)
        self._pool.close()
        self._maps.clear()
        self._staging.clear()

    def check_integrity(self) -> None:
        """Raises AssertionError unless every export is stamped with its token, idle segments
        are stamped free, and exactly those segments exist on disk."""
        exported = self._exports.resources()
        idle_tokens = self._pool.idle_tokens()
        assert all(segment.token() == token for segment, token in exported), "bad export token"
        assert all(token == 0 for token in idle_tokens), "an idle segment is still readable"
        on_disk = self._pool.num_on_disk()
        assert on_disk == len(exported) + len(idle_tokens), f"{on_disk} segment files on disk"

    def _scatter(self, kv_cache: torch.Tensor, dst_index: torch.Tensor, src: np.ndarray) -> None:
        """kv_cache[dst_index] = src, read from the segment before this returns (the token
        check after it proves the rows read were the export's)."""
        # src: [num_pages, page_nbytes] uint8, a read-only view of the segment (or the tap's copy)
        if kv_cache.device.type == "cpu":
            page_rows(kv_cache)[dst_index.numpy()] = src  # scatter_rows, from a numpy view
            return
        buffer = self._staging.take(src.nbytes, torch.device("cpu"))
        try:
            host = buffer[: src.nbytes].view(src.shape)
            host.numpy()[...] = src
            # From pinned memory, .to() returns once the DMA is done: the buffer is free after.
            scatter_rows(kv_cache, dst_index, host.to(kv_cache.device))
            torch.cuda.current_stream(kv_cache.device).synchronize()  # written when it returns
        finally:
            self._staging.give_back(buffer)

    def _check_token(
        self, mapping: mmap.mmap, address: SegmentAddress, nbytes: int, tid: str
    ) -> None:
        if len(mapping) < DATA_OFFSET + nbytes:
            raise TransferError(f"{tid}: segment {address.name} is smaller than the transfer")
        if read_header(mapping) != (address.token, nbytes):
            self._maps.drop(address.name)
            raise TransferError(f"{tid}: the segment was released or reused")
