"""The redis store never answers 503 while Redis answers: after an idle restart of Redis (every
pooled connection is dead), the moment Redis is back after an outage, and under a burst at
start while Redis is slow. Plus: a rate limiter leaves its store's clock alone.

A real redis-server (skipped when not installed) behind an in-process gateway under
`state.on_failure: fail_closed`, the policy that turns any store failure into a 503."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import redis

from aigw.config import QuotaConfig, RateLimitConfig, StateConfig
from aigw.limits.shared import SharedAdmission, SharedRateLimiter
from aigw.state.redis import RedisStore
from tests.clock import FakeClock
from tests.conftest import RunningGateway, _short_tmp, make_config
from tests.redis_server import RedisServer
from tests.upstream import Upstream

BODY = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}

#: Busy for ARGV[1] µs on the server's clock: Redis answers nobody meanwhile.
BUSY = """
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start >= tonumber(ARGV[1])
return 1
"""


def gateway_config(upstream: Upstream, url: str) -> Any:
    """Every request is admitted and settled through Redis (rate limit and quota together)."""
    return make_config(
        {"up": upstream.url},
        sock=_short_tmp(),
        state=StateConfig(backend="redis", url=url, on_failure="fail_closed"),
        rate_limit=RateLimitConfig(requests_per_second=1_000_000, burst=1_000_000),
        quota=QuotaConfig(default=10**12),
    )


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
        yield client


async def post(session: aiohttp.ClientSession, gw: RunningGateway) -> tuple[int, str]:
    async with session.post(gw.v1 + "/chat/completions", json=BODY) as resp:
        return resp.status, await resp.text()


def store_of(gw: RunningGateway) -> RedisStore:
    store = gw.gateway.store
    assert isinstance(store, RedisStore)
    return store


async def test_an_idle_restart_of_redis_costs_no_request(
    upstream: Upstream,
    redis_server: RedisServer,
    start_gateway: Callable[..., Any],
    session: aiohttp.ClientSession,
) -> None:
    gw = await start_gateway(gateway_config(upstream, redis_server.url))
    assert isinstance(gw.gateway.limits.admission, SharedAdmission)
    # Several pooled connections, all of which the restart kills.
    warm = await asyncio.gather(*(post(session, gw) for _ in range(20)))
    assert [status for status, _ in warm] == [200] * 20
    await asyncio.to_thread(redis_server.stop)
    await asyncio.to_thread(redis_server.start)  # answers again from here on

    after = await asyncio.gather(*(post(session, gw) for _ in range(20)))
    after += [await post(session, gw) for _ in range(20)]
    assert [status for status, _ in after] == [200] * 40, after[:3]
    assert store_of(gw).outages == 0  # a dead pooled connection is not an outage


async def test_fail_closed_serves_every_request_from_the_moment_redis_answers_again(
    upstream: Upstream,
    redis_server: RedisServer,
    start_gateway: Callable[..., Any],
    session: aiohttp.ClientSession,
) -> None:
    gw = await start_gateway(gateway_config(upstream, redis_server.url))
    assert (await post(session, gw))[0] == 200
    await asyncio.to_thread(redis_server.kill)
    refused = [await post(session, gw) for _ in range(5)]
    assert [status for status, _ in refused] == [503] * 5
    assert all('"code": "state_unavailable"' in body for _, body in refused)

    await asyncio.to_thread(redis_server.start)  # answers again from here on
    after = [await post(session, gw) for _ in range(20)]
    assert [status for status, _ in after] == [200] * 20, after[:3]
    assert store_of(gw).outages == 1


async def test_a_burst_at_start_while_redis_is_slow_gets_no_503(
    upstream: Upstream,
    redis_url: str,
    start_gateway: Callable[..., Any],
    session: aiohttp.ClientSession,
) -> None:
    """Redis keeps answering, each call within its timeout, but slowly (another client runs
    long scripts back to back): a burst queues for connections far longer than any fixed
    wait would allow, and every request must still be served."""
    gw = await start_gateway(gateway_config(upstream, redis_url))
    busy_until = time.monotonic() + 4.0
    stop = threading.Event()

    def keep_redis_busy() -> None:
        with redis.Redis.from_url(redis_url) as client:
            busy = client.register_script(BUSY)
            while not stop.is_set() and time.monotonic() < busy_until:
                busy(args=[250_000])  # 0.25 s: well within the store's 1 s socket timeout

    busy = asyncio.create_task(asyncio.to_thread(keep_redis_busy))
    try:
        results = await asyncio.gather(*(post(session, gw) for _ in range(150)))
    finally:
        stop.set()
        await busy
    statuses = collections.Counter(status for status, _ in results)
    assert statuses == {200: 150}, [body for status, body in results if status != 200][:2]
    assert store_of(gw).outages == 0


async def test_a_rate_limiter_leaves_its_store_clock_alone(
    redis_url: str,
) -> None:
    store_clock, limiter_clock = FakeClock(1_710_072_000.0), FakeClock(5.0)
    store = RedisStore(redis_url, clock=store_clock)
    await store.open()
    try:
        limiter = SharedRateLimiter(
            RateLimitConfig(requests_per_second=1, burst=1), store, clock=limiter_clock
        )
        assert store.clock is store_clock
        assert (await limiter.take_request("t")).allowed
        assert not (await limiter.take_request("t")).allowed
        limiter_clock.advance(3600)  # not the clock of the shared buckets: nothing refills
        assert not (await limiter.take_request("t")).allowed
        store_clock.advance(1)
        assert (await limiter.take_request("t")).allowed
    finally:
        await store.close()
