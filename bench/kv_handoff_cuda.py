"""B1's CUDA arms: the same two processes (bench/kv_handoff_peers.py), both on the one GPU.

  copy_d2d  one contiguous device-to-device copy of the bytes, in the exporting process
  raw_d2d   the raw copy on the handoff's path: the exporter copies a contiguous buffer into a
            staging buffer it shared over CUDA IPC once (at setup), waits for its stream, and
            tells the child over the pipe, which copies the staging buffer out into its own
            contiguous buffer and waits for its stream: two copies and one pipe round trip, as
            the CPU `raw` arm makes through /dev/shm
  cuda_ipc  CudaIpcTransport: export (gather the scattered pages into a fresh buffer, share it)
            + fetch in the child (open the handle, scatter into the scattered destination
            pages, wait for its stream)

A handoff ends with the child's reply, sent after its stream drained, so no device work of
the handoff is left outside the timed region. The exporter times each export call and the
child each fetch call (the fetch's fixed cost — locator, IPC open, copy enqueued, stream
drained — is what B1's launch target bounds, read at 128 tokens where the copy is µs).
"""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from bench.kv_handoff_peers import Config


class CudaArm(enum.StrEnum):
    COPY = "copy_d2d"
    RAW = "raw_d2d"
    IPC = "cuda_ipc"


class CudaOp(enum.Enum):
    SETUP = "setup"
    RAW = "raw"
    FETCH = "fetch"
    TAKE_FETCH_S = "take_fetch_s"


def current_cuda_device() -> torch.device:
    """The GPU both processes use: the same index in each (CUDA IPC opens handles there)."""
    return torch.device("cuda", torch.cuda.current_device())


def contiguous_rows(cache: torch.Tensor, config: Config) -> torch.Tensor:
    """The cache's first num_pages pages as uint8 rows [num_pages, page_nbytes] (a view)."""
    return cache[: config.num_pages].view(torch.uint8).reshape(config.num_pages, -1)


class CudaExporter:
    """The exporting process's CUDA side. `cmd` is the pipe command the child routes to its
    CudaFetcher; every message waits for the child's "done"."""

    def __init__(self, conn: Connection, cmd: Any) -> None:
        from kv_transfer.cuda_ipc import CudaIpcTransport

        self.conn, self.cmd = conn, cmd
        self.transport = CudaIpcTransport()
        self.device = current_cuda_device()
        self.export_s: list[float] = []  # of every cuda_ipc handoff since the last take
        self.serial = 0

    def setup(self, config: Config) -> None:
        from kv_transfer.cuda_ipc import IpcHandle

        self.cache = config.make_cache(self.device)
        self.src_ids, self.dst_ids = config.page_ids(1), config.page_ids(2)
        self.contiguous = contiguous_rows(self.cache, config)
        self.staging = torch.empty_like(self.contiguous)
        self.copy_target = torch.empty_like(self.contiguous)
        self._ask(CudaOp.SETUP, config, IpcHandle.share(self.staging).encode())
        self._drain()

    def handoff(self, arm: CudaArm, config: Config) -> float:
        """Seconds of one handoff of `config`'s pages over `arm`, from a drained device."""
        self._drain()
        if arm == CudaArm.COPY:
            return self._copy_once()
        if arm == CudaArm.RAW:
            return self._handoff_raw()
        return self._handoff_ipc(config)

    def take_times(self) -> tuple[list[float], list[float]]:
        """(export seconds, the child's fetch seconds) of each cuda_ipc handoff since the last
        take, in order; both lists are then cleared."""
        self.conn.send((self.cmd, CudaOp.TAKE_FETCH_S))
        fetch_s = self.conn.recv()
        if not isinstance(fetch_s, list):  # the child's error, in place of the list
            raise RuntimeError(f"B1 fetcher failed: {fetch_s}")
        self._check(self.conn.recv())
        export_s, self.export_s = self.export_s, []
        return export_s, fetch_s

    def close(self) -> None:
        self.transport.close()

    def _copy_once(self) -> float:
        started = time.perf_counter()
        self.copy_target.copy_(self.contiguous)
        self._drain()
        return time.perf_counter() - started

    def _handoff_raw(self) -> float:
        started = time.perf_counter()
        self.staging.copy_(self.contiguous)
        self._drain()  # the child's stream does not wait on ours: the copy must be done first
        self._ask(CudaOp.RAW)
        return time.perf_counter() - started

    def _handoff_ipc(self, config: Config) -> float:
        self.serial += 1
        transfer_id = f"b1-cuda-{self.serial}"
        started = time.perf_counter()
        # no drain: the shared buffer carries an IPC event the child's stream waits on
        locator = self.transport.export(transfer_id, self.cache, self.src_ids)
        exported = time.perf_counter()
        self._ask(CudaOp.FETCH, transfer_id, locator, config, self.src_ids, self.dst_ids)
        elapsed = time.perf_counter() - started
        self.transport.release(transfer_id)
        self.export_s.append(exported - started)
        return elapsed

    def _ask(self, op: CudaOp, *args: Any) -> None:
        self.conn.send((self.cmd, op, *args))
        self._check(self.conn.recv())

    def _check(self, answer: Any) -> None:
        if answer != "done":
            raise RuntimeError(f"B1 fetcher failed: {answer}")

    def _drain(self) -> None:
        torch.cuda.current_stream(self.device).synchronize()


class CudaFetcher:
    """The fetching child's CUDA side: its cache, the opened staging buffer, fetch times."""

    def __init__(self, conn: Connection) -> None:
        from kv_transfer.cuda_ipc import CudaIpcTransport

        self.conn = conn
        self.transport = CudaIpcTransport()
        self.device = current_cuda_device()
        self.fetch_s: list[float] = []

    def handle(self, op: CudaOp, *args: Any) -> None:
        {
            CudaOp.SETUP: self.setup,
            CudaOp.RAW: self.raw,
            CudaOp.FETCH: self.fetch,
            CudaOp.TAKE_FETCH_S: self.take_fetch_s,
        }[op](*args)

    def setup(self, config: Config, staging: bytes) -> None:
        from kv_transfer.cuda_ipc import IpcHandle

        self.cache = config.make_cache(self.device)
        self.contiguous = contiguous_rows(self.cache, config)
        shape = tuple(self.contiguous.shape)
        self.staging = IpcHandle.decode(staging, "b1-staging").open(shape, self.device)
        self._drain()

    def raw(self) -> None:
        self.contiguous.copy_(self.staging)
        self._drain()

    def fetch(self, transfer_id: str, locator: bytes, config: Config, src_ids, dst_ids) -> None:
        from kv_transfer.pages import KVHandle, TransportBackend

        handle = KVHandle(transfer_id, "b1-src", 1, src_ids, config.tokens, config.layout,
                          time.time() + 60, TransportBackend.CUDA_IPC, locator)  # fmt: skip
        started = time.perf_counter()
        self.transport.fetch(handle, self.cache, dst_ids, 30.0)  # ends with its stream drained
        self.fetch_s.append(time.perf_counter() - started)

    def take_fetch_s(self) -> None:
        self.conn.send(self.fetch_s)
        self.fetch_s = []

    def close(self) -> None:
        self.transport.close()

    def _drain(self) -> None:
        torch.cuda.current_stream(self.device).synchronize()
