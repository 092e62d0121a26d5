"""The router's registry and prefix index, as its config asks: embedded or shared in Redis.

Without `redis_url`: an InMemoryRegistry and an InMemoryPrefixIndex (one router). With it: a
RedisRegistry (the local copy routes; Redis shares it between replicas) and a RedisPrefixIndex,
each behind its own circuit breaker, so a Redis outage degrades routing (load-only, the local
registry) and never fails a request.
"""

from __future__ import annotations

from router.breaker import CircuitBreaker, GuardedPrefixIndex
from router.config import RouterConfig
from router.prefix_index import InMemoryPrefixIndex, PrefixIndex
from router.registry import InMemoryRegistry, WorkerRegistry


def make_registry(config: RouterConfig) -> WorkerRegistry:
    if not config.redis_url:
        return InMemoryRegistry()
    from router.redis_registry import RedisRegistry

    return RedisRegistry(
        config.redis_url, config.registry_ttl_s, breaker=_breaker(config, "registry")
    )


def make_index(config: RouterConfig) -> GuardedPrefixIndex:
    inner: PrefixIndex
    if config.redis_url:
        from router.redis_index import RedisPrefixIndex

        inner = RedisPrefixIndex(
            config.redis_url, config.registry_ttl_s, socket_timeout_s=config.redis_write_timeout_s
        )
    else:
        inner = InMemoryPrefixIndex(config.registry_ttl_s)
    breaker = _breaker(config, "prefix-index")
    return GuardedPrefixIndex(inner, breaker, lookup_timeout_s=config.redis_timeout_s)


def _breaker(config: RouterConfig, name: str) -> CircuitBreaker:
    return CircuitBreaker(
        name,
        failure_threshold=config.redis_breaker_failures,
        reset_timeout_s=config.redis_breaker_reset_s,
        call_timeout_s=config.redis_write_timeout_s,
    )
