"""Torch-free KV vocabulary shared by the router, the workers and the index.

`page_hashes` is the one chain hash of full pages: router, workers and the prefix index must
agree on it bit for bit, so its golden values are pinned by a test.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import xxhash

_DTYPE_NBYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class Role(enum.StrEnum):
    PREFILL = "prefill"
    DECODE = "decode"
    BOTH = "both"


class TransportBackend(enum.StrEnum):
    SHM = "shm"
    GLOO = "gloo"
    LOCAL = "local"
    CUDA_IPC = "cuda_ipc"
    NCCL = "nccl"
    TCP = "tcp"


def known_backends(names: Iterable[str]) -> frozenset[TransportBackend]:
    """The backends named that this version knows; a newer peer's others are skipped (it can
    still pair over the ones both know), so a rolling upgrade never breaks on a new name."""
    known = {backend.value for backend in TransportBackend}
    return frozenset(TransportBackend(name) for name in names if name in known)


class TransferDirection(enum.StrEnum):
    EXPORT = "export"  # the source side: pages made readable by a peer
    FETCH = "fetch"  # the destination side: pages copied in from a peer


@dataclass(frozen=True, slots=True)
class KVLayout:
    """Shape of one worker's KV cache; two workers may pair only if their layouts are equal."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    page_size: int
    dtype: str  # float32 | bfloat16 | float16

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPE_NBYTES:
            raise ValueError(f"KVLayout.dtype: unsupported {self.dtype!r}")
        if min(self.num_layers, self.num_kv_heads, self.head_dim, self.page_size) < 1:
            raise ValueError(f"KVLayout: every dimension must be >= 1, got {self}")

    @property
    def page_nbytes(self) -> int:
        """Bytes of K and V for one page across all layers."""
        elems = 2 * self.num_layers * self.page_size * self.num_kv_heads * self.head_dim
        return elems * _DTYPE_NBYTES[self.dtype]

    def num_pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)


@dataclass(frozen=True, slots=True)
class KVHandle:
    """Names a request's KV pages pinned on a prefill worker under a lease.

    The source worker owns the pages until the destination acks (ReleaseLease) or the lease
    expires; a handle from an older epoch of the source is invalid.
    """

    transfer_id: str
    src_worker_id: str
    src_epoch: int
    page_ids: tuple[int, ...]
    num_tokens: int
    layout: KVLayout
    lease_expiry_unix_s: float
    backend: TransportBackend
    locator: bytes = b""
    checksum: int = 0

    @property
    def nbytes(self) -> int:
        return len(self.page_ids) * self.layout.page_nbytes


def chain_hash(prev: bytes, page_tokens: list[int] | np.ndarray) -> bytes:
    """One link of the page hash chain: xxh3_128(prev ‖ tokens as int32 little-endian)."""
    return xxhash.xxh3_128_digest(prev + np.asarray(page_tokens, dtype="<i4").tobytes())


def page_hashes(token_ids: list[int] | np.ndarray, page_size: int) -> list[bytes]:
    """Chain hash of each full page: h_i = chain_hash(h_{i-1}, tokens_i), h_{-1} = b"".

    The trailing partial page has no hash: only full pages are shared or indexed.
    """
    tokens = np.asarray(token_ids, dtype="<i4")
    hashes: list[bytes] = []
    prev = b""
    for start in range(0, len(tokens) - page_size + 1, page_size):
        prev = chain_hash(prev, tokens[start : start + page_size])
        hashes.append(prev)
    return hashes
