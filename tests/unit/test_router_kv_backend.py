"""The router's KV backend per pair: the topology's choice when both workers hold it, the
`kv_backend` override where it can serve the pair; a pair sharing no such backend is never
routed, and health says so."""

from __future__ import annotations

import pytest

from kv_transfer.pages import KVLayout, Role, TransportBackend
from kv_transfer.topology import DeviceKind
from router.errors import NoWorkers
from router.policy import PolicyConfig, RouteInput, has_route, pair_backend, pick_route
from router.registry import WorkerLoad, WorkerRecord

LAYOUT = KVLayout(num_layers=2, num_kv_heads=1, head_dim=8, page_size=4, dtype="float32")
SHM, GLOO, TCP = TransportBackend.SHM, TransportBackend.GLOO, TransportBackend.TCP
CUDA_IPC = TransportBackend.CUDA_IPC
GROUP = (SHM, GLOO)  # a worker that joined the cluster's gloo KV group
ON_GPU = (SHM, CUDA_IPC)  # a worker whose KV cache is on CUDA


def make_worker(
    worker_id: str,
    role: Role,
    node: str = "node-a",
    kv_backends=(SHM,),
    running: int = 0,
    device: DeviceKind = DeviceKind.CPU,
) -> WorkerRecord:
    return WorkerRecord(
        worker_id,
        role,
        f"{worker_id}:1",
        epoch=1,
        layout=LAYOUT,
        node=node,
        kv_backends=frozenset(kv_backends),
        device=device,
        load=WorkerLoad(running=running, pages_total=100),
    )


def routed(workers, kv_backend=None) -> tuple[str, str, TransportBackend | None]:
    decision = pick_route(workers, RouteInput(100), PolicyConfig(kv_backend=kv_backend))
    return decision.prefill.worker_id, decision.decode.worker_id, decision.kv_backend


def test_a_pair_on_one_node_moves_kv_over_shm():
    workers = [make_worker("p0", Role.PREFILL, kv_backends=GROUP), make_worker("d0", Role.DECODE)]
    assert routed(workers) == ("p0", "d0", SHM)


def test_a_pair_across_nodes_moves_kv_over_gloo_when_both_joined_the_group():
    workers = [
        make_worker("p0", Role.PREFILL, "node-a", GROUP),
        make_worker("d0", Role.DECODE, "node-b", GROUP),
    ]
    assert routed(workers) == ("p0", "d0", GLOO)


def test_a_decode_worker_sharing_no_backend_is_passed_over_despite_its_lower_load():
    workers = [
        make_worker("p0", Role.PREFILL, "node-a", GROUP),
        make_worker("d-far", Role.DECODE, "node-b", (SHM,)),  # idle, but no gloo
        make_worker("d-near", Role.DECODE, "node-a", (SHM,), running=5),
    ]
    assert routed(workers) == ("p0", "d-near", SHM)


def test_the_override_replaces_the_topologys_choice():
    workers = [
        make_worker("p0", Role.PREFILL, kv_backends=GROUP),
        make_worker("d0", Role.DECODE, kv_backends=GROUP),
    ]
    assert routed(workers, kv_backend=GLOO) == ("p0", "d0", GLOO)


@pytest.mark.parametrize(
    "nodes, kv_backends, override",
    [
        (("node-a", "node-a"), (SHM,), GLOO),  # nobody joined a gloo group
        (("node-a", "node-b"), GROUP, SHM),  # shm cannot cross nodes
    ],
)
def test_an_override_no_pair_can_use_leaves_no_route(nodes, kv_backends, override):
    workers = [
        make_worker("p0", Role.PREFILL, nodes[0], kv_backends),
        make_worker("d0", Role.DECODE, nodes[1], kv_backends),
    ]
    with pytest.raises(NoWorkers):
        pick_route(workers, RouteInput(100), PolicyConfig(kv_backend=override))
    assert not has_route(workers, override)
    assert has_route(workers)  # the override alone is what leaves them unpaired


def test_two_cuda_workers_on_one_node_move_kv_over_cuda_ipc():
    """The topology's first choice for them, device to device, now that both report cuda."""
    prefill = make_worker("p0", Role.PREFILL, kv_backends=ON_GPU, device=DeviceKind.CUDA)
    decode = make_worker("d0", Role.DECODE, kv_backends=ON_GPU, device=DeviceKind.CUDA)
    assert pair_backend(prefill, decode) == CUDA_IPC
    assert routed([prefill, decode]) == ("p0", "d0", CUDA_IPC)


def test_cuda_workers_on_two_nodes_fall_back_to_tcp_without_an_nccl_group():
    """cuda_ipc serves one node only; nccl is first across nodes, but neither joined one."""
    prefill = make_worker("p0", Role.PREFILL, "node-a", (*ON_GPU, TCP), device=DeviceKind.CUDA)
    decode = make_worker("d0", Role.DECODE, "node-b", (*ON_GPU, TCP), device=DeviceKind.CUDA)
    assert pair_backend(prefill, decode) == TCP


def test_a_pair_is_cuda_by_its_reported_device_not_by_the_backends_it_holds():
    """A record that names no device (WorkerRecord's default, an older worker's) is on cpu:
    the pair moves KV over shm even though one of them holds cuda_ipc."""
    prefill = make_worker("p0", Role.PREFILL, kv_backends=ON_GPU)
    decode = make_worker("d0", Role.DECODE)
    assert (prefill.topology.device, pair_backend(prefill, decode)) == (DeviceKind.CPU, SHM)
