"""One placed worker actor from start to stop, as `pdserve worker` (worker_main.py) drives it.

start            wait until the actor serves (it loads the model), then register it
keep registered  refresh the record until stopped; returns if the actor died
drain            Drain, then GetStats until drained or `drain_timeout_s` (drain_cli.py)
close            stop refreshing, deregister (retire the record), stop and kill the
                 actor, close the Redis and gRPC clients — whatever of it started
"""

from __future__ import annotations

import asyncio
import logging

import grpc
import ray
from ray.exceptions import RayActorError

from pdserve.channels import open_channel
from pdserve.drain_cli import DrainOutcome, drain_worker
from pdserve.registration import WorkerRegistration
from pdserve.v1 import worker_pb2_grpc
from pdserve.worker_settings import WorkerServiceConfig
from pdserve.workers import MAX_MESSAGE_BYTES
from router.redis_registry import RedisRegistry
from router.registry import WorkerRecord
from router.tasks import stop_task
from router.worker_client import WorkerClients

log = logging.getLogger(__name__)

_RPC_TIMEOUT_S = 5.0
_STOP_TIMEOUT_S = 30.0
_OVERLOAD_RETRY_S = 0.5  # WorkerClients wants one; GetStats is never refused as overload


class WorkerLifecycle:
    """Owns the actor handle, its registration and the clients that reach it."""

    def __init__(self, settings: WorkerServiceConfig, actor: ray.actor.ActorHandle) -> None:
        self._settings = settings
        self._actor = actor
        self.worker_id = settings.registered_id
        self.address = ""  # known once the actor serves
        self._clients = WorkerClients(
            MAX_MESSAGE_BYTES,
            _OVERLOAD_RETRY_S,
            settings.internal_tls,
            settings.internal_auth_token,
        )
        self._registry = RedisRegistry(settings.redis_url, settings.registry_ttl_s)
        self._registration = WorkerRegistration(
            self._registry, self._read_stats, settings.registry_refresh_s
        )
        self._keep_alive: asyncio.Task[None] | None = None

    async def start(self) -> WorkerRecord:
        """Waits for the actor to serve (raises RayActorError if it failed to start) and
        registers it."""
        identity = await self._actor.identity.remote()
        self.address = identity.address
        return await self._registration.register()

    def keep_registered(self) -> asyncio.Task[None]:
        """Refreshes the record from now until `close`; the task ends early only when the
        actor died."""
        self._keep_alive = asyncio.create_task(
            self._registration.keep_alive(self._actor_lost), name="registry-refresh"
        )
        return self._keep_alive

    async def drain(self) -> bool:
        """Drains the worker for at most `drain_timeout_s`; returns whether it drained."""
        timeout_s = self._settings.drain_timeout_s
        log.info("draining %s for at most %.1f s", self.worker_id, timeout_s)
        channel = open_channel(
            self.address,
            self._settings.internal_tls,
            self._settings.internal_auth_token,
            MAX_MESSAGE_BYTES,
        )
        try:
            stub = worker_pb2_grpc.WorkerStub(channel)
            outcome = await asyncio.to_thread(drain_worker, stub, timeout_s)
        except grpc.RpcError as error:
            log.warning("%s: drain failed (%s), stopping it", self.worker_id, error.code().name)
            return False
        finally:
            channel.close()
        if outcome is not DrainOutcome.DRAINED:
            log.warning("%s: %s, stopping it anyway", self.worker_id, outcome.value)
        return outcome is DrainOutcome.DRAINED

    async def close(self) -> None:
        task, self._keep_alive = self._keep_alive, None
        if task is not None:
            await stop_task(task)  # a lost cancel (Python 3.11 wait_for) must not hang exit
        await self._registration.deregister()
        try:
            await asyncio.wait_for(self._actor.stop.remote(0.0), _STOP_TIMEOUT_S)
        except Exception as error:  # dead, wedged or failing: it is killed next either way
            log.warning("%s did not stop cleanly: %s", self.worker_id, type(error).__name__)
        ray.kill(self._actor)
        await self._clients.close()
        await self._registry.close()

    async def _read_stats(self) -> WorkerRecord:
        return await self._clients.get_stats(self.address, _RPC_TIMEOUT_S, wait_for_ready=True)

    async def _actor_lost(self) -> bool:
        try:
            await asyncio.wait_for(self._actor.identity.remote(), _RPC_TIMEOUT_S)
        except RayActorError:
            return True
        except TimeoutError:
            return False  # alive, busy
        return False
