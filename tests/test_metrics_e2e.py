"""`GET /metrics` through the real gateway: after a known workload (real loopback upstream, raw
aiohttp and the openai SDK as clients) the exposition parses with prometheus-client's own text
parser and every counter and histogram count equals what was sent."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from aigw.config import (
    AuthConfig,
    AuthKey,
    CacheConfig,
    HookSpec,
    MetricsConfig,
    QuotaConfig,
    RateLimitConfig,
    RateLimitRule,
    Secret,
)
from tests.conftest import RunningGateway, make_config
from tests.upstream import WORDS, Upstream

TARGET = "up/up-model"
PROMPT_TOKENS = 7  # the test upstream's usage
COMPLETION_TOKENS = len(WORDS)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "messages": [{"role": "user", "content": content}], **extra}


async def post(
    s: aiohttp.ClientSession,
    gw: RunningGateway,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    async with s.post(gw.v1 + "/chat/completions", json=body, headers=headers or {}) as r:
        return r.status, await r.read()


async def scrape(gw: RunningGateway) -> tuple[Samples, set[str]]:
    """Every sample of /metrics by (name, labels), and the family names."""
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    samples: Samples = {}
    families: set[str] = set()
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = sample.value
    return samples, families


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def named(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def labelset(**labels: str) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


def check_histogram(samples: Samples, name: str, **labels: str) -> int:
    """Buckets are cumulative and end in +Inf == _count; returns the count."""
    count = value(samples, name + "_count", **labels)
    buckets = sorted(
        (float(dict(k)["le"]), v)
        for k, v in named(samples, name + "_bucket").items()
        if {(n, val) for n, val in k if n != "le"} == set(labels.items())
    )
    assert buckets, name
    values = [v for _, v in buckets]
    assert values == sorted(values), f"{name} buckets are not cumulative"
    assert buckets[-1] == (float("inf"), count)
    return int(count)


async def sdk_stream(gw: RunningGateway, content: str, include_usage: bool) -> str:
    import openai

    client = openai.AsyncOpenAI(base_url=gw.v1, api_key="unused", max_retries=0, timeout=10)
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    parts = []
    async for chunk in await client.chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": content}],
        stream=True,
        extra_headers={"X-Aigw-Tenant": "team-a"},
        **extra,
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
    await client.close()
    return "".join(parts)


async def run_workload(gw: RunningGateway, upstream: Upstream) -> None:
    """5 OK non-stream, 3 OK stream, 2 upstream 500s, 1 invalid request, 1 cache hit; all as
    tenant team-a."""
    tenant = {"X-Aigw-Tenant": "team-a"}
    async with aiohttp.ClientSession() as s:
        for i in range(5):
            assert (await post(s, gw, chat(f"plain {i}"), tenant))[0] == 200
        for i in range(3):
            text = await sdk_stream(gw, f"stream {i}", include_usage=i == 0)
            assert text == " ".join(WORDS)
        upstream.behaviour.status = 500
        for i in range(2):
            assert (await post(s, gw, chat(f"fails {i}"), tenant))[0] == 500
        upstream.behaviour.status = 200
        status, body = await post(s, gw, chat("bad", temperature=3), tenant)
        assert status == 400 and json.loads(body)["error"]["param"] == "temperature"
        assert (await post(s, gw, chat("plain 0"), tenant))[0] == 200  # the cache hit
    assert len(upstream.requests) == 10


async def test_known_workload_exact_counts(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    gw = await start_gateway(
        make_config({"up": upstream.url}, sock=sock_dir, cache=CacheConfig(enabled=True))
    )
    await run_workload(gw, upstream)
    samples, families = await scrape(gw)

    assert named(samples, "aigw_requests_total") == {
        labelset(model="gpt-test", target=TARGET, status="200", endpoint="chat/completions"): 8,
        labelset(model="gpt-test", target=TARGET, status="500", endpoint="chat/completions"): 2,
        labelset(model="gpt-test", target="", status="400", endpoint="chat/completions"): 1,
        labelset(model="gpt-test", target="cache", status="200", endpoint="chat/completions"): 1,
    }
    assert check_histogram(samples, "aigw_request_duration_seconds", model="gpt-test") == 12
    assert check_histogram(samples, "aigw_time_to_first_token_seconds", model="gpt-test") == 3
    assert check_histogram(samples, "aigw_gateway_overhead_seconds") == 12
    assert named(samples, "aigw_tokens_total") == {
        labelset(tenant="team-a", model="gpt-test", kind="prompt"): 8 * PROMPT_TOKENS,
        labelset(tenant="team-a", model="gpt-test", kind="completion"): 8 * COMPLETION_TOKENS,
        labelset(tenant="team-a", model="gpt-test", kind="cached"): 0,
    }
    # The upstream model has no price: every answer with usage is counted, nothing is spent.
    assert named(samples, "aigw_unpriced_requests_total") == {labelset(model="up-model"): 8}
    assert named(samples, "aigw_cost_usd_total") == {}
    cache = gw.gateway.cache
    assert cache is not None
    assert value(samples, "aigw_cache_hits_total") == 1
    assert value(samples, "aigw_cache_misses_total") == 10  # 5 + 3 + the 2 that failed
    assert value(samples, "aigw_cache_evictions_total") == 0
    assert value(samples, "aigw_cache_entries") == 8
    assert value(samples, "aigw_cache_bytes") == cache.bytes > 0
    assert named(samples, "aigw_rejections_total") == {
        labelset(reason="rate_limit"): 0,
        labelset(reason="quota"): 0,
        labelset(reason="content_filter"): 0,
        labelset(reason="auth"): 0,
        labelset(reason="invalid"): 1,
    }
    assert value(samples, "aigw_in_flight_requests") == 0
    assert value(samples, "aigw_target_healthy", target=TARGET) == 1
    assert value(samples, "aigw_target_circuit_state", target=TARGET) == 0
    # Every family the README documents is exposed.
    from aigw.metrics import METRICS_DOC

    exposed = {name.removesuffix("_total") for name, *_ in METRICS_DOC}
    assert exposed <= families


async def test_tenant_label_off(upstream: Upstream, start_gateway: Any, sock_dir: Path) -> None:
    metrics = MetricsConfig(enabled=True, tenant_label=False)
    gw = await start_gateway(make_config({"up": upstream.url}, sock=sock_dir, metrics=metrics))
    async with aiohttp.ClientSession() as s:
        for tenant in ("team-a", "team-b"):
            assert (await post(s, gw, chat("hi"), {"X-Aigw-Tenant": tenant}))[0] == 200
    samples, _ = await scrape(gw)
    assert named(samples, "aigw_tokens_total") == {
        labelset(model="gpt-test", kind="prompt"): 2 * PROMPT_TOKENS,
        labelset(model="gpt-test", kind="completion"): 2 * COMPLETION_TOKENS,
        labelset(model="gpt-test", kind="cached"): 0,
    }
    # No cache configured: no cache traffic.
    assert value(samples, "aigw_cache_hits_total") == value(samples, "aigw_cache_misses_total") == 0


async def test_rejections_by_reason(upstream: Upstream, start_gateway: Any, sock_dir: Path) -> None:
    keys = {name: f"sk-{name}-0123456789abcdef" for name in ("team-r", "team-q", "team-c")}
    auth = AuthConfig(keys=tuple(AuthKey(tenant=t, key=Secret(k)) for t, k in keys.items()))
    config = make_config(
        {"up": upstream.url},
        sock=sock_dir,
        auth=auth,
        rate_limit=RateLimitConfig(
            tenants={"team-r": RateLimitRule(requests_per_second=0.001, burst=1)}
        ),
        quota=QuotaConfig(tenants={"team-q": 10}),
        hooks=(HookSpec("content_filter", {"deny": ["(?i)password"]}),),
    )
    gw = await start_gateway(config)

    def bearer(tenant: str) -> dict[str, str]:
        return {"Authorization": "Bearer " + keys[tenant]}

    async with aiohttp.ClientSession() as s:
        assert (await post(s, gw, chat("hi"), {"Authorization": "Bearer sk-nope"}))[0] == 401
        assert (await post(s, gw, chat("hi"), bearer("team-r")))[0] == 200
        assert (await post(s, gw, chat("hi"), bearer("team-r")))[0] == 429
        assert (await post(s, gw, chat("hi"), bearer("team-r")))[0] == 429
        status, body = await post(s, gw, chat("hi"), bearer("team-q"))
        assert status == 429 and json.loads(body)["error"]["code"] == "insufficient_quota"
        status, body = await post(s, gw, chat("my Password"), bearer("team-c"))
        assert status == 400 and json.loads(body)["error"]["code"] == "content_filtered"
    samples, _ = await scrape(gw)
    assert named(samples, "aigw_rejections_total") == {
        labelset(reason="rate_limit"): 2,
        labelset(reason="quota"): 1,
        labelset(reason="content_filter"): 1,
        labelset(reason="auth"): 1,
        labelset(reason="invalid"): 0,
    }
    assert named(samples, "aigw_requests_total") == {
        labelset(
            model="", target="", status="401", endpoint="chat/completions"
        ): 1,  # refused before the body was read
        labelset(
            model="", target="", status="429", endpoint="chat/completions"
        ): 2,  # rate limit: before the body too
        labelset(model="gpt-test", target="", status="429", endpoint="chat/completions"): 1,
        labelset(model="gpt-test", target="", status="400", endpoint="chat/completions"): 1,
        labelset(model="gpt-test", target=TARGET, status="200", endpoint="chat/completions"): 1,
    }
    assert len(upstream.requests) == 1


async def test_metrics_disabled_is_404_openai_error(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    gw = await start_gateway(
        make_config({"up": upstream.url}, sock=sock_dir, metrics=MetricsConfig(enabled=False))
    )
    assert gw.gateway.metrics is None
    async with aiohttp.ClientSession() as s:
        assert (await post(s, gw, chat("hi")))[0] == 200  # the pipeline runs without metrics
        async with s.get(gw.url + "/metrics") as r:
            assert r.status == 404
            assert r.headers["Content-Type"].startswith("application/json")
            error = (await r.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "not_found"


async def wait_for(check: Any, what: str, timeout: float = 5.0) -> None:
    """Poll an async condition (bounded): for work the gateway finishes after the client left."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_abandoned_stream_is_counted(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    gw = await start_gateway(make_config({"up": upstream.url}, sock=sock_dir))
    upstream.behaviour.words = ["word"] * 2000
    upstream.behaviour.chunk_delay = 0.01
    async with aiohttp.ClientSession() as s:
        resp = await s.post(gw.v1 + "/chat/completions", json=chat("hi", stream=True))
        await resp.content.readuntil(b"\n\n")
        await resp.content.readuntil(b"\n\n")
        resp.close()  # drop the connection mid-stream
    await asyncio.wait_for(upstream.disconnected.wait(), timeout=5.0)

    async def settled() -> bool:
        samples, _ = await scrape(gw)
        return value(samples, "aigw_in_flight_requests") == 0

    await wait_for(settled, "the abandoned request to finish")
    samples, _ = await scrape(gw)
    assert named(samples, "aigw_requests_total") == {
        labelset(model="gpt-test", target=TARGET, status="499", endpoint="chat/completions"): 1
    }
    assert check_histogram(samples, "aigw_request_duration_seconds", model="gpt-test") == 1
    assert check_histogram(samples, "aigw_time_to_first_token_seconds", model="gpt-test") == 1
    assert check_histogram(samples, "aigw_gateway_overhead_seconds") == 1


def overhead_sum(samples: Samples) -> float:
    return value(samples, "aigw_gateway_overhead_seconds_sum")


async def test_overhead_excludes_upstream_wait_of_failed_requests(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    """A slow upstream answering 500 must not show up as gateway overhead. The bound is loose
    on purpose: 0.5 s of upstream wait against a 0.25 s ceiling for a loopback request."""
    gw = await start_gateway(make_config({"up": upstream.url}, sock=sock_dir))
    upstream.behaviour.delay = 0.5
    async with aiohttp.ClientSession() as s:
        assert (await post(s, gw, chat("ok")))[0] == 200
        samples, _ = await scrape(gw)
        assert overhead_sum(samples) < 0.25  # the success path subtracts the upstream wait
        upstream.behaviour.status = 500
        assert (await post(s, gw, chat("fails")))[0] == 500
    samples, _ = await scrape(gw)
    assert check_histogram(samples, "aigw_gateway_overhead_seconds") == 2
    assert overhead_sum(samples) < 0.25
