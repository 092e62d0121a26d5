"""How `pdserve worker` becomes part of the Ray cluster (pdserve/ray_node.py), with Ray's calls
replaced: it starts a node of its own only when none runs on this machine, and ends only that."""

from __future__ import annotations

import subprocess

import pytest

from pdserve import ray_node
from pdserve.ray_node import RayNode


class FakeChild:
    """A `ray start --block` child that ends when terminated."""

    def __init__(self, argv: list[str], **kwargs) -> None:
        self.argv, self.kwargs = argv, kwargs
        self.returncode: int | None = None
        self.signals: list[str] = []

    def poll(self) -> int | None:
        return self.returncode

    def terminate(self) -> None:
        self.signals.append("TERM")
        self.returncode = -15

    def wait(self, timeout: float | None = None) -> int:
        assert self.returncode is not None
        return self.returncode


@pytest.fixture
def fake_ray(monkeypatch) -> dict:
    """ray.init records its address; a test sets which raylets `find_node_ids` sees."""
    seen: dict = {"inits": [], "children": [], "local_nodes": [], "connected": False}

    def init(address=None, **options):
        seen["inits"].append(address)
        seen["connected"] = True

    def start(argv, **kwargs):
        seen["children"].append(FakeChild(argv, **kwargs))
        return seen["children"][-1]

    monkeypatch.setattr(ray_node, "find_node_ids", lambda: seen["local_nodes"])
    monkeypatch.setattr(ray_node.ray, "init", init)
    monkeypatch.setattr(ray_node.ray, "is_initialized", lambda: seen["connected"])
    monkeypatch.setattr(ray_node.ray, "shutdown", lambda: seen.update(connected=False))
    monkeypatch.setattr(subprocess, "Popen", start)
    return seen


def test_a_machine_without_a_ray_node_joins_through_a_blocking_ray_start(fake_ray):
    node = RayNode.join("ray-head:6379")
    (child,) = fake_ray["children"]
    assert child.argv[1:] == ["start", "--address=ray-head:6379", "--block"]
    assert child.kwargs["start_new_session"]  # a Ctrl-C for us does not end the node first
    assert fake_ray["inits"] == ["ray-head:6379"] and node.started_node
    node.leave()
    assert child.signals == ["TERM"] and not fake_ray["connected"]
    node.leave()  # idempotent
    assert child.signals == ["TERM"]


def test_a_machine_already_in_the_cluster_only_connects(fake_ray):
    fake_ray["local_nodes"] = ["ab12"]
    node = RayNode.join("ray-head:6379")
    assert fake_ray["children"] == [] and not node.started_node
    assert fake_ray["inits"] == ["ray-head:6379"]
    node.leave()
    assert not fake_ray["connected"]


def test_no_address_means_a_ray_of_its_own_and_no_ray_start(fake_ray):
    RayNode.join(None).leave()
    assert fake_ray["children"] == [] and fake_ray["inits"] == [None]


def test_a_failed_connect_ends_the_node_it_started(fake_ray, monkeypatch):
    def refuse(address=None, **options):
        raise RuntimeError("no node of this cluster here")

    monkeypatch.setattr(ray_node.ray, "init", refuse)
    with pytest.raises(RuntimeError):
        RayNode.join("ray-head:6379")
    assert fake_ray["children"][0].signals == ["TERM"]
