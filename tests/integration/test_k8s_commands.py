"""The commands Kubernetes pods run, as subprocesses on one machine: `pdserve router` (no worker
given: Redis is its only source), `pdserve worker` ×2 (prefill, decode; `tiny` model) joining
the session's Ray cluster, and `pdserve drain` (the preStop hook).

One scenario, in order:
1. the router finds both workers through the registry; a greedy Generate through it equals
   HF transformers' greedy tokens, its KV handed over the tcp backend (the router is told to
   use it, as it would pick it for pods on two nodes: no KV group, no shared memory);
2. `pdserve drain` on the decode worker exits 0; the router shows it draining and routes
   nothing more to it (no decode worker left: UNAVAILABLE);
3. SIGTERM on each worker: it deregisters (the router's GetServerInfo stops listing it),
   its actor process ends, and it exits 0;
4. SIGTERM on the router: exit 0. No process is left.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from pdserve import client
from pdserve.v1 import generation_pb2, worker_pb2, worker_pb2_grpc
from tests.hf_reference import hf_greedy
from tests.integration.cluster_helpers import token_request

START_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 20.0
PROMPT = [1, *range(100, 140)]  # 41 tokens: beyond the colocation threshold, handed off
MAX_TOKENS = 8
# Short periods so the scenario takes seconds: the router polls every 0.2 s and a drained
# worker is one 0.5 s quiet after its last request (longer than the poll, as it must be).
COMMON_ENV = {"PDSERVE_REGISTRY_TTL_S": "3", "PYTHONUNBUFFERED": "1"}
ROUTER_ENV = {
    "PDSERVE_STATS_POLL_PERIOD_S": "0.2",
    "PDSERVE_CONDITIONAL_DISAGGREGATION": "false",
    "PDSERVE_KV_BACKEND": "tcp",
}
WORKER_ENV = {
    "PDSERVE_REGISTRY_REFRESH_S": "1",
    "PDSERVE_DRAIN_QUIET_S": "0.5",
    "PDSERVE_KV_CACHE_MIB": "32",
}


class Command:
    """One `python -m pdserve …` child in its own session, its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pdserve", *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=os.environ | COMMON_ENV | env,
            )

    def terminate_and_wait(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(EXIT_TIMEOUT_S)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log_tail(self) -> str:
        return f"--- {self.name}\n{self.log_path.read_text(errors='replace')[-3000:]}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def commands() -> Iterator[Callable[..., Command]]:
    """Starts commands; whatever is still running at the end is killed, logs shown on failure."""
    started: list[Command] = []
    with tempfile.TemporaryDirectory(prefix="pdserve-k8s-") as log_dir:

        def start(name: str, argv: list[str], env: dict[str, str]) -> Command:
            started.append(Command(name, argv, env, Path(log_dir)))
            return started[-1]

        try:
            yield start
        except BaseException:
            print("\n".join(command.log_tail() for command in started))
            raise
        finally:
            for command in started:
                command.kill()


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.1)


def workers_listed(address: str) -> dict[str, generation_pb2.WorkerInfo]:
    channel, stub = client.connect(address)
    try:
        info = stub.GetServerInfo(generation_pb2.GetServerInfoRequest(), timeout=5)
    except grpc.RpcError:
        return {}
    finally:
        channel.close()
    return {worker.worker_id: worker for worker in info.workers}


def generate(address: str) -> list[int]:
    channel, stub = client.connect(address)
    try:
        request = token_request(PROMPT, MAX_TOKENS, temperature=0.0, ignore_eos=True)
        return client.generate(stub, request, 60).token_ids
    finally:
        channel.close()


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(scope="module")
def hf_tokens(tiny_dir: Path) -> list[int]:
    return hf_greedy(tiny_dir, [PROMPT], MAX_TOKENS, ignore_eos=True)[0]


def kv_fetches(address: str) -> dict[str, int]:
    with grpc.insecure_channel(address) as channel:
        stats = worker_pb2_grpc.WorkerStub(channel).GetStats(
            worker_pb2.GetStatsRequest(), timeout=5
        )
    return dict(stats.kv_fetches)


@dataclass
class Pods:
    router_address: str
    decode_address: str
    router: Command
    workers: dict[str, Command]

    def listed(self) -> dict[str, generation_pb2.WorkerInfo]:
        return workers_listed(self.router_address)

    def decode_id(self) -> str:
        return next(wid for wid, info in self.listed().items() if info.role == "decode")


def start_pods(start: Callable[..., Command], ray_address: str, redis_url: str) -> Pods:
    router_port, prefill_port, decode_port = free_port(), free_port(), free_port()
    redis_env = {"PDSERVE_REDIS_URL": redis_url}
    router = start(
        "router",
        ["router", "--host", "127.0.0.1", "--port", str(router_port), "--model", "tiny"],
        redis_env | ROUTER_ENV,
    )
    workers = {
        role: start(
            role,
            [
                *("worker", "--role", role, "--host", "0.0.0.0", "--port", str(port)),
                *("--advertise-host", "127.0.0.1", "--ray-address", ray_address),
                *("--model", "tiny", "--drain-timeout", "10", "--kv-tcp-port", "0"),
            ],
            redis_env | WORKER_ENV,
        )
        for role, port in (("prefill", prefill_port), ("decode", decode_port))
    }
    pods = Pods(f"127.0.0.1:{router_port}", f"127.0.0.1:{decode_port}", router, workers)
    wait_until(lambda: len(pods.listed()) == 2, START_TIMEOUT_S, "the router lists both workers")
    return pods


def drain_on_prestop(pods: Pods) -> None:
    """`pdserve drain` exits 0; the router sees the worker draining and routes nothing more."""
    drain = subprocess.run(
        [sys.executable, "-m", "pdserve", "drain", "--address", pods.decode_address,
         "--timeout", "20"],
        capture_output=True, text=True, timeout=40,
    )  # fmt: skip
    assert drain.returncode == 0, drain.stderr
    assert "drained in" in drain.stdout
    decode_id = pods.decode_id()
    wait_until(
        lambda: pods.listed()[decode_id].draining, 5, "the router sees the decode worker draining"
    )
    with pytest.raises(grpc.RpcError) as refused:
        generate(pods.router_address)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def stop_workers_by_sigterm(pods: Pods) -> None:
    """Each drains (done already), deregisters, stops its actor and exits 0."""
    actor_pids = [info.pid for info in pods.listed().values()]
    for role, command in pods.workers.items():
        assert command.terminate_and_wait() == 0, role
        wait_until(
            lambda role=role: all(i.role != role for i in pods.listed().values()),
            5,
            f"the router drops the {role} worker",
        )
    assert pods.listed() == {}
    wait_until(lambda: all(map(process_gone, actor_pids)), 10, "the actors' processes end")


def test_router_and_workers_from_the_pod_commands(ray_cluster, redis_url, tiny_dir, hf_tokens):
    ray_address = ray_cluster.get_runtime_context().gcs_address
    with commands() as start:
        pods = start_pods(start, ray_address, redis_url)
        assert pods.listed()[pods.decode_id()].address == pods.decode_address

        assert generate(pods.router_address) == hf_tokens  # 1. routed as on Kubernetes
        assert kv_fetches(pods.decode_address) == {"tcp": 1}
        drain_on_prestop(pods)  # 2.
        stop_workers_by_sigterm(pods)  # 3.
        assert pods.router.terminate_and_wait() == 0  # 4.
