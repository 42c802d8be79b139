"""The redis store beyond the shared contract (that one runs in test_state.py/test_quota.py):
several instances on one Redis, override propagation, expiry of keys and of a crashed
instance's reservations, shared token buckets, and outages under both failure policies.

Everything runs against a real redis-server started by the fixtures (skipped when it is not
installed). Time that limits depend on comes from an injected clock."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import redis

from aigw.config import QuotaConfig, RateLimitConfig, RateLimitRule, StateConfig
from aigw.errors import StateUnavailableError
from aigw.hooks.base import Usage
from aigw.limits.quota import QuotaManager
from aigw.limits.shared import SharedRateLimiter
from aigw.state.base import Override, UsageCounters
from aigw.state.redis import RedisStore, redacted_url
from aigw.workers import merge_lb_stats
from tests.clock import FakeClock
from tests.conftest import _short_tmp, make_config
from tests.redis_server import RedisServer
from tests.upstream import Upstream

NOW = 1_710_072_000.0  # 2024-03-10T12:00:00Z


StoreFactory = Callable[..., Awaitable[RedisStore]]


@pytest.fixture
async def make_store() -> AsyncIterator[StoreFactory]:
    stores: list[RedisStore] = []

    async def factory(url: str, **kwargs: Any) -> RedisStore:
        kwargs.setdefault("recovery_interval", 0.02)
        store = RedisStore(url, **kwargs)
        await store.open()
        stores.append(store)
        return store

    yield factory
    for store in stores:
        await store.close()


def sync_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for an event outside the test's control (a recovery task noticing Redis)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


# --- several instances ---------------------------------------------------------------------


async def test_two_instances_never_overshoot_together(
    redis_url: str, make_store: StoreFactory
) -> None:
    a, b = await make_store(redis_url), await make_store(redis_url)
    await a.add_usage("t", "p", 0, 0, 10_000)

    async def one(i: int) -> bool:
        store = a if i % 2 else b
        result = await store.reserve("t", "p", 100, 20_000, reservation_id=i, ttl=60)
        return result.allowed

    results = await asyncio.gather(*(one(i) for i in range(300)))
    assert sum(results) == 100
    [usage] = await b.get_usage([("t", "p")])
    assert usage == UsageCounters(0, 0, 10_000, 10_000)


async def test_reservation_ids_of_instances_do_not_collide(
    redis_url: str, make_store: StoreFactory
) -> None:
    a, b = await make_store(redis_url), await make_store(redis_url)
    assert (await a.reserve("t", "p", 300, 1000, reservation_id=1, ttl=60)).allowed
    assert (await b.reserve("t", "p", 300, 1000, reservation_id=1, ttl=60)).reserved == 600
    await a.commit("t", "p", 300, 10, 10, 20, reservation_id=1)
    [usage] = await b.get_usage([("t", "p")])
    assert usage == UsageCounters(10, 10, 20, 300)


async def test_override_on_one_instance_applies_to_the_next_request_on_another(
    redis_url: str, make_store: StoreFactory
) -> None:
    clock = FakeClock(NOW)
    qa = QuotaManager(await make_store(redis_url), QuotaConfig(default=100), clock=clock)
    qb = QuotaManager(await make_store(redis_url), QuotaConfig(default=100), clock=clock)
    await qb.commit(await qb.reserve("team-a", 50), Usage(30, 20, 50))  # b's view is loaded
    await qa.set_limit("team-a", 10_000)
    # The very next reserve on b sees the new limit (version check in the same round trip).
    reservation = await qb.reserve("team-a", 5_000)
    assert reservation.tokens == 5_000
    [status] = await qb.status("team-a")
    assert (status.limit, status.source) == (10_000, "override")
    await qa.store.set_override("team-a", None)  # the override goes: the config is back
    with pytest.raises(Exception, match="quota"):
        await qb.reserve("team-a", 60)
    # An override with another period moves the usage key too.
    await qa.set_limit("team-a", 200, "monthly")
    assert (await qb.reserve("team-a", 150)).period_key == "monthly:2024-03"


async def test_status_on_another_instance_shows_fresh_overrides(
    redis_url: str, make_store: StoreFactory
) -> None:
    qa = QuotaManager(await make_store(redis_url), QuotaConfig(default=100), clock=FakeClock(NOW))
    qb = QuotaManager(await make_store(redis_url), QuotaConfig(default=100), clock=FakeClock(NOW))
    await qa.set_limit("team-x", 777)
    assert [(s.tenant, s.limit, s.source) for s in await qb.status()] == [
        ("team-x", 777, "override")
    ]


# --- expiry and crashed instances ---------------------------------------------------------


async def test_a_crashed_instance_reservation_expires(
    redis_url: str, make_store: StoreFactory
) -> None:
    clock = FakeClock(NOW)
    crashed = await make_store(redis_url, clock=clock)
    assert (await crashed.reserve("t", "p", 900, 1000, reservation_id=1, ttl=30)).allowed
    # The instance dies without committing: nothing releases the reservation but its TTL.
    survivor = await make_store(redis_url, clock=clock)
    assert not (await survivor.reserve("t", "p", 200, 1000, reservation_id=1, ttl=30)).allowed
    clock.now += 29.9
    assert (await survivor.get_usage([("t", "p")]))[0].reserved == 900
    clock.now += 0.2
    result = await survivor.reserve("t", "p", 200, 1000, reservation_id=2, ttl=30)
    assert (result.allowed, result.reserved) == (True, 200)
    # A late commit of the expired reservation counts its usage and frees nothing twice.
    await crashed.commit("t", "p", 900, 400, 100, 500, reservation_id=1)
    assert (await survivor.get_usage([("t", "p")]))[0] == UsageCounters(400, 100, 500, 200)


async def test_keys_are_namespaced_and_expire(redis_url: str, make_store: StoreFactory) -> None:
    clock = FakeClock(1e10)  # far future, so period ends are too
    store = await make_store(redis_url, clock=clock)
    qm = QuotaManager(store, QuotaConfig(default=1000, period="daily"), clock=clock)
    reservation = await qm.reserve("team-a", 100)
    await qm.commit(reservation, Usage(1, 2, 3))
    await qm.commit(await qm.reserve("team-a", 100), None)  # a reservation that stays
    never = QuotaManager(store, QuotaConfig(default=1000, period="never"), clock=clock)
    await never.commit(await never.reserve("forever", 10), Usage(1, 1, 2))
    limiter = SharedRateLimiter(
        RateLimitConfig(requests_per_second=10, burst=20, tokens_per_minute=600), store
    )
    await limiter.take_request("team-a")
    await limiter.take_tokens("team-a", 100)
    await store.set_override("team-b", Override(5))
    client = sync_client(redis_url)
    keys = set(client.keys("*"))
    assert all(key.startswith("aigw:") for key in keys), keys
    window = qm.window("daily")
    usage_key = f"aigw:u:team-a:{window.key}"
    assert usage_key in keys
    assert client.expiretime(usage_key) == int(window.end) + 2 * 86400
    assert client.ttl("aigw:u:forever:never") == -1  # a `never` quota does not reset
    assert client.pttl("aigw:rl:team-a:req") > 0
    assert client.pttl("aigw:rl:team-a:tok") > 0
    # Every reservation set expires with its period, so nothing outlives it.
    for key in keys:
        if key.startswith("aigw:r:"):
            assert client.ttl(key) > 0
    client.close()


# --- shared token buckets --------------------------------------------------------------------


async def test_shared_request_bucket_across_instances(
    redis_url: str, make_store: StoreFactory
) -> None:
    clock = FakeClock(NOW)
    config = RateLimitConfig(requests_per_second=10, burst=20)
    a = SharedRateLimiter(config, await make_store(redis_url, clock=clock))
    b = SharedRateLimiter(config, await make_store(redis_url, clock=clock))
    decisions = [await (a if i % 2 else b).take_request("t") for i in range(20)]
    assert all(d.allowed for d in decisions)
    assert [d.remaining for d in decisions[:3]] == [19, 18, 17]
    denied = await a.take_request("t")
    assert not denied.allowed
    assert denied.retry_after == pytest.approx(0.1)
    clock.now += 0.1
    assert (await b.take_request("t")).allowed
    assert not (await a.take_request("t")).allowed
    assert (await a.take_request("other")).allowed  # per tenant
    unlimited = SharedRateLimiter(RateLimitConfig(), a.store)
    assert (await unlimited.take_request("t")).limit == 0


async def test_shared_token_bucket_settles_real_usage(
    redis_url: str, make_store: StoreFactory
) -> None:
    clock = FakeClock(NOW)
    config = RateLimitConfig(
        tokens_per_minute=600, tenants={"vip": RateLimitRule(tokens_per_minute=0)}
    )
    a = SharedRateLimiter(config, await make_store(redis_url, clock=clock))
    b = SharedRateLimiter(config, await make_store(redis_url, clock=clock))
    first = await a.take_tokens("t", 500)
    assert (first.allowed, first.remaining) == (True, 100)
    assert not (await b.take_tokens("t", 200)).allowed
    await a.settle_tokens("t", 500, 300)  # used less than estimated: 200 back
    assert (await b.take_tokens("t", 300)).allowed
    await b.settle_tokens("t", 300, 400)  # used more: the debt delays the next request
    refused = await a.take_tokens("t", 1)
    assert not refused.allowed
    # 600 held + 100 of debt + 1 asked, at 10 tokens/s, in a bucket of 600: 10.1 s to wait.
    assert refused.retry_after == pytest.approx(10.1)
    assert (await a.take_tokens("vip", 10**9)).limit == 0


# --- outages ---------------------------------------------------------------------------------


async def test_fail_open_serves_counts_locally_and_reconciles(
    redis_server: RedisServer, make_store: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aigw.state")
    baseline = len(asyncio.all_tasks())
    store = await make_store(redis_server.url)
    limiter = SharedRateLimiter(RateLimitConfig(requests_per_second=1000, burst=1000), store)
    qm = QuotaManager(store, QuotaConfig(default=1000), clock=FakeClock(NOW))
    await qm.commit(await qm.reserve("t", 100), Usage(50, 50, 100))
    before_outage = await qm.reserve("t", 100)  # in flight while Redis dies

    redis_server.kill()
    for _ in range(5):  # requests keep being served
        assert (await limiter.take_request("t")).allowed
        await qm.commit(await qm.reserve("t", 100), Usage(10, 10, 20))
    assert not store.available
    await qm.commit(before_outage, Usage(5, 5, 10))
    # Local enforcement starts from the last usage seen in Redis: 100 used + 100 reserved.
    with pytest.raises(Exception, match="quota"):
        await qm.reserve("t", 1000 - 100 - 100 - 5 * 20 - 10 + 1)
    with pytest.raises(StateUnavailableError):
        await qm.status("t")  # the admin path says what is wrong instead of guessing

    redis_server.start()
    await wait_for(lambda: store.available)
    [status] = await qm.status("t")
    assert (status.total_tokens, status.reserved) == (100 + 5 * 20 + 10, 0)
    assert (status.input_tokens, status.output_tokens) == (50 + 5 * 10 + 5, 50 + 5 * 10 + 5)
    assert (await qm.reserve("t", 690)).tokens == 690  # Redis enforces again
    messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "aigw.state"]
    assert [level for level, _ in messages] == ["WARNING", "INFO"], messages
    assert "unreachable" in messages[0][1] and "fail_open" in messages[0][1]
    assert "reconciled 1 usage record" in messages[1][1]
    assert len(asyncio.all_tasks()) == baseline  # the recovery task is gone


async def test_fail_closed_refuses_then_recovers(
    redis_server: RedisServer, make_store: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aigw.state")
    baseline = len(asyncio.all_tasks())
    store = await make_store(redis_server.url, on_failure="fail_closed")
    limiter = SharedRateLimiter(RateLimitConfig(requests_per_second=100, burst=100), store)
    qm = QuotaManager(store, QuotaConfig(default=1000), clock=FakeClock(NOW))
    running = await qm.reserve("t", 100)
    redis_server.kill()
    for _ in range(3):
        with pytest.raises(StateUnavailableError) as info:
            await limiter.take_request("t")
        assert info.value.status == 503
        assert info.value.code == "state_unavailable"
        assert "retry-after" in info.value.headers
        with pytest.raises(StateUnavailableError):
            await qm.reserve("t", 10)
    await qm.commit(running, Usage(20, 20, 40))  # a running request never fails on settle
    await limiter.settle_tokens("t", 10, 20)
    redis_server.start()
    await wait_for(lambda: store.available)
    assert (await limiter.take_request("t")).allowed
    [status] = await qm.status("t")
    assert (status.total_tokens, status.reserved) == (40, 0)
    levels = [r.levelname for r in caplog.records if r.name == "aigw.state"]
    assert levels == ["WARNING", "INFO"]
    assert len(asyncio.all_tasks()) == baseline


async def test_store_starts_while_redis_is_down(
    redis_server: RedisServer, make_store: StoreFactory
) -> None:
    url = redis_server.url
    redis_server.kill()
    store = await make_store(url)  # no exception: the gateway starts and serves
    assert not store.available
    result = await store.reserve("t", "p", 10, 100, reservation_id=1, ttl=60)
    assert result.allowed
    await store.commit("t", "p", 10, 1, 1, 2, reservation_id=1)
    redis_server.start()
    await wait_for(lambda: store.available)
    assert (await store.get_usage([("t", "p")]))[0] == UsageCounters(1, 1, 2, 0)


async def test_close_during_an_outage_does_not_hang_or_leak(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    baseline = len(asyncio.all_tasks())
    store = RedisStore(redis_server.url, recovery_interval=0.02)
    await store.open()
    redis_server.kill()
    await store.commit("t", "p", 0, 1, 1, 2, reservation_id=0)
    await asyncio.wait_for(store.close(), 5)
    assert len(asyncio.all_tasks()) == baseline
    assert any("lost" in r.getMessage() for r in caplog.records)


def test_redacted_url_never_shows_credentials() -> None:
    assert redacted_url("redis://user:s3cret@redis.internal:6380/2") == "redis.internal:6380/2"
    assert redacted_url("rediss://:pw@h") == "h:6379/0"
    assert "pw" not in redacted_url("unix:///run/redis.sock?password=pw")


# --- the proxy over the redis store ----------------------------------------------------------


async def test_gateways_share_buckets_and_report_them_in_headers(
    upstream: Upstream, redis_url: str, start_gateway: Any
) -> None:
    """Two in-process gateways on one Redis: one request bucket, one token bucket, one quota,
    and the `x-ratelimit-*` headers count down across both."""
    gateways = []
    for _ in range(2):
        config = make_config(
            {"up": upstream.url},
            sock=_short_tmp(),
            state=StateConfig(backend="redis", url=redis_url),
            rate_limit=RateLimitConfig(requests_per_second=1, burst=3, tokens_per_minute=6000),
            quota=QuotaConfig(default=100_000),
        )
        gateways.append(await start_gateway(config))
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
    remaining = []
    async with aiohttp.ClientSession() as session:
        for i in range(4):
            gw = gateways[i % 2]
            async with session.post(gw.v1 + "/chat/completions", json=body) as resp:
                if i < 3:
                    assert resp.status == 200
                    remaining.append(resp.headers["x-ratelimit-remaining-requests"])
                    assert resp.headers["x-ratelimit-limit-tokens"] == "6000"
                else:
                    assert resp.status == 429
                    assert (await resp.json())["error"]["code"] == "rate_limit_exceeded"
                    assert float(resp.headers["retry-after-ms"]) > 0
    assert remaining == ["2", "1", "0"]
    # Both gateways settled the real usage (7 + 12 tokens each) into the one quota.
    status = await gateways[1].gateway.limits.quota.status("default")
    assert status[0].total_tokens == 3 * 19


def test_merge_lb_stats_sums_counts_and_keeps_the_worst_state() -> None:
    def target(**kw: Any) -> dict[str, Any]:
        base = {
            "id": "up/m",
            "provider": "up",
            "upstream_model": "m",
            "weight": 1,
            "health": "healthy",
            "circuit": "closed",
            "next_probe_in": None,
            "in_flight": 1,
            "requests": 10,
            "errors": 1,
            "window_requests": 10,
            "error_rate": 0.1,
            "latency_p50": 0.01,
            "latency_p95": 0.02,
            "last_error": None,
        }
        return {**base, **kw}

    def snapshot(*targets: dict[str, Any]) -> dict[str, Any]:
        return {"models": [{"name": "m", "strategy": "round_robin", "targets": list(targets)}]}

    merged = merge_lb_stats(
        [
            snapshot(target()),
            snapshot(
                target(
                    health="degraded",
                    circuit="open",
                    requests=30,
                    errors=15,
                    window_requests=30,
                    error_rate=0.5,
                    latency_p95=0.5,
                    next_probe_in=3.0,
                    last_error="HTTP 500",
                ),
                target(id="other/m", requests=2),
            ),
        ]
    )
    assert merged["workers"] == 2
    [model] = merged["models"]
    first, second = model["targets"]
    assert (first["requests"], first["errors"], first["in_flight"]) == (40, 16, 2)
    assert first["error_rate"] == pytest.approx(16 / 40)
    assert (first["health"], first["circuit"]) == ("degraded", "open")
    assert (first["latency_p50"], first["latency_p95"]) == (0.01, 0.5)
    assert (first["next_probe_in"], first["last_error"]) == (3.0, "HTTP 500")
    assert (second["id"], second["requests"]) == ("other/m", 2)
    assert merge_lb_stats([]) == {"models": [], "workers": 0}
