"""The prefix-cache index in Redis, shared by router replicas (rules: router/prefix_index.py).

Keys, all under `key_prefix`:index (P; RedisRegistry owns the rest of `key_prefix`), in one
standalone Redis database:

    P:workers            ZSET  worker_id -> expiry, ms on Redis's clock (enumerates workers)
    P:meta:<worker_id>   HASH  epoch, seq: the incarnation held and its applied seq
    P:pages:<worker_id>  SET   the raw page hashes the worker holds

A worker's meta and pages keys expire (PEXPIREAT) at the instant its score in P:workers
names, all taken from Redis's TIME, so replicas with skewed clocks agree on expiry; `apply`
drops expired members from P:workers. The lookup script reads pages keys it finds in
P:workers rather than keys it was given, so this needs standalone Redis, not Cluster.

Every method is one round trip: `apply`, `lookup` and `refresh` are Lua scripts (atomic; after
a Redis restart redis-py's Script reloads itself on NOSCRIPT), `purge` one MULTI/EXEC.
Epochs are time_ns values, beyond a Lua number's 2^53, so scripts compare them as decimal
strings; seqs count events and stay far below 2^53.

Failures surface as redis.exceptions.RedisError (ConnectionError, TimeoutError, …) for the
caller's circuit breaker; no wait outlasts socket_timeout_s. The one retry: a ConnectionError
is retried once at once, because a pooled connection the server closed (a Redis restart)
fails on first use. Every method is idempotent, so a retry after a lost reply is safe; only
its ApplyResult then describes the retry (applied 0, no gap), a rare lost snapshot request.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from router.prefix_index import ApplyResult, EventBatch, PrefixIndex

_NOW_MS = """
local clock = redis.call('TIME')
local now_ms = clock[1] * 1000 + math.floor(clock[2] / 1000)
"""

# KEYS: meta, pages, workers. ARGV: worker_id, epoch, last_seq, reset (1/0), ttl_ms, then the
# events: for a reset the hashes; otherwise triples of op ('+' stored, '-' removed), seq, hash.
# Returns {applied, gap, stale} exactly as InMemoryPrefixIndex.apply.
_APPLY = (
    _NOW_MS
    + """
local meta, pages, workers = KEYS[1], KEYS[2], KEYS[3]
local epoch, seq_text, last_seq = ARGV[2], ARGV[3], tonumber(ARGV[3])
local function older(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local function extend()
  local expires_ms = string.format('%d', now_ms + tonumber(ARGV[5]))
  redis.call('PEXPIREAT', meta, expires_ms)
  redis.call('PEXPIREAT', pages, expires_ms)
  redis.call('ZADD', workers, expires_ms, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', workers, '-inf', now_ms)
end

local held = redis.call('HMGET', meta, 'epoch', 'seq')
if held[1] and older(epoch, held[1]) then return {0, 0, 1} end
local applied_seq, held_seq_text = tonumber(held[2]), held[2]
if not held[1] or older(held[1], epoch) then
  redis.call('DEL', pages)
  applied_seq, held_seq_text = 0, '0'
end

if ARGV[4] == '1' then
  if last_seq < applied_seq then  -- an older snapshot of this incarnation: still alive
    extend()
    return {0, 0, 1}
  end
  redis.call('DEL', pages)
  for i = 6, #ARGV, 1000 do  -- unpack() is limited to a few thousand values
    redis.call('SADD', pages, unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
  redis.call('HSET', meta, 'epoch', epoch, 'seq', seq_text)
  extend()
  return {redis.call('SCARD', pages), 0, 0}
end

local num_applied, gap = 0, 0
for i = 6, #ARGV, 3 do
  local seq = tonumber(ARGV[i + 1])
  if seq > applied_seq then
    if num_applied == 0 and seq > applied_seq + 1 then gap = 1 end
    num_applied = num_applied + 1
    redis.call(ARGV[i] == '+' and 'SADD' or 'SREM', pages, ARGV[i + 2])
  end
end
if last_seq <= applied_seq then seq_text = held_seq_text end
redis.call('HSET', meta, 'epoch', epoch, 'seq', seq_text)
extend()
return {num_applied, gap, 0}
"""
)

# KEYS: workers. ARGV: pages key prefix, then the page hashes h_0..h_n-1.
# Returns {worker_id, leading count, ...} for live workers holding h_0. Each worker's scan
# stops at its first miss, checking windows of 1, 2, 4, … hashes: a worker without h_0 costs
# one check, one holding all n about log2(n) SMISMEMBER calls.
_LOOKUP = (
    _NOW_MS
    + """
local num_hashes = #ARGV - 1
local function leading(pages)
  local count, window = 0, 1
  while count < num_hashes do
    local last = math.min(count + window, num_hashes)
    for _, is_held in ipairs(redis.call('SMISMEMBER', pages, unpack(ARGV, count + 2, last + 1))) do
      if is_held == 0 then return count end
      count = count + 1
    end
    window = math.min(window * 2, 256)  -- unpack() takes a few thousand values at most
  end
  return count
end

local found = {}
local live = redis.call('ZRANGE', KEYS[1], '(' .. string.format('%d', now_ms), '+inf', 'BYSCORE')
for _, worker_id in ipairs(live) do
  local count = leading(ARGV[1] .. worker_id)
  if count > 0 then
    found[#found + 1] = worker_id
    found[#found + 1] = count
  end
end
return found
"""
)

# KEYS: workers. ARGV: key prefix, ttl_ms, then worker ids. Only live workers are extended:
# PEXPIREAT answers 0 for a meta key that has expired, which stays gone.
_REFRESH = (
    _NOW_MS
    + """
local expires_ms = string.format('%d', now_ms + tonumber(ARGV[2]))
for i = 3, #ARGV do
  if redis.call('PEXPIREAT', ARGV[1] .. 'meta:' .. ARGV[i], expires_ms) == 1 then
    redis.call('PEXPIREAT', ARGV[1] .. 'pages:' .. ARGV[i], expires_ms)
    redis.call('ZADD', KEYS[1], 'XX', expires_ms, ARGV[i])
  end
end
"""
)


class RedisPrefixIndex(PrefixIndex):
    """The shared index; the URL carries AUTH (redis://:password@host) and TLS (rediss://).
    At most `max_connections` connections: a slow Redis makes callers wait for one (up to
    the socket timeout), never opens one per request."""

    def __init__(
        self,
        url: str,
        ttl_s: float,
        key_prefix: str = "pdserve",
        socket_timeout_s: float = 0.25,
        max_connections: int = 32,
    ) -> None:
        super().__init__(ttl_s)
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=socket_timeout_s,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            retry=Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,)),
        )
        self._redis = Redis.from_pool(pool)  # owns the pool: aclose() closes it
        self._prefix = f"{key_prefix}:index:"
        self._workers_key = f"{self._prefix}workers"
        self._apply = self._redis.register_script(_APPLY)
        self._lookup = self._redis.register_script(_LOOKUP)
        self._refresh = self._redis.register_script(_REFRESH)

    @property
    def ttl_ms(self) -> int:
        return max(1, round(self.ttl_s * 1000))

    async def apply(self, batch: EventBatch) -> ApplyResult:
        keys = [*self._worker_keys(batch.worker_id), self._workers_key]
        args: list[str | int | bytes] = [batch.worker_id, str(batch.epoch), batch.last_seq]
        args += [int(batch.reset), self.ttl_ms]
        for event in batch.events:
            if not batch.reset:
                args += [b"+" if event.stored else b"-", event.seq]
            args.append(event.page_hash)
        applied, gap, stale = await self._apply(keys, args)
        return ApplyResult(applied, gap=bool(gap), stale=bool(stale))

    async def lookup(self, page_hashes: Sequence[bytes]) -> dict[str, int]:
        found = await self._lookup([self._workers_key], [f"{self._prefix}pages:", *page_hashes])
        return {
            worker_id.decode(): count
            for worker_id, count in zip(found[::2], found[1::2], strict=True)
        }

    async def refresh(self, worker_ids: Iterable[str]) -> None:
        worker_ids = list(worker_ids)
        if worker_ids:
            await self._refresh([self._workers_key], [self._prefix, self.ttl_ms, *worker_ids])

    async def purge(self, worker_id: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(*self._worker_keys(worker_id))
            pipe.zrem(self._workers_key, worker_id)
            await pipe.execute()

    async def close(self) -> None:
        await self._redis.aclose()

    def _worker_keys(self, worker_id: str) -> tuple[str, str]:
        return f"{self._prefix}meta:{worker_id}", f"{self._prefix}pages:{worker_id}"
