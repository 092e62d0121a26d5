"""The KV backend of a (source, destination) pair: the topology's table, the fallbacks when the
pair does not both hold the table's choice (tcp, then gloo), and a `kv_backend` override that
wins where it can serve the pair and is refused, naming the field, where not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kv_transfer.pages import TransportBackend, known_backends
from kv_transfer.topology import DeviceKind, PeerTopology, choose_backend, usable_backends

ROOT = Path(__file__).resolve().parents[2]
SHM, GLOO, LOCAL = TransportBackend.SHM, TransportBackend.GLOO, TransportBackend.LOCAL
TCP, NCCL = TransportBackend.TCP, TransportBackend.NCCL
NODE_A_CPU = PeerTopology("node-a", "cpu")
NODE_B_CPU = PeerTopology("node-b", "cpu")


@pytest.mark.parametrize(
    "src, dst, expected",
    [
        (NODE_A_CPU, NODE_A_CPU, SHM),
        (NODE_A_CPU, NODE_B_CPU, GLOO),
        (
            PeerTopology("node-a", "cuda"),
            PeerTopology("node-a", "cuda:1"),
            TransportBackend.CUDA_IPC,
        ),
        (PeerTopology("node-a", "cuda"), PeerTopology("node-b", "cuda"), TransportBackend.NCCL),
        (NODE_A_CPU, PeerTopology("node-a", "cuda"), SHM),  # host-staged, either device
        (PeerTopology("node-a", "cuda"), NODE_B_CPU, GLOO),
    ],
)
def test_without_an_override_the_topology_decides(src, dst, expected):
    assert choose_backend(src, dst) == expected


def test_a_device_index_names_the_same_device_kind():
    assert PeerTopology("node-a", "cuda:3").device is DeviceKind.CUDA


@pytest.mark.parametrize("override", [GLOO, LOCAL])
def test_an_override_the_pair_can_use_is_honored(override):
    """Same node: shm by topology, but gloo (or local) serves the pair too."""
    assert choose_backend(NODE_A_CPU, NODE_A_CPU, override) == override


def test_an_override_the_pair_cannot_use_is_rejected_naming_the_field():
    with pytest.raises(ValueError) as refused:
        choose_backend(NODE_A_CPU, NODE_B_CPU, SHM)
    assert str(refused.value) == "kv_backend: override 'shm' cannot serve node-a/cpu → node-b/cpu"


def test_only_gloo_and_tcp_cross_cpu_nodes():
    assert usable_backends(NODE_A_CPU, NODE_B_CPU) == {GLOO, TCP}
    assert usable_backends(NODE_A_CPU, NODE_A_CPU) == {GLOO, LOCAL, SHM, TCP}


@pytest.mark.parametrize(
    "src, dst, held, expected",
    [
        (NODE_A_CPU, NODE_B_CPU, {SHM, TCP}, TCP),  # no KV group (Kubernetes pods): tcp
        (NODE_A_CPU, NODE_B_CPU, {SHM, GLOO, TCP}, GLOO),  # a group both joined wins
        (NODE_A_CPU, NODE_A_CPU, {SHM, TCP}, SHM),  # one node: shared memory still wins
        (PeerTopology("node-a", "cuda"), PeerTopology("node-b", "cuda"), {SHM, TCP}, TCP),
        (PeerTopology("node-a", "cuda"), PeerTopology("node-b", "cuda"), {NCCL, TCP}, NCCL),
    ],
)
def test_the_first_preference_both_hold_wins(src, dst, held, expected):
    assert choose_backend(src, dst, held=frozenset(held)) == expected


def test_a_pair_holding_nothing_that_crosses_nodes_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="^kv_backend: no backend held by both"):
        choose_backend(NODE_A_CPU, NODE_B_CPU, held=frozenset({SHM}))


def test_an_override_not_held_by_both_is_refused():
    with pytest.raises(ValueError, match="^kv_backend: override 'tcp' is not held"):
        choose_backend(NODE_A_CPU, NODE_B_CPU, TCP, held=frozenset({SHM, GLOO}))


def test_the_router_can_import_it_without_torch_or_ray():
    code = "import sys, kv_transfer.topology; print(' '.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    loaded = {name.split(".")[0] for name in out.stdout.split()}
    assert "kv_transfer" in loaded and not loaded & {"torch", "ray"}


def test_a_backend_name_this_version_does_not_know_is_skipped_not_fatal():
    """A newer worker may hold a backend an older router has never heard of (rolling
    upgrade): the router pairs it over the backends both know."""
    assert known_backends(["shm", "rdma-of-the-future", "tcp"]) == {SHM, TCP}
