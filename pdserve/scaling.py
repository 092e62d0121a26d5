"""Live pool sizes of a local cluster: `pdserve scale` → pdserve.v1.Cluster/Scale → PoolScaler.

One Scale, in order:
  1. check the target (`target_sizes`): INVALID_ARGUMENT naming the field for a negative
     size or pools with no route; FAILED_PRECONDITION when a formed KV group would grow
  2. grow: start the missing workers at once (fresh ids: each role's next unused index),
     wait until each serves, register each with the router
  3. shrink: retire the newest workers of each pool, all in parallel; one retirement:
     router.drain_worker (routing skips it at once) → poll it every `drain_poll_s` until
     drained or `drain_timeout_s` passed (then it is stopped anyway, with a warning, and
     reported as not drained) → router.remove_worker → actor stop → ray.kill
Growing before shrinking keeps a route throughout (1P+1D → 1 colocated starts the colocated
worker first). One Scale at a time: one arriving while another runs is refused with ABORTED
rather than queued, since a target chosen before the running Scale may be stale after it;
retry it once that one has returned. A Scale whose caller goes away still runs to its end, so
no worker is left draining but registered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import grpc

from kv_transfer.pages import Role
from pdserve.v1 import cluster_pb2, cluster_pb2_grpc
from router.errors import RouterError
from router.server import RouterServer
from router.tasks import stop_task

log = logging.getLogger(__name__)

_SIZE_FIELDS = {Role.PREFILL: "num_prefill", Role.DECODE: "num_decode", Role.BOTH: "num_colocated"}


class ScaleError(Exception):
    """A Scale refused or failed; the message is safe to send and names the field at fault."""

    code = grpc.StatusCode.INTERNAL


class InvalidScale(ScaleError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class ScaleRefused(ScaleError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ScaleBusy(ScaleError):
    code = grpc.StatusCode.ABORTED


@dataclass(frozen=True, slots=True)
class PoolSizes:
    num_prefill: int = 0
    num_decode: int = 0
    num_colocated: int = 0

    def count(self, role: Role) -> int:
        return getattr(self, _SIZE_FIELDS[role])

    @property
    def has_route(self) -> bool:
        return (self.num_prefill > 0 and self.num_decode > 0) or self.num_colocated > 0

    @classmethod
    def of_roles(cls, roles: Sequence[Role]) -> PoolSizes:
        return cls(*(sum(1 for r in roles if r is role) for role in _SIZE_FIELDS))


@dataclass(frozen=True, slots=True)
class ScaleTarget:
    """What a ScaleRequest asks for; None = keep that pool's size."""

    num_prefill: int | None = None
    num_decode: int | None = None
    num_colocated: int | None = None

    @classmethod
    def from_proto(cls, msg: cluster_pb2.ScaleRequest) -> ScaleTarget:
        return cls(*(getattr(msg, f) if msg.HasField(f) else None for f in _SIZE_FIELDS.values()))

    def given(self) -> dict[str, int]:
        return {f: getattr(self, f) for f in _SIZE_FIELDS.values() if getattr(self, f) is not None}


def target_sizes(current: PoolSizes, target: ScaleTarget, can_grow: bool) -> PoolSizes:
    """The pool sizes `target` leads to from `current`; raises InvalidScale or ScaleRefused."""
    given = target.given()
    for name, size in given.items():
        if size < 0:
            raise InvalidScale(f"{name}: must be ≥ 0; got {size}")
    sizes = replace(current, **given)
    if not sizes.has_route:
        at_fault = [name for name, size in given.items() if size == 0] or list(
            _SIZE_FIELDS.values()
        )
        raise InvalidScale(
            f"{'/'.join(at_fault)}: the pools would leave no route ({sizes.num_prefill} prefill, "
            f"{sizes.num_decode} decode, {sizes.num_colocated} colocated): need ≥ 1 prefill "
            "and ≥ 1 decode, or ≥ 1 colocated"
        )
    growing = [
        name for role, name in _SIZE_FIELDS.items() if sizes.count(role) > current.count(role)
    ]
    if growing and not can_grow:
        raise ScaleRefused(
            f"{growing[0]}: transport gloo formed one KV group of every worker at start, and "
            "a formed group cannot grow; restart the cluster with the new sizes (shrinking "
            "works)"
        )
    return sizes


class WorkerPools(Protocol):
    """What the scaler needs of the cluster (LocalCluster); all on the router's event loop."""

    @property
    def can_grow(self) -> bool:
        """Whether new workers can join (not when a KV group was formed)."""

    def sizes(self) -> PoolSizes: ...

    def worker_ids(self) -> list[str]:
        """Every worker, in start order."""

    def newest(self, role: Role, count: int) -> list[str]:
        """The `count` most recently started workers of `role`, newest first."""

    async def spawn(self, roles: Sequence[Role]) -> list[tuple[str, str]]:
        """Starts one worker per role with a fresh id and returns (worker_id, address) once
        each serves; if one fails, every worker of this call is stopped and it raises."""

    async def stop_worker(self, worker_id: str) -> None:
        """Stops and kills the worker at once (RPCs still running are cut) and forgets it;
        it must be out of the router already."""


@dataclass(frozen=True, slots=True)
class Retired:
    worker_id: str
    drained: bool  # False: stopped at drain_timeout_s, still busy
    drain_s: float

    def to_proto(self) -> cluster_pb2.RemovedWorker:
        return cluster_pb2.RemovedWorker(
            worker_id=self.worker_id, drained=self.drained, drain_s=self.drain_s
        )


class PoolScaler:
    """Owns the running Scale (one at a time); changes pools only through `pools` and
    `router`."""

    def __init__(
        self,
        pools: WorkerPools,
        router: RouterServer,
        drain_timeout_s: float,
        drain_poll_s: float = 0.2,
    ) -> None:
        self._pools = pools
        self._router = router
        self._drain_timeout_s = drain_timeout_s
        self._drain_poll_s = drain_poll_s
        self._running: asyncio.Task[cluster_pb2.ScaleResponse] | None = None  # the one Scale

    def pools_proto(self) -> cluster_pb2.Pools:
        sizes = self._pools.sizes()
        return cluster_pb2.Pools(
            num_prefill=sizes.num_prefill,
            num_decode=sizes.num_decode,
            num_colocated=sizes.num_colocated,
            worker_ids=self._pools.worker_ids(),
        )

    async def scale(self, target: ScaleTarget) -> cluster_pb2.ScaleResponse:
        """Runs one Scale to its end. A caller that goes away (deadline, cancel) does not
        stop it half-way: it finishes on its own, and `close` is what cancels it."""
        if self._running is not None and not self._running.done():
            raise ScaleBusy("another Scale is running; retry once it has returned")
        self._running = asyncio.create_task(self._scale(target), name="pdserve-scale")
        self._running.add_done_callback(_log_unawaited_failure)
        return await asyncio.shield(self._running)

    async def close(self) -> None:
        """Cancels a running Scale (cluster shutdown)."""
        task, self._running = self._running, None
        if task is not None:
            await stop_task(task)

    async def _scale(self, target: ScaleTarget) -> cluster_pb2.ScaleResponse:
        current = self._pools.sizes()
        sizes = target_sizes(current, target, self._pools.can_grow)
        log.info("scaling %s → %s", current, sizes)
        added = await self._grow(current, sizes)
        retired = await self._shrink(current, sizes)
        return cluster_pb2.ScaleResponse(
            added=added, removed=[r.to_proto() for r in retired], pools=self.pools_proto()
        )

    async def _grow(self, current: PoolSizes, sizes: PoolSizes) -> list[str]:
        roles = [r for r in _SIZE_FIELDS for _ in range(sizes.count(r) - current.count(r))]
        if not roles:
            return []
        try:
            started = await self._pools.spawn(roles)
        except Exception as exc:
            log.exception("starting %d workers failed", len(roles))
            raise ScaleError(f"a new worker failed to start ({type(exc).__name__})") from exc
        try:
            for _, address in started:
                await self._router.add_worker(address)
        except RouterError as exc:
            await self._undo_grow([worker_id for worker_id, _ in started])
            raise ScaleError(f"a new worker did not answer the router: {exc.message}") from exc
        return [worker_id for worker_id, _ in started]

    async def _undo_grow(self, worker_ids: list[str]) -> None:
        for worker_id in worker_ids:
            await self._router.remove_worker(worker_id)
            await self._pools.stop_worker(worker_id)

    async def _shrink(self, current: PoolSizes, sizes: PoolSizes) -> list[Retired]:
        leaving = [
            worker_id
            for role in _SIZE_FIELDS
            for worker_id in self._pools.newest(role, current.count(role) - sizes.count(role))
        ]
        return list(await asyncio.gather(*(self._retire(w) for w in leaving)))

    async def _retire(self, worker_id: str) -> Retired:
        started_s = time.monotonic()
        drained = await self._wait_drained(worker_id)
        if not drained:
            log.warning(
                "worker %s not drained after %.1f s: stopping it anyway",
                worker_id,
                self._drain_timeout_s,
            )
        try:
            await self._router.remove_worker(worker_id)
        finally:  # a worker the router could not forget is stopped all the same
            await self._pools.stop_worker(worker_id)
        log.info("worker %s retired (drained: %s)", worker_id, drained)
        return Retired(worker_id, drained, time.monotonic() - started_s)

    async def _wait_drained(self, worker_id: str) -> bool:
        """Asks until drained (drain_worker is idempotent); False at drain_timeout_s."""
        deadline_s = time.monotonic() + self._drain_timeout_s
        while True:
            try:
                if await self._router.drain_worker(worker_id):
                    return True
            except RouterError as exc:  # unreachable for now: keep asking until the deadline
                log.debug("drain of %s: %s", worker_id, exc.message)
            if time.monotonic() >= deadline_s:
                return False
            await asyncio.sleep(self._drain_poll_s)


def _log_unawaited_failure(task: asyncio.Task) -> None:
    """Marks the error retrieved (its caller may be gone) and logs an unexpected one."""
    if task.cancelled():
        return
    error = task.exception()
    if error is not None and not isinstance(error, ScaleError):
        log.error("Scale failed", exc_info=error)


class ClusterServicer(cluster_pb2_grpc.ClusterServicer):
    """pdserve.v1.Cluster: maps ScaleError to its status; nothing else leaks as text."""

    def __init__(self, scaler: PoolScaler) -> None:
        self._scaler = scaler

    async def Scale(self, request, context) -> cluster_pb2.ScaleResponse:
        try:
            return await self._scaler.scale(ScaleTarget.from_proto(request))
        except ScaleError as error:
            await context.abort(error.code, str(error))
        except Exception:  # logged by _log_unawaited_failure
            await context.abort(grpc.StatusCode.INTERNAL, "Scale failed; see the cluster's log")

    async def GetPools(self, request, context) -> cluster_pb2.Pools:
        return self._scaler.pools_proto()


def cluster_service(scaler: PoolScaler) -> Callable[[grpc.aio.Server], None]:
    """The RouterServer `extra_services` hook that serves pdserve.v1.Cluster."""
    return lambda server: cluster_pb2_grpc.add_ClusterServicer_to_server(
        ClusterServicer(scaler), server
    )
