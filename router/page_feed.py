"""Feeds the prefix index from every live worker's WatchPageEvents stream.

One asyncio task per followed worker incarnation (worker_id, epoch, address):

    follow   open the stream from the cursor (epoch, seq); apply each batch to the index;
             the cursor advances to the batch's last_seq
    resync   the index reports a gap, or rejects a batch (Redis down: the breaker is open):
             the cursor is dropped, so the next stream opens with a snapshot of the worker's
             whole cache — after an outage the index holds what the worker holds now, never
             what it held before
    retry    the stream fails (worker restarting or gone) or the index does: wait, reopen;
             the wait doubles from `retry_s` up to `max_retry_s` while failures repeat
    stop     `sync` no longer lists the incarnation alive: the task is stopped (tasks.py:
             cancelled until it ends, within a deadline) and, when the worker is gone or
             restarted, its entries are purged from the index

`resync()` restarts every stream from a snapshot: the router calls it when the index's circuit
breaker closes again after an outage. `sync(workers)` runs after every monitor round; it also refreshes the live workers' entries in
the index (their expiry follows the workers' liveness, like registry heartbeats).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from contextlib import aclosing
from dataclasses import dataclass

from router.errors import RouterError
from router.prefix_index import PrefixIndex
from router.registry import WorkerRecord
from router.tasks import stop_task
from router.worker_client import WorkerClients

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Incarnation:
    worker_id: str
    epoch: int
    address: str


class PageEventFeed:
    """Owns the per-worker stream tasks and their cursors."""

    def __init__(
        self,
        index: PrefixIndex,
        clients: WorkerClients,
        retry_s: float = 0.25,
        max_retry_s: float = 4.0,
    ) -> None:
        self._index = index
        self._clients = clients
        self._retry_s = retry_s
        self._max_retry_s = max_retry_s
        self._tasks: dict[_Incarnation, asyncio.Task[None]] = {}

    @property
    def followed(self) -> list[str]:
        return sorted(incarnation.worker_id for incarnation in self._tasks)

    async def sync(self, workers: Iterable[WorkerRecord]) -> None:
        """Follows exactly the live incarnations in `workers`; purges those that are gone."""
        live = {_Incarnation(w.worker_id, w.epoch, w.address) for w in workers if w.alive}
        for incarnation in [i for i in self._tasks if i not in live]:
            await self._unfollow(incarnation)
            if not any(i.worker_id == incarnation.worker_id for i in live):
                await self._quietly(self._index.purge(incarnation.worker_id))
        for incarnation in live - self._tasks.keys():
            self._tasks[incarnation] = asyncio.create_task(
                self._follow(incarnation), name=f"page-events-{incarnation.worker_id}"
            )
        await self._quietly(self._index.refresh(i.worker_id for i in live))

    def resync(self) -> None:
        """Restarts every stream from a snapshot (the index came back after an outage and may
        hold entries that went stale meanwhile, or none)."""
        for incarnation, task in list(self._tasks.items()):
            task.cancel()
            self._tasks[incarnation] = asyncio.create_task(
                self._follow(incarnation), name=f"page-events-{incarnation.worker_id}"
            )

    async def stop(self) -> None:
        """Ends every stream task (each within tasks.STOP_TIMEOUT_S)."""
        for incarnation in list(self._tasks):
            await self._unfollow(incarnation)

    async def _unfollow(self, incarnation: _Incarnation) -> None:
        task = self._tasks.pop(incarnation, None)
        if task is not None:
            await stop_task(task)

    async def _follow(self, incarnation: _Incarnation) -> None:
        seq = -1  # no cursor: the first stream starts with a snapshot
        wait_s = self._retry_s
        while True:
            failed = True
            try:
                seq = await self._stream(incarnation, seq)
                failed = False
            except RouterError as error:
                log.debug("page events of %s: %s", incarnation.worker_id, error)
            except Exception:  # the index failed: resync once it accepts again
                log.debug("page events of %s not applied", incarnation.worker_id, exc_info=True)
                seq = -1
            wait_s = min(wait_s * 2, self._max_retry_s) if failed else self._retry_s
            await asyncio.sleep(wait_s)

    async def _stream(self, incarnation: _Incarnation, seq: int) -> int:
        """Applies batches until the stream ends or a gap needs a snapshot; returns the cursor."""
        epoch = incarnation.epoch if seq >= 0 else 0
        batches = self._clients.watch_page_events(
            incarnation.worker_id, incarnation.address, epoch, max(seq, 0)
        )
        async with aclosing(batches):
            async for batch in batches:
                if batch.epoch != incarnation.epoch:
                    return -1  # another incarnation answers at this address: sync replaces us
                result = await self._index.apply(batch)
                if result.gap:
                    return -1
                seq = batch.last_seq
        return seq

    async def _quietly(self, call) -> None:
        try:
            await call
        except Exception:  # the index is a hint; its own breaker reports outages
            log.debug("prefix index call failed", exc_info=True)
