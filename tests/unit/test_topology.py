"""The KV backend of a (source, destination) pair: the topology's table, and a `kv_backend`
override that wins where it can serve the pair and is refused, naming the field, where not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kv_transfer.pages import TransportBackend
from kv_transfer.topology import DeviceKind, PeerTopology, choose_backend, usable_backends

ROOT = Path(__file__).resolve().parents[2]
SHM, GLOO, LOCAL = TransportBackend.SHM, TransportBackend.GLOO, TransportBackend.LOCAL
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
        (NODE_A_CPU, PeerTopology("node-a", "cuda"), GLOO),
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


def test_only_gloo_crosses_cpu_nodes():
    assert usable_backends(NODE_A_CPU, NODE_B_CPU) == {GLOO}
    assert usable_backends(NODE_A_CPU, NODE_A_CPU) == {GLOO, LOCAL, SHM}


def test_the_router_can_import_it_without_torch_or_ray():
    code = "import sys, kv_transfer.topology; print(' '.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    loaded = {name.split(".")[0] for name in out.stdout.split()}
    assert "kv_transfer" in loaded and not loaded & {"torch", "ray"}
