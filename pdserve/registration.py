"""A worker's own record in the shared registry: how routers find a `pdserve worker`.

The choice: the worker writes the very record routers write (RedisRegistry.register →
router/redis_registry.py `record_to_fields`), built from its own GetStats as a router's
`monitor.discover` builds it — not an "announce" key of addresses for routers to dial.
Routers already adopt every record in the shared registry (`sync`, each monitor round), so
a worker is routable from its first write: the record carries what routing needs before any
poll (role, KV layout and backends, epoch), and one set of rules (newer epochs win, TTL,
retirement) governs every record, whoever wrote it. An announce key would add a second kind
of entry with its own expiry, and a discovery step in every router.

Lifecycle (one worker incarnation, one epoch):
    register    GetStats → WorkerRecord → registry.register (a new epoch replaces an older
                one, even a retired one)
    keep alive  every `refresh_s`: GetStats → register again: the full record and its TTL
                rewritten, so a Redis that lost it gets it back. Unlike a router's heartbeat
                (update_load) this revives a retired record: the worker is the authority on
                its own liveness, so a router that retired it (it could not reach it for a
                TTL: a partition) does not take a live worker from every router for good.
                A failed GetStats is logged; if `is_lost()` then says the worker is gone,
                keeping alive ends (the caller deregisters and exits).
    deregister  retires this epoch: routers drop it at their next sync, and their heartbeats
                cannot revive it.
A worker that dies without deregistering is no longer refreshed; routers mark it dead when
their polls fail and drop it once the TTL passed (router/monitor.py). Redis outages never
raise here: the registry's circuit breaker skips the write, and the next refresh repeats it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from router.errors import RouterError
from router.registry import WorkerRecord, WorkerRegistry

log = logging.getLogger(__name__)

ReadStats = Callable[[], Awaitable[WorkerRecord]]


class WorkerRegistration:
    """Owns one worker's registration: the record last written and its refreshes."""

    def __init__(self, registry: WorkerRegistry, read_stats: ReadStats, refresh_s: float):
        if refresh_s <= 0:
            raise ValueError(f"refresh_s: must be > 0, got {refresh_s}")
        self._registry = registry
        self._read_stats = read_stats  # this worker's GetStats as a record; raises RouterError
        self._refresh_s = refresh_s
        self._record: WorkerRecord | None = None

    @property
    def record(self) -> WorkerRecord | None:
        """What was last written (None before `register` and after `deregister`)."""
        return self._record

    async def register(self) -> WorkerRecord:
        """Writes the worker's record; raises RouterError when its GetStats fails."""
        record = await self._read_stats()
        await self._registry.register(record)
        self._record = record
        log.info("registered %s (%s) at %s", record.worker_id, record.role, record.address)
        return record

    async def refresh(self) -> None:
        """Rewrites the record with the worker's load now (reviving it if a router retired
        it). Raises RouterError when its GetStats fails."""
        assert self._record is not None, "register() first"
        record = await self._read_stats()
        await self._registry.register(record)
        self._record = record

    async def keep_alive(self, is_lost: Callable[[], Awaitable[bool]]) -> None:
        """Refreshes every `refresh_s` until cancelled, or until a refresh failed and
        `is_lost()` says the worker is gone (then it returns)."""
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.refresh()
            except RouterError as error:
                log.warning("registry refresh: the worker did not answer (%s)", error)
                if await is_lost():
                    return

    async def deregister(self) -> None:
        """Retires the registered incarnation (idempotent); routers drop it at their next sync."""
        record, self._record = self._record, None
        if record is not None:
            await self._registry.deregister(record.worker_id, record.epoch)
            log.info("deregistered %s", record.worker_id)
