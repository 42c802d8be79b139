"""Rate limits end to end (issue 4): real HTTP into an in-process gateway, a real upstream on
loopback. The gateway's limiter is swapped for one on an injected clock, so refills happen by
advancing the clock, never by sleeping."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from aigw.config import AuthConfig, AuthKey, QuotaConfig, RateLimitConfig, RateLimitRule, Secret
from aigw.limits import build_limits
from tests.clock import FakeClock as Clock
from tests.conftest import make_config
from tests.upstream import WORDS, Upstream

MESSAGES = [{"role": "user", "content": "hi"}]
BODY = {"model": "gpt-test", "messages": MESSAGES, "max_tokens": 100}
ESTIMATE = 3 + 4 + 1 + 100  # what the gateway charges up front for BODY
USED = 7 + len(WORDS)  # what the upstream reports for it


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def error_code(self) -> str | None:
        data = self.json()
        return data["error"]["code"] if "error" in data else None


async def start(
    start_gateway: Any, upstream: Upstream, sock_dir: Path, clock: Clock, **sections: Any
) -> Any:
    config = make_config({"up": upstream.url}, sock=sock_dir, **sections)
    gw = await start_gateway(config)
    gw.gateway.limits = build_limits(gw.gateway.store, config, clock=clock)
    return gw


async def post(
    session: aiohttp.ClientSession,
    gw: Any,
    body: dict[str, Any] | None = None,
    *,
    endpoint: str = "chat/completions",
    headers: dict[str, str] | None = None,
) -> Reply:
    async with session.post(
        gw.v1 + "/" + endpoint, json=BODY if body is None else body, headers=headers
    ) as r:
        return Reply(r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read())


# --- requests per second ------------------------------------------------------------------------


async def test_burst_passes_then_429_with_retry_after(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    clock = Clock()
    rate = RateLimitConfig(requests_per_second=10, burst=20)
    gw = await start(start_gateway, upstream, sock_dir, clock, rate_limit=rate)
    async with aiohttp.ClientSession() as s:
        replies = [await post(s, gw) for _ in range(20)]
        assert [r.status for r in replies] == [200] * 20
        assert [r.headers["x-ratelimit-limit-requests"] for r in replies] == ["20"] * 20
        remaining = [int(r.headers["x-ratelimit-remaining-requests"]) for r in replies]
        assert remaining == list(range(19, -1, -1))

        denied = await post(s, gw)
        assert denied.status == 429
        error = denied.json()["error"]
        assert (error["code"], error["type"]) == ("rate_limit_exceeded", "requests")
        assert denied.headers["retry-after"] == "1"  # whole seconds, rounded up from 0.1
        assert denied.headers["retry-after-ms"] == "100"
        assert denied.headers["x-ratelimit-limit-requests"] == "20"
        assert denied.headers["x-ratelimit-remaining-requests"] == "0"
        assert "x-should-retry" not in denied.headers  # worth retrying, unlike a quota 429
        assert len(upstream.requests) == 20  # the refused one never went upstream

        clock.advance(0.1)  # exactly retry-after: one request's worth is back
        refilled = await post(s, gw)
        assert refilled.status == 200
        assert refilled.headers["x-ratelimit-remaining-requests"] == "0"
        assert (await post(s, gw)).status == 429


async def test_request_headers_on_every_response_streams_included(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    clock = Clock()
    rate = RateLimitConfig(requests_per_second=5, burst=50)
    gw = await start(start_gateway, upstream, sock_dir, clock, rate_limit=rate)
    stream = {**BODY, "stream": True}
    async with aiohttp.ClientSession() as s:
        replies = [
            await post(s, gw),
            await post(s, gw, stream),
            await post(s, gw, {**stream, "stream_options": {"include_usage": True}}),
            await post(
                s, gw, {"model": "gpt-test", "prompt": "x", "stream": True}, endpoint="completions"
            ),
            await post(s, gw, {"model": "gpt-test", "input": "x"}, endpoint="embeddings"),
            await post(s, gw, {"model": "nope", "messages": MESSAGES}),  # 404 from the gateway
        ]
        upstream.behaviour.status = 400
        replies.append(await post(s, gw))  # the upstream's own 400, passed through
    assert [r.status for r in replies] == [200, 200, 200, 200, 200, 404, 400]
    assert replies[1].headers["content-type"].startswith("text/event-stream")
    assert replies[1].body.endswith(b"data: [DONE]\n\n")
    for i, reply in enumerate(replies):
        assert reply.headers["x-ratelimit-limit-requests"] == "50", i
        assert reply.headers["x-ratelimit-remaining-requests"] == str(49 - i), i
        assert "x-ratelimit-limit-tokens" not in reply.headers  # no token limit configured


# --- tokens per minute --------------------------------------------------------------------------


async def test_tokens_per_minute_limit_and_headers(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    clock = Clock()
    rate = RateLimitConfig(tokens_per_minute=300)  # 5 tokens per second, bucket of 300
    gw = await start(start_gateway, upstream, sock_dir, clock, rate_limit=rate)
    async with aiohttp.ClientSession() as s:
        first = await post(s, gw)
        assert first.status == 200
        assert first.headers["x-ratelimit-limit-tokens"] == "300"
        assert first.headers["x-ratelimit-remaining-tokens"] == str(300 - ESTIMATE)
        assert "x-ratelimit-limit-requests" not in first.headers  # no request limit
        # The estimate was replaced by the real usage once the answer was in.
        second = await post(s, gw, {**BODY, "stream": True})
        assert second.status == 200 and second.body.endswith(b"data: [DONE]\n\n")
        assert second.headers["x-ratelimit-limit-tokens"] == "300"
        assert second.headers["x-ratelimit-remaining-tokens"] == str(300 - USED - ESTIMATE)

        # Wants 400 (more than the whole bucket): it waits for a full bucket, 2 * USED short.
        big = await post(s, gw, {**BODY, "max_tokens": 400 - 8})
        assert big.status == 429
        error = big.json()["error"]
        assert error["code"] == "rate_limit_exceeded" and "tokens" in error["message"]
        wait = 2 * USED / 5.0
        assert big.headers["retry-after-ms"] == str(round(wait * 1000))
        assert big.headers["x-ratelimit-limit-tokens"] == "300"
        assert big.headers["x-ratelimit-remaining-tokens"] == "0"
        clock.advance(wait)
        assert (await post(s, gw, {**BODY, "max_tokens": 400 - 8})).status == 200
        # It took the whole bucket (300), not its 400 estimate, and used USED: settling gives
        # back 300 - USED, never more than it took.
        after = await post(s, gw)
        assert after.headers["x-ratelimit-remaining-tokens"] == str(300 - USED - ESTIMATE)


async def test_tokens_per_minute_holds_under_concurrency(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    clock = Clock()
    upstream.behaviour.delay = 0.05  # all of them are in flight together
    rate = RateLimitConfig(tokens_per_minute=300)
    gw = await start(start_gateway, upstream, sock_dir, clock, rate_limit=rate)
    async with aiohttp.ClientSession() as s:
        replies = await asyncio.gather(*(post(s, gw) for _ in range(10)))
    statuses = sorted(r.status for r in replies)
    assert statuses == [200] * (300 // ESTIMATE) + [429] * (10 - 300 // ESTIMATE)
    assert {r.error_code() for r in replies if r.status == 429} == {"rate_limit_exceeded"}


async def test_usage_above_the_estimate_is_charged(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    """The real usage, not the estimate, ends up in the token bucket: a prompt far larger than
    estimated puts the tenant in debt, and the next request waits."""
    clock = Clock()
    upstream.behaviour.prompt_tokens = 1000
    rate = RateLimitConfig(tokens_per_minute=600)  # 10 tokens per second
    gw = await start(start_gateway, upstream, sock_dir, clock, rate_limit=rate)
    async with aiohttp.ClientSession() as s:
        assert (await post(s, gw)).status == 200
        denied = await post(s, gw)
        assert denied.status == 429
        # 1000 + 12 tokens used in a 600 bucket, then 108 more wanted: 520 short at 10/s.
        assert denied.headers["retry-after-ms"] == str((1000 + len(WORDS) + ESTIMATE - 600) * 100)


# --- tenants ------------------------------------------------------------------------------------


async def test_tenants_are_isolated_with_auth_keys(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    clock = Clock()
    keys = tuple(
        AuthKey(tenant=name, key=Secret(f"sk-{name}-secret"))
        for name in ("team-a", "team-b", "vip")
    )
    rate = RateLimitConfig(
        requests_per_second=1,
        burst=2,
        tenants={"vip": RateLimitRule(requests_per_second=50, burst=100)},
    )
    gw = await start(
        start_gateway,
        upstream,
        sock_dir,
        clock,
        rate_limit=rate,
        auth=AuthConfig(keys=keys),
        quota=QuotaConfig(default=1_000_000),
    )

    def bearer(tenant: str) -> dict[str, str]:
        return {"Authorization": f"Bearer sk-{tenant}-secret"}

    async with aiohttp.ClientSession() as s:
        a = [await post(s, gw, headers=bearer("team-a")) for _ in range(3)]
        assert [r.status for r in a] == [200, 200, 429]
        assert a[2].error_code() == "rate_limit_exceeded"
        assert "team-a" in a[2].json()["error"]["message"]
        # A wrong key is refused before the limiter: it takes nobody's requests.
        wrong = await post(s, gw, headers={"Authorization": "Bearer sk-team-b-guess"})
        assert wrong.status == 401
        b = [await post(s, gw, headers=bearer("team-b")) for _ in range(2)]
        assert [r.status for r in b] == [200, 200]
        assert [r.headers["x-ratelimit-remaining-requests"] for r in b] == ["1", "0"]
        vip = await post(s, gw, headers=bearer("vip"))  # its own, larger bucket
        assert vip.headers["x-ratelimit-limit-requests"] == "100"
        assert vip.headers["x-ratelimit-remaining-requests"] == "99"
        assert (await post(s, gw, headers=bearer("team-a"))).status == 429
        clock.advance(1.0)
        assert (await post(s, gw, headers=bearer("team-a"))).status == 200
    # Quota usage is per tenant as well.
    quota = gw.gateway.limits.quota
    by_tenant = {s.tenant: s.total_tokens for s in await quota.status()}
    assert by_tenant == {"team-a": 3 * USED, "team-b": 2 * USED, "vip": USED}


async def test_quota_429_carries_the_rate_headers_too(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    """Every response, an insufficient_quota refusal included, reports the request budget."""
    clock = Clock()
    gw = await start(
        start_gateway,
        upstream,
        sock_dir,
        clock,
        rate_limit=RateLimitConfig(requests_per_second=10, burst=20),
        quota=QuotaConfig(default=50),
    )
    async with aiohttp.ClientSession() as s:
        reply = await post(s, gw)
    assert reply.status == 429 and reply.error_code() == "insufficient_quota"
    assert reply.headers["x-should-retry"] == "false"
    assert reply.headers["x-ratelimit-limit-requests"] == "20"
    assert reply.headers["x-ratelimit-remaining-requests"] == "19"
    assert "retry-after" not in reply.headers


# --- memory -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rate",
    [
        RateLimitConfig(requests_per_second=10, burst=20, tokens_per_minute=6000),
        pytest.param(RateLimitConfig(tokens_per_minute=6000)),
    ],
    ids=["requests-and-tokens", "tokens-only"],
)
async def test_idle_tenants_buckets_are_evicted(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, rate: RateLimitConfig
) -> None:
    """Memory stays bounded by active tenants: once every bucket is full again and `max_idle`
    passed, the next request sweeps them all, whichever limits are configured."""
    clock = Clock()
    config = make_config({"up": upstream.url}, sock=sock_dir, rate_limit=rate)
    gw = await start_gateway(config)
    gw.gateway.limits = build_limits(gw.gateway.store, config, clock=clock)
    limiter = gw.gateway.limits.rate
    assert limiter.max_idle == 60.0
    async with aiohttp.ClientSession() as s:
        for i in range(30):
            assert (await post(s, gw, headers={"X-Aigw-Tenant": f"tenant-{i}"})).status == 200
        assert limiter.bucket_count >= 30
        clock.advance(61.0)  # every bucket is full again, and max_idle has passed
        assert (await post(s, gw, headers={"X-Aigw-Tenant": "late"})).status == 200
    assert limiter.bucket_count <= 2  # only the late tenant's buckets remain
