"""A worker's KV device, from its runner to the router's record: the stats it reports, the
backends it holds (cuda_ipc only with its KV cache on CUDA), and the configs refused for it.
Nothing here needs a GPU: building a cuda_ipc transport touches none."""

from __future__ import annotations

import pytest

from engine.builder import EngineConfig
from engine.core import EngineStats
from kv_transfer.factory import held_backends, make_worker_transports
from kv_transfer.pages import KVLayout, Role, TransportBackend
from kv_transfer.topology import DeviceKind, PeerTopology
from pdserve.worker_config import WorkerConfig
from pdserve.workers import TransferStats, WorkerIdentity, worker_stats_proto
from router.registry import known_device
from router.worker_wire import record_from_stats

SHM, CUDA_IPC, TCP = TransportBackend.SHM, TransportBackend.CUDA_IPC, TransportBackend.TCP
LAYOUT = KVLayout(num_layers=2, num_kv_heads=1, head_dim=8, page_size=4, dtype="bfloat16")
IDLE = EngineStats(
    num_pages_total=64,
    num_pages_in_use=0,
    num_pages_cached=0,
    num_waiting=0,
    num_running=0,
    num_queued_prefill_tokens=0,
    num_steps=0,
    integrity_ok=True,
)


def make_identity(device: DeviceKind, kv_backends: tuple[TransportBackend, ...]) -> WorkerIdentity:
    return WorkerIdentity(
        worker_id="prefill-0",
        role=Role.PREFILL,
        address="127.0.0.1:7001",
        epoch=1,
        pid=4242,
        node="node-a",
        layout=LAYOUT,
        transport=SHM,
        kv_backends=kv_backends,
        device=device,
    )


def test_a_cuda_workers_stats_reach_the_router_as_a_cuda_record():
    identity = make_identity(DeviceKind.CUDA, (SHM, CUDA_IPC))
    stats = worker_stats_proto(identity, IDLE, TransferStats())
    record = record_from_stats(stats)
    assert stats.info.device == "cuda"
    assert (record.device, record.kv_backends) == (DeviceKind.CUDA, {SHM, CUDA_IPC})
    assert record.topology == PeerTopology("node-a", DeviceKind.CUDA)


def test_a_cpu_workers_stats_say_cpu():
    stats = worker_stats_proto(make_identity(DeviceKind.CPU, (SHM,)), IDLE, TransferStats())
    assert (stats.info.device, record_from_stats(stats).device) == ("cpu", DeviceKind.CPU)


@pytest.mark.parametrize(
    "name, device",
    [
        ("cpu", DeviceKind.CPU),
        ("cuda", DeviceKind.CUDA),
        ("cuda:1", DeviceKind.CUDA),
        ("", DeviceKind.CPU),  # a worker older than the field
        ("xpu", DeviceKind.CPU),  # a newer one's device this router does not know
    ],
)
def test_a_reported_device_reads_as_what_this_version_knows_else_cpu(name, device):
    assert known_device(name) is device


def test_a_worker_with_its_kv_cache_on_cuda_also_holds_cuda_ipc():
    assert held_backends(SHM, None, tcp=True, cuda=True) == (SHM, CUDA_IPC, TCP)
    assert held_backends(SHM, None, tcp=True) == (SHM, TCP)


def test_cuda_ipc_as_the_default_of_a_worker_on_cpu_is_refused_naming_transport():
    with pytest.raises(ValueError, match="transport: cuda_ipc .* on cpu"):
        held_backends(CUDA_IPC, None)


def test_the_transports_of_a_cuda_worker_include_cuda_ipc_and_keep_shm():
    """shm stays held on a GPU worker (it stages through host memory) for peers on cpu."""
    transports = make_worker_transports(CUDA_IPC, None, verify_checksum=True, cuda=True)
    try:
        assert (transports.backends, transports.default) == ((SHM, CUDA_IPC), CUDA_IPC)
    finally:
        transports.close()


@pytest.mark.parametrize("engine", [EngineConfig(device="cpu"), EngineConfig(runner="mock")])
def test_a_worker_whose_kv_cache_is_surely_on_cpu_cannot_default_to_cuda_ipc(engine):
    """device cpu, or the mock runner (its KV cache stays on cpu whatever the device)."""
    with pytest.raises(ValueError, match="transport: cuda_ipc"):
        WorkerConfig(worker_id="w0", transport=CUDA_IPC, engine=engine)


def test_a_worker_on_device_auto_may_default_to_cuda_ipc():
    """Where auto lands is known in the worker's process, which fails at start if on cpu."""
    config = WorkerConfig(worker_id="w0", transport=CUDA_IPC, engine=EngineConfig(device="auto"))
    assert config.transport == CUDA_IPC
