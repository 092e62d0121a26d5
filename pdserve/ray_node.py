"""This machine in the Ray cluster, and one worker actor placed on it (`pdserve worker`).

`RayNode.join(address)` makes this process a Ray driver of the cluster at `address`:
    no address         ray.init(): a Ray instance of this process's own (one machine).
    a node runs here   a raylet process on this machine (what ray.init(address=…) attaches a
                       driver to): ray.init(address) at once.
    none runs here     the machine joins first: this process starts `ray start --address=<it>
                       --block` as its child, then ray.init(address), which waits for the
                       new node to register.
Why a blocking `ray start` that we own, rather than `ray start` returning once the node
daemonized: the node's processes end with that child (its reaper), and `leave()` ends the
child — nothing is left running on a machine that is not a pod, and no `ray stop` (which
ends every Ray process of the machine) is ever needed. It runs in its own session, so a
Ctrl-C meant for us does not take the node down under the actor before it drained. On
Kubernetes the pod's end ends it either way. Limit: a raylet of another cluster on this
machine counts as "a node runs here" (ray.init then reports it found none of this cluster).

`place(...)` starts the actor on this node (NodeAffinitySchedulingStrategy, soft=False): the
pod's own devices serve it; like `pdserve up`, it takes no Ray CPU slot. The actor is owned by
this driver: if this process dies, Ray ends the actor too.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import ray
from ray._private.services import find_node_ids
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

log = logging.getLogger(__name__)

_LEAVE_TIMEOUT_S = 30.0


class RayNode:
    """Owns this process's Ray connection and the `ray start` child, if it started one."""

    def __init__(self, child: subprocess.Popen[bytes] | None) -> None:
        self._child = child

    @classmethod
    def join(cls, address: str | None) -> RayNode:
        child = None
        if address is not None and not find_node_ids():
            log.info("no Ray node on this machine: joining %s (ray start --block)", address)
            child = _start_node(address)
        try:
            ray.init(address=address, configure_logging=False, include_dashboard=False)
        except BaseException:
            cls(child).leave()
            raise
        return cls(child)

    @property
    def started_node(self) -> bool:
        """Whether this process started the machine's Ray node (and ends it in `leave`)."""
        return self._child is not None

    def place(self, actor_class: type, config: object, model_dir: Path) -> ray.actor.ActorHandle:
        """Starts `actor_class(config, model_dir)` as an actor on this node."""
        node_id = ray.get_runtime_context().get_node_id()
        strategy = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
        options = {"num_cpus": 0, "scheduling_strategy": strategy}
        return ray.remote(actor_class).options(**options).remote(config, str(model_dir))

    def leave(self) -> None:
        """Disconnects; ends the node this process started (idempotent)."""
        if ray.is_initialized():
            ray.shutdown()
        child, self._child = self._child, None
        if child is None or child.poll() is not None:
            return
        child.terminate()
        try:
            child.wait(_LEAVE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("ray start did not end within %.0f s: killed", _LEAVE_TIMEOUT_S)
            child.kill()
            child.wait()


def _start_node(address: str) -> subprocess.Popen[bytes]:
    """`ray start --address=<address> --block` as a child sharing our stdout/stderr."""
    ray_cli = Path(sys.executable).with_name("ray")
    command = [str(ray_cli) if ray_cli.exists() else "ray", "start", f"--address={address}"]
    return subprocess.Popen([*command, "--block"], stdin=subprocess.DEVNULL, start_new_session=True)
