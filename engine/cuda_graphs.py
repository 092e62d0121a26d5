"""Decode steps replayed from CUDA graphs, one graph per batch-size bucket.

A decode step of B sequences runs the graph of the smallest captured size >= B; rows past B
are padding (slot -1: no K/V written; context 0: attention writes zeros) and their logits are
dropped. Every input lives in one static int32 device buffer per bucket, filled by one
host-to-device copy per step, so the step reads nothing from the host: the only sync left is
the sampler reading the logits (and, before a bucket's host buffer is refilled, the end of
its previous copy).

Lifecycle: DecodeGraphs(...) captures every size at once (largest first, one shared memory
pool) after one eager warm-up each, which also compiles the Triton kernels; run() replays;
the graphs live as long as the runner and its kv_cache. With capture=False (a CPU, the tests)
run() executes the same static-buffer step eagerly, so padding and buffers are checked
without a GPU. Not thread-safe: the runner's one thread calls run().
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from engine.attention.triton import TritonAttentionBackend, TritonAttentionMetadata
from engine.batch import ForwardBatch
from engine.model import CausalLM, StepInputs

_FIELDS = 4  # token id, position, slot, context length; then the block table row


@dataclass(slots=True)
class _Bucket:
    """One batch size's static buffers and, once captured, its graph."""

    size: int
    host: torch.Tensor  # [size * (_FIELDS + max_pages)] int32 (pinned on CUDA)
    device_rows: torch.Tensor  # the same on the device; the views below read it
    inputs: StepInputs
    metadata: TritonAttentionMetadata
    copied: torch.cuda.Event | None = None  # on CUDA: the last host→device copy's end
    graph: torch.cuda.CUDAGraph | None = None
    logits: torch.Tensor | None = None  # [size, vocab_size] float32, the graph's output


class DecodeGraphs:
    def __init__(
        self,
        model: CausalLM,
        kv_cache: torch.Tensor,
        attn: TritonAttentionBackend,
        sizes: Sequence[int],
        max_pages: int,
        capture: bool,
    ) -> None:
        if not sizes or min(sizes) < 1:
            raise ValueError(f"cuda_graph_batch_sizes: positive sizes needed, got {sizes!r}")
        self.model, self.kv_cache, self.attn = model, kv_cache, attn
        self.max_pages = max_pages
        self._buckets = [self._bucket(size) for size in sorted(set(sizes))]
        if capture:
            pool = None
            for bucket in reversed(self._buckets):
                pool = self._capture(bucket, pool)

    @property
    def sizes(self) -> list[int]:
        return [bucket.size for bucket in self._buckets]

    def run(self, batch: ForwardBatch) -> torch.Tensor | None:
        """The step's logits [num_seqs, vocab_size] (valid until the next run), or None when the
        batch is not a decode step a bucket holds: then the caller runs it eagerly."""
        bucket = self._bucket_for(batch)
        if bucket is None:
            return None
        self._fill(bucket, batch)
        if bucket.graph is None:
            logits = self._step(bucket)
        else:
            bucket.graph.replay()
            logits = bucket.logits
        return logits[: batch.num_seqs]

    def _bucket_for(self, batch: ForwardBatch) -> _Bucket | None:
        if batch.num_tokens != batch.num_seqs:
            return None  # some sequence brings more than one token: not a decode step
        if max(len(table) for table in batch.block_tables) > self.max_pages:
            return None
        return next((b for b in self._buckets if b.size >= batch.num_seqs), None)

    def _bucket(self, size: int) -> _Bucket:
        device = self.kv_cache.device
        length = size * (_FIELDS + self.max_pages)
        host = torch.zeros(length, dtype=torch.int32, pin_memory=device.type == "cuda")
        rows = torch.zeros(length, dtype=torch.int32, device=device)
        token_ids, positions, slots, seq_lens = rows[: _FIELDS * size].view(_FIELDS, size)
        arange = torch.arange(size + 1, dtype=torch.int32, device=device)
        metadata = TritonAttentionMetadata(
            slot_mapping=slots,
            block_tables=rows[_FIELDS * size :].view(size, self.max_pages),
            seq_lens=seq_lens,
            query_start_loc=arange,
            max_query_len=1,
        )
        inputs = StepInputs(token_ids, positions, arange[:-1])
        copied = torch.cuda.Event() if device.type == "cuda" else None
        return _Bucket(size, host, rows, inputs, metadata, copied)

    def _fill(self, bucket: _Bucket, batch: ForwardBatch) -> None:
        """Writes the batch into the bucket's host buffer, padding the rest, and copies what
        the step reads over. Table entries past a sequence's pages are never read, so they are
        neither cleared nor copied. The host buffer is reused once its last copy has ended
        (a step whose logits nobody read has not waited for it)."""
        if bucket.copied is not None:
            bucket.copied.synchronize()
        size, count = bucket.size, batch.num_seqs
        fields = bucket.host[: _FIELDS * size].view(_FIELDS, size)
        fields.zero_()
        fields[2, :] = -1
        fields[0, :count] = batch.token_ids
        fields[1, :count] = batch.positions
        fields[2, :count] = batch.slot_mapping
        fields[3, :count] = torch.tensor(batch.seq_lens, dtype=torch.int32)
        width = max(len(table) for table in batch.block_tables)
        padded = [table + [0] * (width - len(table)) for table in batch.block_tables]
        tables = bucket.host[_FIELDS * size :].view(size, self.max_pages)
        tables[:count, :width] = torch.tensor(padded, dtype=torch.int32)
        used = _FIELDS * size + count * self.max_pages
        bucket.device_rows[:used].copy_(bucket.host[:used], non_blocking=True)
        if bucket.copied is not None:
            bucket.copied.record()

    def _step(self, bucket: _Bucket) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.step(bucket.inputs, self.kv_cache, self.attn, bucket.metadata)

    def _capture(self, bucket: _Bucket, pool: object) -> object:
        """Warms the bucket up eagerly (a dummy step of context 1 writing nothing), then
        captures it; returns the memory pool for the next capture to share."""
        host = bucket.host[: _FIELDS * bucket.size].view(_FIELDS, bucket.size)
        host.zero_()
        host[2, :] = -1  # write no K/V
        host[3, :] = 1  # attend to slot 0 of page 0: any finite value
        bucket.device_rows.copy_(bucket.host)
        self._step(bucket)
        torch.cuda.synchronize(self.kv_cache.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            bucket.logits = self._step(bucket)
        bucket.graph = graph
        return graph.pool()
