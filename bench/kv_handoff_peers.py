"""The two processes of a KV handoff benchmark (B1): this one exports, a spawned child fetches.

Each is pinned to its own core with one torch thread; they talk over one pipe. Every arm moves
the same pages of the same cache, so arms differ only in how the bytes travel. With
`Exporter(cuda=True)` both sides also hold CUDA caches on the one GPU for the CUDA arms
(bench/kv_handoff_cuda.py), whose messages travel under Cmd.CUDA.
"""

from __future__ import annotations

import enum
import mmap
import multiprocessing
import os
import random
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed

from bench.common import pin_to_core
from bench.kv_handoff_cuda import CudaArm, CudaExporter, CudaFetcher

SHM_DIR = Path("/dev/shm")


class Cmd(enum.Enum):
    SETUP = "setup"
    FETCH = "fetch"
    RAW = "raw"
    GLOO_INIT = "gloo_init"
    CUDA = "cuda"  # routed to the child's CudaFetcher
    STOP = "stop"


class Arm(enum.StrEnum):
    RAW = "raw"
    SHM = "shm"
    SHM_NO_CHECKSUM = "shm_nock"
    GLOO = "gloo"
    TCP = "tcp"


@dataclass(frozen=True, slots=True)
class Config:
    tokens: int
    page_size: int

    @property
    def layout(self):
        from kv_transfer.pages import KVLayout

        return KVLayout(30, 3, 64, self.page_size, "bfloat16")

    @property
    def num_pages(self) -> int:
        return self.layout.num_pages_for(self.tokens)

    @property
    def nbytes(self) -> int:
        return self.num_pages * self.layout.page_nbytes

    def page_ids(self, seed: int) -> tuple[int, ...]:
        """Scattered ids in a cache twice the transfer's size."""
        return tuple(random.Random(seed).sample(range(2 * self.num_pages), self.num_pages))

    def make_cache(self, device: torch.device | str = "cpu") -> torch.Tensor:
        from kv_transfer.checksum import buffer_shape

        shape = buffer_shape(self.layout, 2 * self.num_pages)
        cache = torch.empty(shape, dtype=torch.bfloat16, device=device)
        cache.view(torch.uint8).random_()  # touches every page, so no arm pays first faults
        return cache

    def repeats(self, quick: bool) -> int:
        """Small transfers are noisier and cheaper: they get more rounds."""
        small = self.nbytes < 16 << 20
        return (10 if small else 3) if quick else (20 if small else 5)


class Exporter:
    """This process's side: the source caches and transports, and the fetching child."""

    def __init__(self, cuda: bool = False) -> None:
        from kv_transfer.shm import ShmTransport
        from kv_transfer.tcp import TcpSettings, TcpTransport
        from kv_transfer.tcp_server import TcpEndpoint

        context = multiprocessing.get_context("spawn")
        self.conn, child_conn = context.Pipe()
        self.child = context.Process(target=_serve, args=(child_conn,), daemon=True)
        self.child.start()
        self.shm = {
            True: ShmTransport(verify_checksum=True),
            False: ShmTransport(verify_checksum=False),
        }
        self.gloo = None
        self.tcp = TcpTransport(TcpSettings(listen=TcpEndpoint("127.0.0.1")))
        self.raw_path = SHM_DIR / f"pdserve-bench-{os.getpid()}"
        self.serial = 0
        self.cuda = CudaExporter(self.conn, Cmd.CUDA) if cuda else None

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._ask(Cmd.STOP)
            self.child.join(timeout=30)
        finally:  # the segments are on /dev/shm, in memory: never leave them behind
            self.raw_path.unlink(missing_ok=True)
            for transport in (*self.shm.values(), self.tcp):
                transport.close()
            if self.cuda is not None:
                self.cuda.close()
            if self.gloo is not None:
                self.gloo.close()
                torch.distributed.destroy_process_group()

    def setup(self, config: Config) -> None:
        self.cache = config.make_cache()
        self.src_ids, self.dst_ids = config.page_ids(1), config.page_ids(2)
        self.contiguous = self.cache[: config.num_pages].view(torch.uint8).numpy().reshape(-1)
        self.raw = _map_file(self.raw_path, config.nbytes, create=True)
        self._ask(Cmd.SETUP, config)
        if self.cuda is not None:
            self.cuda.setup(config)

    def handoff(self, arm: Arm | CudaArm, config: Config) -> float:
        """Seconds of one handoff of `config`'s pages over `arm`."""
        if isinstance(arm, CudaArm):
            return self.cuda.handoff(arm, config)
        if arm == Arm.RAW:
            return self.handoff_raw(config)
        if arm == Arm.GLOO:
            return self.handoff_gloo(config)
        if arm == Arm.TCP:
            return self.handoff_tcp(config)
        return self.handoff_shm(config, verify=arm == Arm.SHM)

    def handoff_raw(self, config: Config) -> float:
        started = time.perf_counter()
        np.copyto(self.raw[: config.nbytes], self.contiguous)
        self._ask(Cmd.RAW, self.raw_path.name, config.nbytes)
        return time.perf_counter() - started

    def handoff_shm(self, config: Config, verify: bool) -> float:
        transfer_id = self._next_id()
        started = time.perf_counter()
        locator = self.shm[verify].export(transfer_id, self.cache, self.src_ids)
        arm = Arm.SHM if verify else Arm.SHM_NO_CHECKSUM
        self._ask(Cmd.FETCH, arm, transfer_id, locator, config, self.src_ids, self.dst_ids)
        elapsed = time.perf_counter() - started
        self.shm[verify].release(transfer_id)
        return elapsed

    def handoff_tcp(self, config: Config) -> float:
        transfer_id = self._next_id()
        started = time.perf_counter()
        locator = self.tcp.export(transfer_id, self.cache, self.src_ids)
        self._ask(Cmd.FETCH, Arm.TCP, transfer_id, locator, config, self.src_ids, self.dst_ids)
        elapsed = time.perf_counter() - started
        self.tcp.release(transfer_id)
        return elapsed

    def handoff_gloo(self, config: Config) -> float:
        if self.gloo is None:
            self.gloo = self._join_gloo()
        transfer_id = self._next_id()
        started = time.perf_counter()
        locator = self.gloo.export(transfer_id, self.cache, self.src_ids)
        self.conn.send(
            (Cmd.FETCH, Arm.GLOO, transfer_id, locator, config, self.src_ids, self.dst_ids)
        )
        while isinstance(message := self.conn.recv(), tuple):  # the child's request_send
            self.gloo.send(*message)
            self.conn.send("posted")
        self._check(message)
        elapsed = time.perf_counter() - started
        self.gloo.release(transfer_id)
        return elapsed

    def _join_gloo(self):
        import torch.distributed as dist

        from kv_transfer.collective import CollectiveTransport
        from kv_transfer.pages import TransportBackend

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.conn.send((Cmd.GLOO_INIT, port))  # both ranks must init at once
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=2, rank=0)
        self._check(self.conn.recv())
        unused = lambda handle, dst_rank, timeout_s: None  # noqa: E731 — the source never pulls
        return CollectiveTransport(TransportBackend.GLOO, rank=0, request_send=unused)

    def _ask(self, *message) -> None:
        self.conn.send(message)
        self._check(self.conn.recv())

    def _check(self, answer) -> None:
        if answer != "done":
            raise RuntimeError(f"B1 fetcher failed: {answer}")

    def _next_id(self) -> str:
        self.serial += 1
        return f"b1-{self.serial}"


def _map_file(path: Path, nbytes: int, create: bool) -> np.ndarray:
    """A uint8 view of a shared file, created (or grown) to nbytes when `create`."""
    fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o600)
    try:
        if create and os.fstat(fd).st_size < nbytes:
            os.ftruncate(fd, nbytes)
        return np.frombuffer(mmap.mmap(fd, nbytes), dtype=np.uint8)
    finally:
        os.close(fd)


def _serve(conn) -> None:
    """The child: fetches on the parent's command, answers "done" or the error's text."""
    pin_to_core(1)
    torch.set_num_threads(1)
    fetcher = _Fetcher(conn)
    while (message := conn.recv())[0] != Cmd.STOP:
        try:
            fetcher.handle(*message)
            conn.send("done")
        except Exception as exc:  # reported to the parent, which stops the benchmark
            conn.send(f"{type(exc).__name__}: {exc}")
    fetcher.close()
    conn.send("done")


class _Fetcher:
    def __init__(self, conn) -> None:
        from kv_transfer.shm import ShmTransport
        from kv_transfer.tcp import TcpTransport

        self.conn = conn
        self.transports = {
            Arm.SHM: ShmTransport(verify_checksum=True),
            Arm.SHM_NO_CHECKSUM: ShmTransport(verify_checksum=False),
            Arm.TCP: TcpTransport(),
        }
        self.raw_maps: dict[tuple[str, int], np.ndarray] = {}
        self.cuda: CudaFetcher | None = None  # made on the first Cmd.CUDA

    def handle(self, cmd: Cmd, *args) -> None:
        {
            Cmd.SETUP: self.setup,
            Cmd.FETCH: self.fetch,
            Cmd.RAW: self.raw,
            Cmd.GLOO_INIT: self.join_gloo,
            Cmd.CUDA: self.on_cuda,
        }[cmd](*args)

    def setup(self, config: Config) -> None:
        self.cache = config.make_cache()
        self.contiguous = self.cache[: config.num_pages].view(torch.uint8).numpy().reshape(-1)

    def raw(self, name: str, nbytes: int) -> None:
        if (name, nbytes) not in self.raw_maps:  # mappings are cached, as the transport's are
            self.raw_maps[name, nbytes] = _map_file(SHM_DIR / name, nbytes, create=False)
        np.copyto(self.contiguous[:nbytes], self.raw_maps[name, nbytes])

    def fetch(self, arm: Arm, transfer_id, locator, config: Config, src_ids, dst_ids) -> None:
        from kv_transfer.pages import KVHandle

        transport = self.transports[arm]
        handle = KVHandle(transfer_id, "b1-src", 1, src_ids, config.tokens, config.layout,
                          time.time() + 60, transport.backend, locator)  # fmt: skip
        transport.fetch(handle, self.cache, dst_ids, 30.0)

    def on_cuda(self, *args) -> None:
        if self.cuda is None:
            self.cuda = CudaFetcher(self.conn)
        self.cuda.handle(*args)

    def close(self) -> None:
        for transport in self.transports.values():
            transport.close()
        if self.cuda is not None:
            self.cuda.close()
        if Arm.GLOO in self.transports:
            torch.distributed.destroy_process_group()

    def join_gloo(self, port: int) -> None:
        import torch.distributed as dist

        from kv_transfer.collective import CollectiveTransport
        from kv_transfer.pages import TransportBackend

        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=2, rank=1)
        self.transports[Arm.GLOO] = CollectiveTransport(
            TransportBackend.GLOO, rank=1, request_send=self.request_send
        )

    def request_send(self, handle, dst_rank: int, timeout_s: float) -> None:
        self.conn.send((handle.transfer_id, dst_rank))
        if self.conn.recv() != "posted":
            raise RuntimeError("the exporter did not post the send")
