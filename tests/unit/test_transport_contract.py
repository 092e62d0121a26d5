"""The KV transport contract (kv_transfer/transport.py), one suite run against every backend.

A backend runs through a TransferPair: the exporting and the fetching half of one transfer
path, in one process, across two spawned processes, or (tests/integration) across two Ray
actors. Backends this machine cannot run are skipped: cuda_ipc and nccl without CUDA.
"""

from __future__ import annotations

import multiprocessing
import time
from abc import ABC, abstractmethod
from dataclasses import replace

import pytest
import torch

from kv_transfer.checksum import Locator, buffer_shape
from kv_transfer.factory import make_transport
from kv_transfer.local import LocalExchange
from kv_transfer.pages import KVHandle, KVLayout, TransportBackend
from kv_transfer.shm_segments import DATA_OFFSET, SHM_DIR, SegmentAddress
from kv_transfer.tcp import TcpSettings
from kv_transfer.tcp_server import TcpEndpoint
from kv_transfer.transport import TransferError, TransferState

NUM_PAGES = 12
SRC_PAGES = (9, 2, 5, 7)  # scattered, not sorted
DST_PAGES = (1, 10, 4, 6)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def make_layout(page_size: int = 7, dtype: str = "bfloat16") -> KVLayout:
    return KVLayout(num_layers=2, num_kv_heads=2, head_dim=4, page_size=page_size, dtype=dtype)


def make_cache(layout: KVLayout, seed: int) -> torch.Tensor:
    """kv_cache: [NUM_PAGES, num_layers, 2, page_size, num_kv_heads, head_dim], seeded random."""
    generator = torch.Generator().manual_seed(seed)
    cache = torch.randn(buffer_shape(layout, NUM_PAGES), generator=generator)
    return cache.to(getattr(torch, layout.dtype))


def make_handle(transfer_id: str, layout: KVLayout, locator: bytes, backend) -> KVHandle:
    return KVHandle(
        transfer_id=transfer_id,
        src_worker_id="prefill-0",
        src_epoch=1,
        page_ids=SRC_PAGES,
        num_tokens=len(SRC_PAGES) * layout.page_size,
        layout=layout,
        lease_expiry_unix_s=time.time() + 60,
        backend=backend,
        locator=locator,
    )


def with_wrong_checksum(handle: KVHandle) -> KVHandle:
    """For pairs whose buffer lives out of the test's reach: the same mismatch, seen from the
    checksum's side."""
    locator = Locator.decode(handle.locator)
    tampered = Locator(locator.nbytes, (locator.checksum or 0) ^ 1, locator.address)
    return replace(handle, locator=tampered.encode())


def corrupt_segment(handle: KVHandle) -> KVHandle:
    """Flips the first data byte of the handle's shm segment."""
    address = SegmentAddress.decode(Locator.decode(handle.locator).address, handle.transfer_id)
    with open(SHM_DIR / address.name, "r+b") as segment:
        segment.seek(DATA_OFFSET)
        byte = segment.read(1)[0]
        segment.seek(DATA_OFFSET)
        segment.write(bytes([byte ^ 0xFF]))
    return handle


class TransferPair(ABC):
    """The exporting half (`source`, in this process) and the fetching half of one path."""

    def __init__(self, backend: TransportBackend, device: str = "cpu", **options) -> None:
        self.backend, self.device = backend, device
        self.source = make_transport(backend, verify_checksum=True, **options)

    def export(self, transfer_id: str, kv_cache: torch.Tensor, layout: KVLayout) -> KVHandle:
        locator = self.source.export(transfer_id, kv_cache.to(self.device), SRC_PAGES)
        return make_handle(transfer_id, layout, locator, self.backend)

    @abstractmethod
    def fetch(
        self, handle: KVHandle, kv_cache: torch.Tensor, timeout_s: float = 5.0
    ) -> torch.Tensor:
        """The destination cache after fetching into DST_PAGES (a CPU tensor)."""

    @abstractmethod
    def corrupt(self, handle: KVHandle) -> KVHandle:
        """Flips a byte of the exported buffer; returns the handle to fetch with."""

    def leftovers(self) -> list[str]:
        """Segment files of the source still on disk."""
        if self.backend != TransportBackend.SHM:
            return []
        return sorted(path.name for path in SHM_DIR.glob(f"{self.source.segment_prefix}*"))

    def close(self) -> None:
        self.source.close()


def source_options(backend: TransportBackend) -> dict:
    """What the exporting half needs beyond the fetching half's options."""
    if backend == TransportBackend.TCP:
        return {"settings": TcpSettings(listen=TcpEndpoint("127.0.0.1"))}
    return {}


class InProcessPair(TransferPair):
    """Both halves in this process. shm sources pool nothing, so a leak shows at once."""

    def __init__(self, backend: TransportBackend) -> None:
        self.exchange = LocalExchange()
        local = backend == TransportBackend.LOCAL
        options = {"exchange": self.exchange} if local else {"pool_bytes": 0}
        super().__init__(backend, **options, **source_options(backend))
        self.sink = make_transport(backend, verify_checksum=True, **options)

    def fetch(self, handle, kv_cache, timeout_s=5.0):
        self.sink.fetch(handle, kv_cache, DST_PAGES, timeout_s)
        return kv_cache

    def corrupt(self, handle):
        if self.backend == TransportBackend.SHM:
            return corrupt_segment(handle)
        if self.backend == TransportBackend.TCP:
            return with_wrong_checksum(handle)
        self.exchange.lookup(handle.transfer_id)[0, 0] += 1
        return handle

    def close(self) -> None:
        super().close()
        self.sink.close()


def serve_fetches(conn, backend: TransportBackend, device: str) -> None:
    """Child process: fetches what the parent sends, answers with the cache or the error."""
    sink = make_transport(backend, verify_checksum=True)
    while (request := conn.recv()) is not None:
        handle, kv_cache, timeout_s = request
        kv_cache = kv_cache.to(device)
        try:
            sink.fetch(handle, kv_cache, DST_PAGES, timeout_s)
            conn.send(kv_cache.cpu())
        except TransferError as exc:
            conn.send(exc)
    sink.close()


class FetchServer:
    """A spawned process holding the fetching half of `backend`."""

    def __init__(self, backend: TransportBackend, device: str) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(target=serve_fetches, args=(child_conn, backend, device))
        self.process.start()

    def fetch(self, handle: KVHandle, kv_cache: torch.Tensor, timeout_s: float) -> torch.Tensor:
        self.conn.send((handle, kv_cache, timeout_s))
        answer = self.conn.recv()
        if isinstance(answer, TransferError):
            raise answer
        return answer

    def stop(self) -> None:
        self.conn.send(None)
        self.process.join(timeout=30)


class SpawnedPair(TransferPair):
    """The fetching half in another process: segments and IPC handles cross a real boundary."""

    def __init__(self, server: FetchServer, backend: TransportBackend, device: str) -> None:
        options = {"pool_bytes": 0} if backend == TransportBackend.SHM else {}
        super().__init__(backend, device, **options, **source_options(backend))
        self.server = server

    def fetch(self, handle, kv_cache, timeout_s=5.0):
        return self.server.fetch(handle, kv_cache, timeout_s)

    def corrupt(self, handle):
        if self.backend == TransportBackend.SHM:
            return corrupt_segment(handle)
        return with_wrong_checksum(handle)


class TransportContract:
    """What kv_transfer/transport.py promises; subclasses provide the `pair` fixture."""

    @pytest.mark.parametrize("page_size", [1, 16, 7])
    @pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
    def test_fetched_pages_equal_the_exported_pages(self, pair, page_size, dtype):
        layout = make_layout(page_size, dtype)
        src, dst = make_cache(layout, seed=1), make_cache(layout, seed=2)
        fetched = pair.fetch(pair.export("t-exact", src, layout), dst.clone())
        assert torch.equal(fetched[list(DST_PAGES)], src[list(SRC_PAGES)])

    def test_other_destination_pages_are_untouched(self, pair):
        layout = make_layout()
        src, dst = make_cache(layout, seed=1), make_cache(layout, seed=2)
        fetched = pair.fetch(pair.export("t-others", src, layout), dst.clone())
        others = [page for page in range(NUM_PAGES) if page not in DST_PAGES]
        assert torch.equal(fetched[others], dst[others])

    def test_release_twice_frees_the_export(self, pair):
        layout = make_layout()
        pair.export("t-release", make_cache(layout, seed=1), layout)
        pair.source.release("t-release")
        pair.source.release("t-release")
        assert (pair.source.num_exported(), pair.leftovers()) == (0, [])

    def test_state_is_pending_until_release_then_unknown(self, pair):
        layout = make_layout()
        pair.export("t-state", make_cache(layout, seed=1), layout)
        before = pair.source.state("t-state")
        pair.source.release("t-state")
        assert (before, pair.source.state("t-state")) == (TransferState.PENDING, None)

    def test_fetch_after_release_fails(self, pair):
        layout = make_layout()
        handle = pair.export("t-released", make_cache(layout, seed=1), layout)
        pair.source.release("t-released")
        with pytest.raises(TransferError):
            pair.fetch(handle, make_cache(layout, seed=2))

    def test_corrupted_buffer_fails_the_checksum(self, pair):
        layout = make_layout()
        handle = pair.corrupt(pair.export("t-corrupt", make_cache(layout, seed=1), layout))
        with pytest.raises(TransferError, match="checksum"):
            pair.fetch(handle, make_cache(layout, seed=2))

    def test_fetch_past_its_deadline_fails(self, pair):
        layout = make_layout()
        handle = pair.export("t-late", make_cache(layout, seed=1), layout)
        with pytest.raises(TransferError, match="deadline"):
            pair.fetch(handle, make_cache(layout, seed=2), timeout_s=0.0)

    def test_fetch_into_a_cache_of_another_layout_fails(self, pair):
        layout = make_layout(page_size=7)
        handle = pair.export("t-layout", make_cache(layout, seed=1), layout)
        with pytest.raises(TransferError, match="layout"):
            pair.fetch(handle, make_cache(make_layout(page_size=16), seed=2))

    def test_exporting_an_id_twice_is_refused(self, pair):
        layout = make_layout()
        pair.export("t-twice", make_cache(layout, seed=1), layout)
        with pytest.raises(ValueError, match="t-twice"):
            pair.export("t-twice", make_cache(layout, seed=1), layout)

    def test_close_releases_every_export(self, pair):
        layout = make_layout()
        handles = [
            pair.export(f"t-close-{i}", make_cache(layout, seed=i), layout) for i in range(3)
        ]
        pair.source.close()
        pair.source.close()
        assert (pair.source.num_exported(), pair.leftovers()) == (0, [])
        with pytest.raises(TransferError):
            pair.fetch(handles[0], make_cache(layout, seed=9))


class TestLocal(TransportContract):
    @pytest.fixture
    def pair(self):
        pair = InProcessPair(TransportBackend.LOCAL)
        yield pair
        pair.close()


class TestShmInProcess(TransportContract):
    @pytest.fixture
    def pair(self):
        pair = InProcessPair(TransportBackend.SHM)
        yield pair
        pair.close()


@pytest.fixture(scope="module")
def shm_server():
    server = FetchServer(TransportBackend.SHM, "cpu")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tcp_server():
    server = FetchServer(TransportBackend.TCP, "cpu")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cuda_ipc_server():
    server = FetchServer(TransportBackend.CUDA_IPC, "cuda")
    yield server
    server.stop()


class TestShmAcrossProcesses(TransportContract):
    @pytest.fixture
    def pair(self, shm_server):
        pair = SpawnedPair(shm_server, TransportBackend.SHM, "cpu")
        yield pair
        pair.close()


class TestTcpInProcess(TransportContract):
    @pytest.fixture
    def pair(self):
        pair = InProcessPair(TransportBackend.TCP)
        yield pair
        pair.close()


class TestTcpAcrossProcesses(TransportContract):
    @pytest.fixture
    def pair(self, tcp_server):
        pair = SpawnedPair(tcp_server, TransportBackend.TCP, "cpu")
        yield pair
        pair.close()


@pytest.mark.gpu
@needs_cuda
class TestCudaIpcAcrossProcesses(TransportContract):
    @pytest.fixture
    def pair(self, cuda_ipc_server):
        pair = SpawnedPair(cuda_ipc_server, TransportBackend.CUDA_IPC, "cuda")
        yield pair
        pair.close()
