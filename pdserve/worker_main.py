"""`pdserve worker`: one worker of a role, as a Kubernetes worker pod runs it.

    pdserve worker --role decode --host 0.0.0.0 --port 50061 --metrics-port 9091 \
        --ray-address ray-head:6379 --advertise-host $POD_IP      (env PDSERVE_REDIS_URL)

1. Join the Ray cluster (pdserve/ray_node.py: this machine becomes a node of it unless one
   runs here) and place the worker actor on this node; it loads the model and serves the
   internal Worker API on `host:port`, reporting `advertise_host:port` as its address.
2. Register it in the shared registry in Redis and keep the record fresh every
   `registry_refresh_s` (pdserve/registration.py): routers adopt it at their next round.
3. SIGTERM (or SIGINT): drain it (Drain, then GetStats until drained, at most
   `drain_timeout_s`: pdserve/drain_cli.py), deregister, stop the actor, leave Ray; exit 0
   when it drained, 1 when the timeout cut the drain short. A signal during start-up stops
   what started and exits 0.
If the actor dies meanwhile, the record is retired and the process exits 1 (the pod restarts).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from kv_transfer.pages import Role
from pdserve import auth_flags, layered_config
from pdserve.device_flags import add_device_flags

if TYPE_CHECKING:
    from pdserve.worker_settings import WorkerServiceConfig

log = logging.getLogger(__name__)

DEFAULT_PORT = 50061
DEFAULT_KV_PORT = 50071


def add_worker(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML file of worker settings")
    parser.add_argument("--role", choices=["prefill", "decode", "both"], help="(required)")
    parser.add_argument("--worker-id", dest="worker_id", help="default <role>-<host name>")
    parser.add_argument("--host", help="interface the internal gRPC server binds")
    parser.add_argument("--port", type=int, help=f"internal gRPC port (default {DEFAULT_PORT})")
    parser.add_argument(
        "--advertise-host", dest="advertise_host", help="host routers dial (e.g. the pod IP)"
    )
    parser.add_argument(
        "--kv-tcp-port",
        dest="kv_tcp_port",
        type=int,
        help=f"port a prefill worker serves KV to decode workers on (default {DEFAULT_KV_PORT})",
    )
    parser.add_argument(
        "--metrics-port", dest="metrics_port", type=int, help="Prometheus /metrics port"
    )
    parser.add_argument(
        "--health-port",
        dest="health_port",
        type=int,
        help="plaintext port serving only grpc.health.v1 (probes, when the internal edge is TLS)",
    )
    parser.add_argument(
        "--ray-address", dest="ray_address", help="GCS host:port of the Ray cluster to join"
    )
    parser.add_argument("--model", help="alias (smollm2-135m, tiny), HF directory or .gguf file")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], help="weights and KV")
    add_device_flags(parser)
    parser.add_argument(
        "--drain-timeout",
        dest="drain_timeout_s",
        type=float,
        help="seconds SIGTERM waits for the worker to drain before stopping it",
    )
    auth_flags.add_server_flags(parser, public=False)
    parser.set_defaults(run=run_worker)


def worker_settings(args: argparse.Namespace) -> WorkerServiceConfig:
    """flags > PDSERVE_* > --config YAML > defaults; ValueError naming the setting at fault."""
    from pdserve.worker_settings import WorkerServiceConfig  # loads torch: not for --help

    flags = {key: value for key, value in vars(args).items() if key not in ("run", "config")}
    return layered_config.load(WorkerServiceConfig, args.config, auth_flags.sectioned(flags))


def run_worker(args: argparse.Namespace) -> int:
    try:
        settings = worker_settings(args)
    except ValueError as exc:
        print(f"pdserve worker: {layered_config.describe(exc)}", file=sys.stderr)
        return 2
    from engine.weights import resolve_model

    try:
        model_dir = resolve_model(settings.model, settings.model_cache_dir)
    except ValueError as exc:
        print(f"pdserve worker: model: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return asyncio.run(WorkerProcess(settings, model_dir).run())


class WorkerProcess:
    """Owns the actor, its registration and the Ray connection of one `pdserve worker`."""

    def __init__(self, settings: WorkerServiceConfig, model_dir: Path) -> None:
        self.settings = settings
        self.model_dir = model_dir
        self._stopping = asyncio.Event()

    async def run(self) -> int:
        from pdserve.ray_node import RayNode

        node = RayNode.join(self.settings.ray_address)
        # After ray.init, which installs a SIGTERM handler of its own.
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, self._stopping.set)
        try:
            return await self._serve(node, self.model_dir)
        finally:
            node.leave()

    async def _serve(self, node, model_dir: Path) -> int:
        from pdserve.worker_lifecycle import WorkerLifecycle

        actor_class, config = self._actor()
        lifecycle = WorkerLifecycle(self.settings, node.place(actor_class, config, model_dir))
        try:
            return await self._serve_until_stopped(lifecycle)
        finally:
            await lifecycle.close()

    async def _serve_until_stopped(self, lifecycle) -> int:
        starting = asyncio.create_task(lifecycle.start())
        if not await self._first_before_stop(starting):
            starting.cancel()
            log.info("stopped while starting")
            return 0
        try:
            starting.result()
        except Exception:
            log.exception("worker %s failed to start", lifecycle.worker_id)
            return 1
        print(f"pdserve worker {lifecycle.worker_id} ready at {lifecycle.address}", flush=True)
        refreshing = lifecycle.keep_registered()
        if await self._first_before_stop(refreshing):
            if not refreshing.cancelled() and refreshing.exception() is not None:
                log.error("registry refresh failed", exc_info=refreshing.exception())
            log.error("worker %s lost: retiring its record, exiting", lifecycle.worker_id)
            return 1
        return 0 if await lifecycle.drain() else 1

    def _actor(self) -> tuple[type, object]:
        config = self.settings.actor_config()
        if self.settings.role is Role.PREFILL:
            from prefill_worker.actor import PrefillWorker

            return PrefillWorker, config
        from decode_worker.actor import DecodeWorker

        return DecodeWorker, config

    async def _first_before_stop(self, task: asyncio.Task) -> bool:
        """Whether `task` ended before a stop signal came (if not, it is left running)."""
        stop = asyncio.create_task(self._stopping.wait())
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        return task.done()
