"""The shared-memory segments behind ShmTransport: their file format, the exporter's pool of
them, the fetcher's cache of mappings, and the sweep of segments whose process died.

Segment file (/dev/shm/pdserve-kv-<pid>-<instance>-<serial>):
    bytes [0, 16)        token u64 | nbytes u64    (token 0: free, readable by no locator)
    bytes [4096, ...)    data: [num_pages, num_layers, 2, page_size, num_kv_heads, head_dim]

Why pool segments: a fresh tmpfs segment page-faults on first touch at ~1.2 GB/s on these
VMs, and mapping one costs about as much, while a warm one copies at 6-20 GB/s; so segments
are reused and the fetcher keeps its mappings. The exporter alone creates and unlinks
segments, the fetcher only maps them, and neither goes through multiprocessing's
resource_tracker, so nothing is unlinked or reported behind the owner's back.
"""

from __future__ import annotations

import mmap
import os
import re
import secrets
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from itertools import count
from pathlib import Path

import torch

from kv_transfer.transport import TransferError

SHM_DIR = Path("/dev/shm")
SEGMENT_PREFIX = "pdserve-kv-"
DATA_OFFSET = 4096  # the header gets its own page so the data stays page-aligned
_HEADER = struct.Struct("<QQ")
_TOKEN = struct.Struct("<Q")
_NAME_RE = re.compile(rf"{SEGMENT_PREFIX}(\d+)-[0-9a-f]{{8}}-\d+")  # used with fullmatch
_MIN_CAPACITY = 1 << 16


def read_header(mapping: mmap.mmap) -> tuple[int, int]:
    """(token, nbytes) of a mapped segment."""
    return _HEADER.unpack_from(mapping, 0)


@dataclass(slots=True)
class Segment:
    """One exporter-owned segment, mapped read-write for as long as it exists."""

    path: Path
    capacity: int  # data bytes, a power of two
    mapping: mmap.mmap
    data: torch.Tensor  # uint8 [capacity] over the mapping's data region

    @classmethod
    def create(cls, path: Path, capacity: int) -> Segment:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, DATA_OFFSET + capacity)
            mapping = mmap.mmap(fd, DATA_OFFSET + capacity)
        except BaseException:
            path.unlink()
            raise
        finally:
            os.close(fd)
        data = torch.frombuffer(mapping, dtype=torch.uint8, count=capacity, offset=DATA_OFFSET)
        return cls(path, capacity, mapping, data)

    def publish(self, nbytes: int) -> int:
        """Stamps a fresh token (never 0) once the data is written; returns it."""
        token = secrets.randbits(64) | 1
        _HEADER.pack_into(self.mapping, 0, token, nbytes)
        return token

    def free(self) -> None:
        """Makes the segment readable by no locator."""
        _HEADER.pack_into(self.mapping, 0, 0, 0)

    def token(self) -> int:
        return read_header(self.mapping)[0]


class SegmentPool:
    """The exporter's idle segments by capacity, at most `pool_bytes` of them; owns their files."""

    def __init__(self, directory: Path, pool_bytes: int) -> None:
        self.prefix = f"{SEGMENT_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-"
        self._dir = directory
        self._pool_bytes = pool_bytes
        self._idle: dict[int, list[Segment]] = {}
        self._idle_bytes = 0
        self._serial = count()
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> Segment:
        capacity = max(_MIN_CAPACITY, 1 << (nbytes - 1).bit_length())
        with self._lock:
            idle = self._idle.get(capacity)
            if idle:
                self._idle_bytes -= capacity
                return idle.pop()
        return Segment.create(self._dir / f"{self.prefix}{next(self._serial)}", capacity)

    def give_back(self, segment: Segment) -> None:
        segment.free()
        with self._lock:
            if self._idle_bytes + segment.capacity <= self._pool_bytes:
                self._idle.setdefault(segment.capacity, []).append(segment)
                self._idle_bytes += segment.capacity
                return
        segment.path.unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            idle = [segment for segments in self._idle.values() for segment in segments]
            self._idle.clear()
            self._idle_bytes = 0
        for segment in idle:
            segment.path.unlink(missing_ok=True)

    def idle_tokens(self) -> list[int]:
        return [segment.token() for segments in self._idle.values() for segment in segments]

    def num_on_disk(self) -> int:
        return len(list(self._dir.glob(f"{self.prefix}*")))


class MappingCache:
    """The fetcher's read-only mappings of peers' segments, by name, least recently used first.

    Mappings are never closed explicitly: a concurrent fetch may still hold a view, so an
    evicted mapping is unmapped when its last view dies.
    """

    def __init__(self, directory: Path, max_mappings: int) -> None:
        self._dir = directory
        self._max = max_mappings
        self._maps: OrderedDict[str, mmap.mmap] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str, transfer_id: str) -> mmap.mmap:
        with self._lock:
            if name in self._maps:
                self._maps.move_to_end(name)
                return self._maps[name]
        mapping = self._open(name, transfer_id)
        with self._lock:
            self._forget_unlinked()
            self._maps[name] = mapping
            while len(self._maps) > self._max:
                self._maps.popitem(last=False)
        return mapping

    def drop(self, name: str) -> None:
        with self._lock:
            self._maps.pop(name, None)

    def clear(self) -> None:
        with self._lock:
            self._maps.clear()

    def _open(self, name: str, transfer_id: str) -> mmap.mmap:
        try:
            fd = os.open(self._dir / name, os.O_RDONLY)
        except FileNotFoundError:
            raise TransferError(f"{transfer_id}: segment {name} is gone (released)") from None
        try:
            return mmap.mmap(fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        except (OSError, ValueError) as exc:
            raise TransferError(f"{transfer_id}: cannot map segment {name}: {exc}") from exc
        finally:
            os.close(fd)

    def _forget_unlinked(self) -> None:
        # An unlinked segment's memory lives on while mapped: let go of it.
        for name in [name for name in self._maps if not (self._dir / name).exists()]:
            del self._maps[name]


def sweep_orphan_segments(directory: Path = SHM_DIR) -> int:
    """Unlinks segments whose creating process is gone (killed before close); returns how many.

    Assumes the processes sharing `directory` share one pid namespace (one node or container).
    """
    swept = 0
    for path in directory.glob(f"{SEGMENT_PREFIX}*"):
        match = _NAME_RE.fullmatch(path.name)
        if match and not _pid_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            swept += 1
    return swept


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    return True


@dataclass(frozen=True, slots=True)
class SegmentAddress:
    """Where an exported buffer lives: the segment's file name and the token it must carry."""

    token: int
    name: str

    def encode(self) -> bytes:
        return _TOKEN.pack(self.token) + self.name.encode()

    @classmethod
    def decode(cls, raw: bytes, transfer_id: str) -> SegmentAddress:
        """Checks the name too: it comes from a peer and becomes a path."""
        name = raw[_TOKEN.size :].decode(errors="replace")
        if len(raw) <= _TOKEN.size or not _NAME_RE.fullmatch(name):
            raise TransferError(f"{transfer_id}: malformed shm locator")
        return cls(_TOKEN.unpack_from(raw)[0], name)
