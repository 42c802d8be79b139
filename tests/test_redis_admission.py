"""Admission over the redis store: request bucket, token bucket and quota decided in one script
(all or nothing), settlement in one more, the overrides check riding along, and the outage
fallbacks. In-process admission (memory, sqlite) is covered by the proxy and limits tests.

Everything runs against a real redis-server (skipped when it is not installed); bucket time
comes from an injected clock, so nothing refills while a test runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import redis

from aigw.config import QuotaConfig, RateLimitConfig, RateLimitRule, StateConfig
from aigw.errors import QuotaExceededError, RateLimitError, StateUnavailableError
from aigw.hooks.base import Usage
from aigw.limits import Charge
from aigw.limits.quota import QuotaManager
from aigw.limits.shared import SharedAdmission, SharedRateLimiter
from aigw.state.redis import RedisStore
from tests.clock import FakeClock
from tests.conftest import _short_tmp, make_config
from tests.upstream import Upstream

NOW = 1_710_072_000.0  # 2024-03-10T12:00:00Z


MakeAdmission = Callable[..., Awaitable[SharedAdmission]]


@pytest.fixture
async def make_admission() -> AsyncIterator[MakeAdmission]:
    """`await make_admission(url, rate=…, quota=…)`: a SharedAdmission of a fresh store (one
    gateway instance), its buckets and periods on the test's clock."""
    stores: list[RedisStore] = []

    async def factory(
        url: str,
        *,
        rate: RateLimitConfig,
        quota: QuotaConfig,
        clock: FakeClock,
        **store_kwargs: Any,
    ) -> SharedAdmission:
        store_kwargs.setdefault("recovery_interval", 0.02)
        store = RedisStore(url, clock=clock, **store_kwargs)
        await store.open()
        stores.append(store)
        limiter = SharedRateLimiter(rate, store, clock=clock)
        manager = QuotaManager(store, quota, clock=clock, reservation_ttl=60.0)
        admission = SharedAdmission(limiter, manager, store)
        return admission

    yield factory
    for store in stores:
        await store.close()


async def admit(
    admission: SharedAdmission, tenant: str, estimate: int
) -> tuple[Charge, dict[str, str]]:
    """What the proxy does between auth and the cache: take_request, then admit."""
    charge = Charge()
    charge.estimate = estimate
    headers: dict[str, str] = {}
    requests = await admission.take_request(tenant)
    await admission.admit(tenant, charge, requests, headers)
    return charge, headers


def sync_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


def snapshot(url: str, tenant: str) -> dict[str, Any]:
    """Everything admission may write for a tenant: bucket arrival times and quota usage."""
    with sync_client(url) as client:
        usage_keys = client.keys(f"aigw:u:{tenant}:*")
        return {
            "req": client.get(f"aigw:rl:{tenant}:req"),
            "tok": client.get(f"aigw:rl:{tenant}:tok"),
            "usage": {k: client.hgetall(k) for k in usage_keys},
            "reservations": {k: client.zrange(k, 0, -1) for k in client.keys(f"aigw:r:{tenant}:*")},
        }


class RoundTrips:
    """Counts the commands a store sends (each one round trip; the hot path never pipelines)
    and, as a cross-check, the scripts the server ran."""

    def __init__(self, store: RedisStore, url: str) -> None:
        self.url = url
        self.sent: list[str] = []
        send = store._redis.execute_command

        async def counting(*args: Any, **options: Any) -> Any:
            self.sent.append(str(args[0]))
            return await send(*args, **options)

        store._redis.execute_command = counting  # type: ignore[method-assign]

    def reset(self) -> None:
        self.sent.clear()
        with sync_client(self.url) as client:
            client.config_resetstat()

    def scripts_run(self) -> int:
        with sync_client(self.url) as client:
            stats = client.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


EVERY_LIMIT = RateLimitConfig(requests_per_second=1, burst=3, tokens_per_minute=600)


# --- round trips ---------------------------------------------------------------------------


async def test_a_request_costs_one_round_trip_to_admit_and_one_to_settle(
    redis_url: str, make_admission: MakeAdmission
) -> None:
    clock = FakeClock(NOW)
    admission = await make_admission(
        redis_url, rate=EVERY_LIMIT, quota=QuotaConfig(default=10_000), clock=clock
    )
    trips = RoundTrips(admission.store, redis_url)
    await admission.settle("t", (await admit(admission, "t", 50))[0], None)  # scripts loaded
    held, _ = await admit(admission, "t", 50)
    trips.reset()
    charge, _ = await admit(admission, "t", 50)
    assert trips.sent == ["EVALSHA"]
    await admission.settle("t", charge, Usage(10, 20, 30))  # usage and token refund at once
    assert trips.sent == ["EVALSHA", "EVALSHA"]
    assert trips.scripts_run() == 2
    state = snapshot(redis_url, "t")
    [usage] = state["usage"].values()
    assert (usage["t"], usage["r"]) == ("30", "50")  # `held` still holds its 50
    assert held.reservation is not None


async def test_unlimited_tenant_still_checks_overrides_in_its_one_round_trip(
    redis_url: str, make_admission: MakeAdmission
) -> None:
    clock = FakeClock(NOW)
    a = await make_admission(redis_url, rate=RateLimitConfig(), quota=QuotaConfig(), clock=clock)
    b = await make_admission(redis_url, rate=RateLimitConfig(), quota=QuotaConfig(), clock=clock)
    trips = RoundTrips(a.store, redis_url)
    await a.settle("t", (await admit(a, "t", 50))[0], Usage(1, 0, 1))  # scripts loaded
    trips.reset()
    charge, headers = await admit(a, "t", 50)
    assert (trips.sent, headers) == (["EVALSHA"], {})
    await a.settle("t", charge, Usage(10, 20, 30))
    assert trips.sent == ["EVALSHA", "EVALSHA"]
    # An override set on another instance applies to the next request here.
    assert b.quota is not None
    await b.quota.set_limit("t", 100)
    with pytest.raises(QuotaExceededError, match="used 31 of its 100"):
        await admit(a, "t", 80)
    assert (await admit(a, "t", 69))[0].reservation is not None


# --- refusals: the right error, and nothing taken ---------------------------------------------


async def test_request_bucket_refusal_takes_no_tokens_and_no_quota(
    redis_url: str, make_admission: MakeAdmission
) -> None:
    clock = FakeClock(NOW)
    admission = await make_admission(
        redis_url, rate=EVERY_LIMIT, quota=QuotaConfig(default=10_000), clock=clock
    )
    remaining = []
    for _ in range(3):
        _, headers = await admit(admission, "t", 50)
        remaining.append(headers["x-ratelimit-remaining-requests"])
    assert remaining == ["2", "1", "0"]
    before = snapshot(redis_url, "t")
    with pytest.raises(RateLimitError) as refused:
        await admit(admission, "t", 50)
    err = refused.value
    assert "on requests" in err.message
    assert err.retry_after == pytest.approx(1.0)
    assert err.headers["retry-after"] == "1"
    assert err.headers["x-ratelimit-remaining-requests"] == "0"
    # The token bucket was not charged: 3 x 50 of 600 taken, 450 left.
    assert err.headers["x-ratelimit-remaining-tokens"] == "450"
    assert snapshot(redis_url, "t") == before


async def test_token_bucket_refusal_takes_no_request_slot_and_no_quota(
    redis_url: str, make_admission: MakeAdmission
) -> None:
    clock = FakeClock(NOW)
    admission = await make_admission(
        redis_url, rate=EVERY_LIMIT, quota=QuotaConfig(default=10_000), clock=clock
    )
    _, headers = await admit(admission, "t", 500)
    assert headers["x-ratelimit-remaining-tokens"] == "100"
    before = snapshot(redis_url, "t")
    with pytest.raises(RateLimitError) as refused:
        await admit(admission, "t", 200)
    err = refused.value
    assert "on tokens" in err.message
    assert err.retry_after == pytest.approx(10.0)  # 100 tokens short at 10 tokens/s
    assert err.headers["x-ratelimit-remaining-tokens"] == "0"
    assert err.headers["x-ratelimit-remaining-requests"] == "2"  # the slot was not spent
    assert snapshot(redis_url, "t") == before
    # Proof: two more requests of 50 fit the request bucket (burst 3).
    await admit(admission, "t", 50)
    await admit(admission, "t", 50)


async def test_quota_refusal_takes_no_request_slot_and_no_tokens(
    redis_url: str, make_admission: MakeAdmission
) -> None:
    clock = FakeClock(NOW)
    admission = await make_admission(
        redis_url, rate=EVERY_LIMIT, quota=QuotaConfig(default=100), clock=clock
    )
    charge, _ = await admit(admission, "t", 80)
    before = snapshot(redis_url, "t")
    with pytest.raises(QuotaExceededError) as refused:
        await admit(admission, "t", 30)
    err = refused.value
    assert err.status == 429 and err.code == "insufficient_quota"
    assert "(+80 reserved" in err.message and "up to 30 tokens" in err.message
    assert snapshot(redis_url, "t") == before
    # Still within both buckets: the refused request spent nothing of them either.
    await admission.settle("t", charge, Usage(20, 20, 40))
    _, headers = await admit(admission, "t", 60)
    assert headers["x-ratelimit-remaining-requests"] == "1"
    assert headers["x-ratelimit-remaining-tokens"] == str(600 - 40 - 60)


async def test_quota_refusal_reports_the_buckets_as_they_are(
    redis_url: str, make_admission: MakeAdmission
) -> None:
    """The headers of a quota refusal show what is left, since the request took nothing."""
    clock = FakeClock(NOW)
    admission = await make_admission(
        redis_url, rate=EVERY_LIMIT, quota=QuotaConfig(default=100), clock=clock
    )
    await admit(admission, "t", 80)
    headers: dict[str, str] = {}
    charge = Charge()
    charge.estimate = 30
    with pytest.raises(QuotaExceededError):
        await admission.admit("t", charge, await admission.take_request("t"), headers)
    assert headers["x-ratelimit-remaining-requests"] == "2"
    assert headers["x-ratelimit-remaining-tokens"] == "520"
    assert charge.reservation is None and charge.limiter is None  # nothing to settle


async def test_gateway_answers_each_refusal_with_its_error_and_headers(
    upstream: Upstream, redis_url: str, start_gateway: Any
) -> None:
    config = make_config(
        {"up": upstream.url},
        sock=_short_tmp(),
        state=StateConfig(backend="redis", url=redis_url),
        rate_limit=RateLimitConfig(
            requests_per_second=0.001,
            burst=3,
            tokens_per_minute=6000,
            tenants={
                "small": RateLimitRule(requests_per_second=0.001, burst=3, tokens_per_minute=60)
            },
        ),
        quota=QuotaConfig(default=100_000, tenants={"poor": 10}),
    )
    gw = await start_gateway(config)
    assert isinstance(gw.gateway.limits.admission, SharedAdmission)
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}

    async def post(session: aiohttp.ClientSession, tenant: str) -> tuple[int, Any, Any]:
        headers = {"X-Aigw-Tenant": tenant}
        async with session.post(gw.v1 + "/chat/completions", json=body, headers=headers) as r:
            return r.status, r.headers, await r.json()

    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            assert (await post(session, "busy"))[0] == 200
        status, headers, data = await post(session, "busy")
        assert (status, data["error"]["code"]) == (429, "rate_limit_exceeded")
        assert "on requests" in data["error"]["message"] and "retry-after" in headers

        # "small" has a 60-token bucket; a request is estimated at 58 tokens and uses 19.
        assert (await post(session, "small"))[0] == 200
        status, headers, data = await post(session, "small")
        assert (status, data["error"]["code"]) == (429, "rate_limit_exceeded")
        assert "on tokens" in data["error"]["message"]
        assert headers["x-ratelimit-remaining-requests"] == "2"

        status, headers, data = await post(session, "poor")
        assert (status, data["error"]["code"]) == (429, "insufficient_quota")
        assert headers["x-should-retry"] == "false"
        assert headers["x-ratelimit-remaining-requests"] == "3"
        assert headers["x-ratelimit-limit-tokens"] == "6000"


# --- atomicity under concurrency ------------------------------------------------------------


@pytest.mark.parametrize("binding", ["requests", "tokens", "quota"])
async def test_200_concurrent_admissions_on_two_instances_never_overshoot(
    redis_url: str, make_admission: MakeAdmission, binding: str
) -> None:
    """200 admissions at once, alternating between two instances, with the one limit named
    `binding` the tightest: exactly as many pass as it allows, and the other two limits were
    charged for exactly those, nothing for the refused ones."""
    allowed = {"requests": 60, "tokens": 70, "quota": 80}[binding]
    others = 150
    estimate = 10
    rate = RateLimitConfig(
        requests_per_second=0.001,  # no refill within the test (the clock stands still anyway)
        burst=allowed if binding == "requests" else others,
        tokens_per_minute=(allowed if binding == "tokens" else others) * estimate,
    )
    quota = QuotaConfig(default=(allowed if binding == "quota" else others) * estimate)
    clock = FakeClock(NOW)
    a = await make_admission(redis_url, rate=rate, quota=quota, clock=clock)
    b = await make_admission(redis_url, rate=rate, quota=quota, clock=clock)

    async def one(i: int) -> tuple[SharedAdmission, Charge] | None:
        instance = a if i % 2 else b
        try:
            return instance, (await admit(instance, "t", estimate))[0]
        except (RateLimitError, QuotaExceededError):
            return None

    results = await asyncio.gather(*(one(i) for i in range(200)))
    admitted = [r for r in results if r is not None]
    assert len(admitted) == allowed
    # What the buckets and the quota hold is what the admitted requests took, no more.
    now_us = NOW * 1_000_000
    state = snapshot(redis_url, "t")
    req_interval_us = 1 / 0.001 * 1_000_000
    assert float(state["req"]) - now_us == pytest.approx(allowed * req_interval_us)
    tok_interval_us = 60 / (rate.tokens_per_minute) * 1_000_000
    assert float(state["tok"]) - now_us == pytest.approx(allowed * estimate * tok_interval_us)
    [usage] = state["usage"].values()
    assert int(usage["r"]) == allowed * estimate
    [members] = state["reservations"].values()
    assert len(members) == allowed
    # Each instance settles what it admitted: every reservation is freed, usage counted.
    for instance, charge in admitted:
        await instance.settle("t", charge, Usage(2, 3, 5))
    [usage] = snapshot(redis_url, "t")["usage"].values()
    assert (int(usage["r"]), int(usage["t"])) == (0, allowed * 5)


# --- settlement -----------------------------------------------------------------------------


async def test_settle_commits_usage_and_corrects_the_token_bucket(
    redis_url: str, make_admission: MakeAdmission
) -> None:
    clock = FakeClock(NOW)
    admission = await make_admission(
        redis_url, rate=EVERY_LIMIT, quota=QuotaConfig(default=10_000), clock=clock
    )
    used_less, _ = await admit(admission, "t", 300)
    await admission.settle("t", used_less, Usage(50, 50, 100))  # 200 tokens back
    used_more, headers = await admit(admission, "t", 100)
    assert headers["x-ratelimit-remaining-tokens"] == "400"
    await admission.settle("t", used_more, Usage(100, 200, 300))  # 200 more charged
    failed, _ = await admit(admission, "t", 100)
    await admission.settle("t", failed, None)  # released, estimate refunded
    assert admission.quota is not None
    [status] = await admission.quota.status("t")
    assert (status.total_tokens, status.reserved) == (400, 0)
    state = snapshot(redis_url, "t")
    # 100 + 300 tokens held by the bucket at 10 tokens/s: 40 s ahead of now.
    assert (float(state["tok"]) / 1e6 - NOW) == pytest.approx(40.0)
    # Settling twice changes nothing.
    await admission.settle("t", used_more, Usage(100, 200, 300))
    assert (await admission.quota.status("t"))[0].total_tokens == 400


# --- outages --------------------------------------------------------------------------------


async def test_unreachable_redis_fail_closed_refuses_and_fail_open_admits_locally(
    make_admission: MakeAdmission,
) -> None:
    dead = "redis://127.0.0.1:1/0"
    # Practically no refill: the in-memory buckets run on the real monotonic clock.
    rate = RateLimitConfig(requests_per_second=0.001, burst=3, tokens_per_minute=600)
    clock = FakeClock(NOW)
    closed = await make_admission(
        dead, rate=rate, quota=QuotaConfig(default=1000), clock=clock, on_failure="fail_closed"
    )
    with pytest.raises(StateUnavailableError):
        await admit(closed, "t", 10)
    opened = await make_admission(dead, rate=rate, quota=QuotaConfig(default=1000), clock=clock)
    remaining = []
    for _ in range(3):
        charge, headers = await admit(opened, "t", 10)
        assert charge.reservation is not None and charge.limiter is not None
        remaining.append(headers["x-ratelimit-remaining-requests"])
        await opened.settle("t", charge, Usage(1, 1, 2))
    assert remaining == ["2", "1", "0"]
    # This instance's in-memory buckets enforce the rate meanwhile.
    with pytest.raises(RateLimitError, match="on requests"):
        await admit(opened, "t", 10)
