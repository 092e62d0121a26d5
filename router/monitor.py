"""Liveness and load of the registered workers, from periodic GetStats polls.

Each round polls every known worker at once. A reply updates the worker's load and marks
it alive; a reply from a newer epoch of the same worker (it restarted at the same address)
re-registers it; `dead_after_failures` consecutive failures (no reply, or a reply from
something else at that address) mark it dead, which takes it out of routing until a later
reply revives it. A worker that stays dead `drop_dead_after_s` past its last reply is dropped
from the registry (its index entries follow it out through `on_round`). A worker whose last
reply said draining is dropped at once when it is gone (unreachable, or any failure after it
said drained): it drained and exited, and will not come back under that epoch. After every
round `on_round` receives the snapshot (health uses it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from router.errors import RouterError, WorkerUnavailable
from router.registry import WorkerRecord, WorkerRegistry
from router.tasks import stop_task
from router.worker_client import WorkerClients

log = logging.getLogger(__name__)

RoundCallback = Callable[[list[WorkerRecord]], Awaitable[None]]


class WorkerMonitor:
    """Owns the per-worker failure counters and the polling task."""

    def __init__(
        self,
        registry: WorkerRegistry,
        clients: WorkerClients,
        period_s: float,
        dead_after_failures: int,
        rpc_timeout_s: float,
        on_round: RoundCallback | None = None,
        on_report: Callable[[str], None] = lambda worker_id: None,
        drop_dead_after_s: float = float("inf"),
    ) -> None:
        self._registry = registry
        self._clients = clients
        self._period_s = period_s
        self._dead_after = dead_after_failures
        self._timeout_s = rpc_timeout_s
        self._on_round = on_round
        self._on_report = on_report  # a worker's load report was just recorded
        self._drop_dead_after_s = drop_dead_after_s
        self._failures: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    async def discover(self, address: str) -> WorkerRecord:
        """Asks the worker at `address` who it is and registers it; returns the record.

        Raises WorkerUnavailable (or DeadlineExceeded) when it does not answer.
        """
        record = await self._clients.get_stats(address, self._timeout_s, wait_for_ready=True)
        await self._registry.register(record)
        return record

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="worker-monitor")

    async def stop(self) -> None:
        """Ends the polling task, mid-round or not (within tasks.STOP_TIMEOUT_S)."""
        task, self._task = self._task, None
        if task is not None:
            await stop_task(task)

    async def poll_once(self) -> list[WorkerRecord]:
        """One round over every registered worker; returns the snapshot after it."""
        workers = await self._registry.list_workers()
        await asyncio.gather(*(self.poll(worker) for worker in workers))
        await self._drop_long_dead()
        known = {worker.worker_id for worker in workers}
        self._failures = {key: n for key, n in self._failures.items() if key in known}
        snapshot = await self._registry.list_workers()
        if self._on_round is not None:
            await self._on_round(snapshot)
        return snapshot

    async def _drop_long_dead(self) -> None:
        now = time.time()
        for worker in await self._registry.list_workers():
            if not worker.alive and now - worker.last_seen_s > self._drop_dead_after_s:
                log.warning(
                    "worker %s dead since %.0f s: dropped",
                    worker.worker_id,
                    now - worker.last_seen_s,
                )
                await self._registry.deregister(worker.worker_id, worker.epoch)

    async def _run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception:  # a bad round must not end monitoring
                log.exception("worker monitor round failed")
            await asyncio.sleep(self._period_s)

    async def poll(self, worker: WorkerRecord) -> None:
        """Polls one worker now and records what it reports (or the failure)."""
        try:
            reported = await self._clients.get_stats(worker.address, self._timeout_s)
        except RouterError as error:
            if _drained_and_gone(worker, error):
                log.info("worker %s drained and gone: dropped", worker.worker_id)
                await self._registry.deregister(worker.worker_id, worker.epoch)
            else:
                await self._count_failure(worker)
            return
        if reported.worker_id != worker.worker_id or reported.epoch < worker.epoch:
            await self._count_failure(worker)
        elif reported.epoch > worker.epoch:
            self._failures.pop(worker.worker_id, None)
            await self._registry.register(reported)
        else:
            self._failures.pop(worker.worker_id, None)
            await self._registry.update_load(worker.worker_id, worker.epoch, reported.load)
            self._on_report(worker.worker_id)

    async def _count_failure(self, worker: WorkerRecord) -> None:
        failures = self._failures.get(worker.worker_id, 0) + 1
        self._failures[worker.worker_id] = failures
        if failures >= self._dead_after and worker.alive:
            log.warning("worker %s at %s marked dead", worker.worker_id, worker.address)
            await self._registry.mark_dead(worker.worker_id, worker.epoch)


def _drained_and_gone(worker: WorkerRecord, error: RouterError) -> bool:
    """A worker that said it was draining no longer answers: it finished and exited."""
    return worker.load.drained or (worker.load.draining and isinstance(error, WorkerUnavailable))
