"""RedisPrefixIndex against a real redis-server: AUTH, TLS, and one that misbehaves —
restart, kill, pause.

The rules themselves are checked on both backends in test_prefix_index.py. Here the index
must fail fast with a RedisError (its circuit breaker's cue to route on load alone) and
work again by itself once the server is back, with its scripts reloaded after NOSCRIPT.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import pytest_asyncio
import redis
from redis.exceptions import AuthenticationError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from kv_transfer.pages import page_hashes
from router.prefix_index import ApplyResult, EventBatch, IndexEvent
from router.redis_index import RedisPrefixIndex
from tests.redis_server import RedisServer

PAGE = page_hashes(list(range(4 * 16)), page_size=16)
SOCKET_TIMEOUT_S = 0.25


def first_page(worker: str = "w0") -> EventBatch:
    return EventBatch(worker, epoch=1, events=(IndexEvent(True, PAGE[0], 1),), last_seq=1)


@pytest_asyncio.fixture(loop_scope="function")
async def index(redis_url):
    index = RedisPrefixIndex(redis_url, ttl_s=60.0, socket_timeout_s=SOCKET_TIMEOUT_S)
    yield index
    await index.close()


async def test_the_password_comes_from_the_url():
    with RedisServer(password="s3cret") as server:
        authed = RedisPrefixIndex(server.url, ttl_s=60.0)
        anonymous = RedisPrefixIndex(server.url.replace(":s3cret@", ""), ttl_s=60.0)
        wrong = RedisPrefixIndex(server.url.replace("s3cret", "guess"), ttl_s=60.0)
        try:
            assert await authed.apply(first_page()) == ApplyResult(1)
            assert await authed.lookup(PAGE) == {"w0": 1}
            for intruder in (anonymous, wrong):
                with pytest.raises(AuthenticationError):
                    await intruder.lookup(PAGE)
        finally:
            for index in (authed, anonymous, wrong):
                await index.close()


async def test_tls_comes_from_a_rediss_url_and_plain_text_is_refused():
    with RedisServer(password="s3cret", tls=True) as server:
        assert server.url.startswith("rediss://:s3cret@")
        secure = RedisPrefixIndex(server.url, ttl_s=60.0)
        plain = RedisPrefixIndex(server.url.split("?")[0].replace("rediss", "redis"), ttl_s=60.0)
        try:
            assert await secure.apply(first_page()) == ApplyResult(1)
            assert await secure.lookup(PAGE) == {"w0": 1}
            with pytest.raises(RedisError):
                await plain.lookup(PAGE)
        finally:
            for index in (secure, plain):
                await index.close()


async def test_keys_stay_under_the_index_prefix_and_leave_with_their_worker(redis_url):
    """RedisRegistry shares the Redis and the key prefix; expired workers leave nothing."""
    index = RedisPrefixIndex(redis_url, ttl_s=0.2)
    try:
        await index.apply(first_page("w0"))
        await asyncio.sleep(0.3)
        await index.apply(first_page("w1"))
    finally:
        await index.close()
    with redis.Redis.from_url(redis_url) as client:
        assert sorted(client.keys()) == [
            b"pdserve:index:meta:w1",
            b"pdserve:index:pages:w1",
            b"pdserve:index:workers",
        ]
        assert client.zrange("pdserve:index:workers", 0, -1) == [b"w1"]


async def test_scripts_are_reloaded_after_a_restart(redis_server, index):
    """The pooled connection is dead and the new process holds no scripts: each call
    reconnects once, and each script meets NOSCRIPT once, then loads."""
    await index.apply(first_page())
    redis_server.restart()
    assert await index.lookup(PAGE) == {}
    assert await index.apply(first_page()) == ApplyResult(1)
    await index.refresh(["w0"])
    assert await index.lookup(PAGE) == {"w0": 1}


async def test_a_killed_server_fails_every_call_at_once(redis_server, index):
    await index.apply(first_page())  # the pool holds a connection to the dead server
    redis_server.kill()
    calls = [
        lambda: index.apply(first_page()),
        lambda: index.lookup(PAGE),
        lambda: index.refresh(["w0"]),
        lambda: index.purge("w0"),
    ]
    for call in calls:
        started_s = time.monotonic()
        with pytest.raises(RedisError):
            await call()
        assert time.monotonic() - started_s < 1.0
    redis_server.restart()
    assert await index.apply(first_page()) == ApplyResult(1)


async def test_a_paused_server_times_out_within_the_socket_timeout(redis_server, index):
    await index.apply(first_page())
    redis_server.pause()
    started_s = time.monotonic()
    with pytest.raises(RedisTimeoutError):
        await index.lookup(PAGE)
    assert time.monotonic() - started_s < SOCKET_TIMEOUT_S + 0.25
    redis_server.resume()
    assert await index.lookup(PAGE) == {"w0": 1}
