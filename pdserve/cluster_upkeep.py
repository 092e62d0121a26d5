"""What a local cluster does beside serving: forget workers that exited on their own, and
unlink the shm KV segments that dead workers left behind.

Lifecycle: `ClusterUpkeep(workers)` shares the launcher's table of workers (the launcher owns
it; upkeep only removes workers whose actor is dead) -> `start()` on the cluster's event loop
starts both periodic tasks -> `stop()` cancels them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import ray

from kv_transfer.shm_segments import sweep_orphan_segments
from pdserve.workers import WorkerIdentity
from router.tasks import stop_task

log = logging.getLogger(__name__)

_SEGMENT_SWEEP_PERIOD_S = 1.0
_EXIT_CHECK_PERIOD_S = 2.0
_EXIT_CHECK_TIMEOUT_S = 10.0


@dataclass(slots=True)
class WorkerHandle:
    identity: WorkerIdentity
    actor: ray.actor.ActorHandle


class ClusterUpkeep:
    def __init__(self, workers: dict[str, WorkerHandle]) -> None:
        self._workers = workers
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._sweep_segments(), name="shm-sweep"),
            asyncio.create_task(self._watch_exits(), name="worker-exits"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            await stop_task(task)
        self._tasks = []

    async def _watch_exits(self) -> None:
        """A worker that ends on its own (SIGTERM: it drains, then exits) is forgotten within
        a period, so pools and Scale count only live workers."""
        while True:
            await asyncio.sleep(_EXIT_CHECK_PERIOD_S)
            for worker_id in await self._exited():
                if self._workers.pop(worker_id, None) is not None:
                    log.info("worker %s exited on its own: forgotten", worker_id)

    async def _exited(self) -> list[str]:
        """Workers whose actor is dead; one that is slow to answer counts as alive."""
        handles = list(self._workers.items())
        replies = await asyncio.gather(
            *(_answer(h.actor.identity.remote()) for _, h in handles), return_exceptions=True
        )
        return [
            worker_id
            for (worker_id, _), reply in zip(handles, replies, strict=True)
            if isinstance(reply, ray.exceptions.RayActorError)
        ]

    async def _sweep_segments(self) -> None:
        """A worker killed without closing (SIGKILL, OOM) leaves its shm KV exports in
        /dev/shm, and nothing else would unlink them before a new worker starts on this node:
        unlink every segment whose creating process is gone, each period."""
        while True:
            await asyncio.sleep(_SEGMENT_SWEEP_PERIOD_S)
            swept = await asyncio.to_thread(sweep_orphan_segments)
            if swept:
                log.info("unlinked %d KV segments of dead workers", swept)


async def _answer(ref: ray.ObjectRef) -> object:
    return await asyncio.wait_for(ref, _EXIT_CHECK_TIMEOUT_S)
