"""The worker registry shared by router replicas through Redis, without routing depending on it.

Each replica keeps a local InMemoryRegistry, the one routing reads (no Redis round trip per
request), and mirrors it to Redis through a CircuitBreaker:

    register     local first (StaleEpoch as in memory), then writes the full record.
    update_load  local; the monitor calls it after every successful GetStats poll, so it is
                 the heartbeat: it rewrites the full record and its TTL (`ttl_s`), which also
                 restores a record that a restarted Redis lost.
    deregister   local, then retires that incarnation in Redis: heartbeats of a retired
                 incarnation are refused (and keep it retired `ttl_s` longer); only a newer
                 epoch or an explicit register replaces it.
    mark_dead    local only; the Redis record expires unless another replica hears from it.
    sync         once per monitor round: one Redis round trip reads every record; registers
                 locally what other replicas (or a launcher) registered, or a newer epoch; drops
                 locally retired incarnations and workers whose record vanished and that this
                 replica has not seen alive within `ttl_s`. Returns the dropped ids (purge
                 their index entries).
A record never replaces a newer epoch, in Redis or locally. When Redis is unavailable every
method still updates the local registry and returns normally; `sync` returns []. The outage
is logged once, when the breaker opens.

Keys (`P` = key_prefix):
    P:workers          SET of worker ids (ids whose record expired are pruned by `sync`)
    P:worker:<id>      HASH, PEXPIRE ttl_s: worker_id address role epoch node pid transport
                       kv_backends (comma-separated) device (cpu|cuda; absent or unknown:
                       cpu) layout (JSON) seen_unix_s retired (0|1),
                       every WorkerLoad field (integers; flags 0|1: queue_len running
                       pages_in_use pages_total ... draining drained), and pages_free
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar, get_type_hints

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from kv_transfer.pages import KVLayout, Role, TransportBackend, known_backends
from router.breaker import BreakerState, CircuitBreaker, DependencyUnavailable
from router.registry import (
    InMemoryRegistry,
    StaleEpoch,
    WorkerLoad,
    WorkerRecord,
    WorkerRegistry,
    known_device,
)

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

# Epochs are time_ns values, beyond a Lua number's exact integers: compared as decimal strings.
_OLDER = """
local function older(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
"""
# KEYS: record, id set. ARGV: worker_id, epoch, ttl_ms, revive (1: a register, 0: a heartbeat),
# then field/value pairs. Writes unless Redis holds a newer epoch, or this epoch retired and
# this is a heartbeat (which then only extends the retirement). Returns 1 when written.
_UPSERT = (
    _OLDER
    + """
local known = redis.call('HGET', KEYS[1], 'epoch')
if known and older(ARGV[2], known) then return 0 end
if known == ARGV[2] and ARGV[4] == '0' and redis.call('HGET', KEYS[1], 'retired') == '1' then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""
)
# KEYS: record, id set. ARGV: worker_id, epoch, ttl_ms. Retires that epoch (a missing record
# becomes a tombstone) unless Redis holds a newer one.
_RETIRE = (
    _OLDER
    + """
local known = redis.call('HGET', KEYS[1], 'epoch')
if known and older(ARGV[2], known) then return 0 end
redis.call('HSET', KEYS[1], 'worker_id', ARGV[1], 'epoch', ARGV[2], 'retired', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""
)
# KEYS: id set. ARGV: record key prefix. Every record as a flat HGETALL list; prunes the ids
# whose record expired.
_READ_ALL = """
local records = {}
for _, worker_id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local fields = redis.call('HGETALL', ARGV[1] .. worker_id)
  if #fields == 0 then
    redis.call('SREM', KEYS[1], worker_id)
  else
    records[#records + 1] = fields
  end
end
return records
"""

DEFAULT_CALL_TIMEOUT_S = 0.5
_LOAD_TYPES: dict[str, type] = get_type_hints(WorkerLoad)  # int or bool per field


class RedisRegistry(WorkerRegistry):
    """Owns the local registry and this replica's view of the shared one."""

    def __init__(
        self,
        url: str,
        ttl_s: float,
        key_prefix: str = "pdserve",
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s: must be > 0, got {ttl_s}")
        self.ttl_s = ttl_s
        self.breaker = breaker or CircuitBreaker(
            "redis-registry", call_timeout_s=DEFAULT_CALL_TIMEOUT_S
        )
        self.breaker.add_listener(self._log_outage)
        self._local = InMemoryRegistry()
        # One immediate retry replaces a pooled connection that a Redis restart broke; the
        # breaker, not redis-py's backoff, decides when to try again after that. The breaker
        # bounds every call; the connect timeout bounds `close` too: redis-py's disconnect
        # waits under it for the socket to close, which waits for unsent bytes that a paused
        # Redis may never take.
        self._redis = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            retry=Retry(NoBackoff(), retries=1),
            socket_connect_timeout=self.breaker.call_timeout_s,
        )
        self._ids_key = f"{key_prefix}:workers"
        self._record_prefix = f"{key_prefix}:worker:"
        self._upsert = self._redis.register_script(_UPSERT)
        self._retire = self._redis.register_script(_RETIRE)
        self._read_all = self._redis.register_script(_READ_ALL)

    async def register(self, record: WorkerRecord) -> None:
        await self._local.register(record)
        await self._mirror(self._write, record, revive=True)

    async def deregister(self, worker_id: str, epoch: int | None = None) -> bool:
        known = await self._local.get(worker_id)
        removed = await self._local.deregister(worker_id, epoch)
        if epoch is None and known is not None:
            epoch = known.epoch
        if epoch is not None:  # with neither, there is no incarnation to retire
            args = [worker_id, str(epoch), self._ttl_ms]
            await self._mirror(self._retire, keys=self._keys(worker_id), args=args)
        return removed

    async def update_load(self, worker_id: str, epoch: int, load: WorkerLoad) -> bool:
        if not await self._local.update_load(worker_id, epoch, load):
            return False
        record = await self._local.get(worker_id)
        if record is not None:
            await self._mirror(self._write, record, revive=False)
        return True

    async def mark_dead(self, worker_id: str, epoch: int) -> bool:
        return await self._local.mark_dead(worker_id, epoch)

    async def list_workers(self) -> list[WorkerRecord]:
        return await self._local.list_workers()

    async def get(self, worker_id: str) -> WorkerRecord | None:
        return await self._local.get(worker_id)

    async def sync(self) -> list[str]:
        """Merges the shared registry into the local one (rules above); returns dropped ids,
        sorted. Mutates only the local registry (and prunes expired ids from the id set)."""
        rows = await self._mirror(self._read_all, keys=[self._ids_key], args=[self._record_prefix])
        if rows is None:
            return []
        shared = [dict(zip(row[::2], row[1::2], strict=True)) for row in rows]
        retired = {f["worker_id"]: int(f["epoch"]) for f in shared if f.get("retired") == "1"}
        live = {f["worker_id"]: f for f in shared if f.get("retired") != "1"}
        dropped = await self._drop_gone(live, retired)
        for worker_id, fields in live.items():
            await self._adopt(worker_id, fields)
        return dropped

    async def close(self) -> None:
        """Releases the Redis connections, each within the breaker's call timeout; the local
        registry stays readable."""
        await self._redis.aclose()

    def check_integrity(self) -> None:
        self._local.check_integrity()

    async def _drop_gone(
        self, live: dict[str, dict[str, str]], retired: dict[str, int]
    ) -> list[str]:
        dropped = []
        seen_after_s = time.time() - self.ttl_s
        for known in await self._local.list_workers():
            is_retired = retired.get(known.worker_id, -1) >= known.epoch
            vanished = known.worker_id not in live and known.last_seen_s < seen_after_s
            if is_retired or vanished:
                await self._local.deregister(known.worker_id, known.epoch)
                dropped.append(known.worker_id)
        return dropped

    async def _adopt(self, worker_id: str, fields: dict[str, str]) -> None:
        """Registers a shared record locally when it is unknown here or a newer epoch."""
        try:
            record = record_from_fields(fields)
        except (KeyError, ValueError, TypeError):
            log.warning("ignoring malformed registry record of %r: %s", worker_id, fields)
            return
        known = await self._local.get(worker_id)
        if known is None or known.epoch < record.epoch:
            with contextlib.suppress(StaleEpoch):  # a newer one registered meanwhile
                await self._local.register(record)

    async def _write(self, record: WorkerRecord, revive: bool) -> int:
        fields = [item for pair in record_to_fields(record).items() for item in pair]
        args = [record.worker_id, str(record.epoch), self._ttl_ms, int(revive), *fields]
        return await self._upsert(keys=self._keys(record.worker_id), args=args)

    async def _mirror(
        self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T | None:
        """`fn` through the breaker; None when Redis is unavailable (the outage is logged
        once, by `_log_outage`)."""
        try:
            return await self.breaker.call(fn, *args, **kwargs)
        except DependencyUnavailable as error:
            log.debug("registry mirror skipped: %s", error)
            return None

    def _keys(self, worker_id: str) -> list[str]:
        return [self._record_prefix + worker_id, self._ids_key]

    @property
    def _ttl_ms(self) -> int:
        return max(1, round(self.ttl_s * 1000))

    def _log_outage(self, old: BreakerState, new: BreakerState) -> None:
        if old is BreakerState.CLOSED:
            log.warning("shared registry unavailable (%s): routing on the local registry", new)
        elif new is BreakerState.CLOSED:
            log.info("shared registry available again")


def record_to_fields(record: WorkerRecord) -> dict[str, str]:
    """The Redis hash of a record: plain strings, no pickle. Liveness stays per replica."""
    load = record.load
    return {
        "worker_id": record.worker_id,
        "address": record.address,
        "role": record.role.value,
        "epoch": str(record.epoch),
        "node": record.node,
        "pid": str(record.pid),
        "metrics_port": str(record.metrics_port),
        "transport": record.transport.value,
        "kv_backends": ",".join(sorted(backend.value for backend in record.kv_backends)),
        "device": record.device.value,
        "layout": json.dumps(dataclasses.asdict(record.layout), sort_keys=True),
        "seen_unix_s": repr(record.last_seen_s),
        "retired": "0",
        **{name: str(int(getattr(load, name))) for name in _LOAD_TYPES},
        "pages_free": str(load.pages_free),  # for readers of Redis; derived on the way back
    }


def record_from_fields(fields: dict[str, str]) -> WorkerRecord:
    """Inverse of record_to_fields; raises KeyError or ValueError on a malformed hash. Load
    fields and a device it lacks (written by an older replica) keep their defaults (cpu)."""
    load = {name: kind(int(fields[name])) for name, kind in _LOAD_TYPES.items() if name in fields}
    backends = fields["kv_backends"]
    return WorkerRecord(
        worker_id=fields["worker_id"],
        role=Role(fields["role"]),
        address=fields["address"],
        epoch=int(fields["epoch"]),
        layout=KVLayout(**json.loads(fields["layout"])),
        node=fields["node"],
        pid=int(fields["pid"]),
        metrics_port=int(fields.get("metrics_port", 0)),
        transport=TransportBackend(fields["transport"]),
        kv_backends=known_backends(backends.split(",")),
        device=known_device(fields.get("device", "")),
        load=WorkerLoad(**load),
        last_seen_s=float(fields["seen_unix_s"]),
    )
