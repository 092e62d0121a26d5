"""What single backends add to the contract: shm's segment pool, tokens and orphan sweep, the
locator envelope every backend shares, and the factory's choice of backend."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from kv_transfer.checksum import Locator
from kv_transfer.cuda_ipc import IpcHandle
from kv_transfer.factory import make_transport
from kv_transfer.local import LocalTransport
from kv_transfer.pages import TransportBackend
from kv_transfer.shm import ShmTransport
from kv_transfer.shm_segments import SEGMENT_PREFIX, SegmentAddress, sweep_orphan_segments
from kv_transfer.topology import PeerTopology, choose_backend
from kv_transfer.transport import TransferError
from tests.unit.test_transport_contract import (
    DST_PAGES,
    SRC_PAGES,
    make_cache,
    make_handle,
    make_layout,
)

SHM = TransportBackend.SHM


def segment_name(handle) -> str:
    return SegmentAddress.decode(Locator.decode(handle.locator).address, handle.transfer_id).name


@pytest.fixture
def pooled():
    """An exporter that keeps released segments for reuse, and a fetcher."""
    source, sink = ShmTransport(), ShmTransport()
    yield source, sink
    source.close()
    sink.close()


def test_a_released_segment_is_reused_by_the_next_export(pooled):
    source, _ = pooled
    layout = make_layout()
    first = make_handle("t-1", layout, source.export("t-1", make_cache(layout, 1), SRC_PAGES), SHM)
    source.release("t-1")
    second = make_handle("t-2", layout, source.export("t-2", make_cache(layout, 2), SRC_PAGES), SHM)
    assert segment_name(first) == segment_name(second)


def test_a_stale_locator_of_a_reused_segment_is_refused(pooled):
    """The token keeps a released transfer from reading the KV of the one that reused it."""
    source, sink = pooled
    layout = make_layout()
    stale = make_handle("t-1", layout, source.export("t-1", make_cache(layout, 1), SRC_PAGES), SHM)
    source.release("t-1")
    source.export("t-2", make_cache(layout, 2), SRC_PAGES)
    with pytest.raises(TransferError, match="released or reused"):
        sink.fetch(stale, make_cache(layout, 3), DST_PAGES, 5.0)


def test_integrity_holds_through_export_release_and_close(pooled):
    source, _ = pooled
    layout = make_layout()
    source.export("t-1", make_cache(layout, 1), SRC_PAGES)
    source.check_integrity()
    source.release("t-1")
    source.check_integrity()
    source.close()
    source.check_integrity()
    assert list(Path("/dev/shm").glob(f"{source.segment_prefix}*")) == []


def test_a_pool_too_small_for_a_segment_unlinks_it_on_release():
    source = ShmTransport(pool_bytes=1024)
    layout = make_layout()
    source.export("t-1", make_cache(layout, 1), SRC_PAGES)
    source.release("t-1")
    assert list(Path("/dev/shm").glob(f"{source.segment_prefix}*")) == []


def test_segments_of_a_dead_process_are_swept(tmp_path: Path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    orphan = tmp_path / f"{SEGMENT_PREFIX}{int(dead.stdout)}-0123abcd-0"
    alive = tmp_path / f"{SEGMENT_PREFIX}{os.getpid()}-0123abcd-0"
    orphan.touch()
    alive.touch()
    assert sweep_orphan_segments(tmp_path) == 1
    assert sorted(tmp_path.iterdir()) == [alive]


def test_a_locator_naming_a_path_outside_the_segments_is_refused(pooled):
    _, sink = pooled
    layout = make_layout()
    locator = Locator(4 * layout.page_nbytes, None, SegmentAddress(1, "../../etc/passwd").encode())
    with pytest.raises(TransferError, match="malformed"):
        sink.fetch(
            make_handle("t-evil", layout, locator.encode(), SHM),
            make_cache(layout, 1),
            DST_PAGES,
            5.0,
        )


def test_a_fetcher_that_verifies_refuses_a_source_that_sent_no_checksum():
    source, sink = ShmTransport(verify_checksum=False), ShmTransport(verify_checksum=True)
    layout = make_layout()
    handle = make_handle("t-1", layout, source.export("t-1", make_cache(layout, 1), SRC_PAGES), SHM)
    with pytest.raises(TransferError, match="no checksum"):
        sink.fetch(handle, make_cache(layout, 2), DST_PAGES, 5.0)
    source.close()


def test_a_shorter_locator_size_than_the_handle_is_refused(pooled):
    source, sink = pooled
    layout = make_layout()
    handle = make_handle("t-1", layout, source.export("t-1", make_cache(layout, 1), SRC_PAGES), SHM)
    locator = Locator.decode(handle.locator)
    shrunk = Locator(locator.nbytes - 1, locator.checksum, locator.address).encode()
    with pytest.raises(TransferError, match="size"):
        sink.fetch(replace(handle, locator=shrunk), make_cache(layout, 2), DST_PAGES, 5.0)


@pytest.mark.parametrize("checksum", [None, 0, 2**64 - 1])
def test_the_locator_envelope_round_trips(checksum):
    locator = Locator(nbytes=123_456, checksum=checksum, address=b"seg\x00name")
    assert Locator.decode(locator.encode()) == locator


@pytest.mark.parametrize("raw", [b"", b"PDK1", b"XXXX" + bytes(20)])
def test_a_malformed_locator_is_a_transfer_error(raw):
    with pytest.raises(TransferError, match="malformed"):
        Locator.decode(raw)


def test_a_cuda_ipc_handle_round_trips_through_its_locator_bytes():
    """The IPC handle crosses processes as explicit struct fields, never pickle."""
    ipc = IpcHandle(0, 1 << 20, 512, 64, True, b"\x01" * 64, b"/torch_123_ref", b"\x02" * 64)
    assert IpcHandle.decode(ipc.encode(), "t-ipc") == ipc


def test_a_truncated_cuda_ipc_handle_is_a_transfer_error():
    ipc = IpcHandle(0, 1 << 20, 512, 64, True, b"\x01" * 64, b"/torch_123_ref", b"\x02" * 64)
    with pytest.raises(TransferError, match="malformed"):
        IpcHandle.decode(ipc.encode()[:-1], "t-ipc")


@pytest.mark.parametrize(
    "src, dst, expected",
    [
        (("n1", "cpu"), ("n1", "cpu"), TransportBackend.SHM),
        (("n1", "cuda"), ("n1", "cuda:1"), TransportBackend.CUDA_IPC),
        (("n1", "cuda"), ("n2", "cuda"), TransportBackend.NCCL),
        (("n1", "cpu"), ("n2", "cpu"), TransportBackend.GLOO),
        (("n1", "cpu"), ("n1", "cuda"), TransportBackend.SHM),
        (("n1", "cuda"), ("n2", "cpu"), TransportBackend.GLOO),
    ],
)
def test_the_backend_follows_the_topology(src, dst, expected):
    assert choose_backend(PeerTopology(*src), PeerTopology(*dst), None) == expected


def test_a_valid_override_wins():
    same_node_cpu = PeerTopology("n1", "cpu")
    assert (
        choose_backend(same_node_cpu, same_node_cpu, TransportBackend.GLOO) == TransportBackend.GLOO
    )


def test_an_override_the_topology_cannot_serve_is_refused_by_name():
    with pytest.raises(ValueError, match="'shm'"):
        choose_backend(PeerTopology("n1", "cpu"), PeerTopology("n2", "cpu"), TransportBackend.SHM)


@pytest.mark.parametrize("backend, cls", [("local", LocalTransport), ("shm", ShmTransport)])
def test_make_transport_builds_the_backend(backend, cls):
    transport = make_transport(TransportBackend(backend), verify_checksum=False)
    assert isinstance(transport, cls) and transport.backend == TransportBackend(backend)
    transport.close()
