"""The gateway is invisible to clients: what a client reads from the upstream directly it reads
through aigw too (headers, 429 advice, complete streams), and what it sends for the upstream
gets there. Real upstreams on loopback, a real in-process `Gateway`, the `openai` SDK."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from aigw.balancer import Balancers
from aigw.config import (
    Config,
    HealthConfig,
    MetricsConfig,
    ModelConfig,
    ProviderConfig,
    QuotaConfig,
    RateLimitConfig,
    Secret,
    TargetConfig,
)
from tests.clock import FakeClock
from tests.conftest import RunningGateway, make_config
from tests.upstream import WORDS, Upstream

MESSAGES = [{"role": "user", "content": "hello there"}]
TEXT = " ".join(WORDS)
NO_PROBES = HealthConfig(check_interval=0.0, min_requests=3)

UPSTREAM_HEADERS = {
    "openai-processing-ms": "123",
    "openai-version": "2020-10-01",
    "openai-organization": "org-upstream",
    "openai-project": "proj_upstream",
    "x-ratelimit-limit-requests": "5000",
    "x-ratelimit-remaining-requests": "4999",
    "x-ratelimit-reset-requests": "12ms",
    "x-ratelimit-limit-tokens": "800000",
    "x-ratelimit-remaining-tokens": "799990",
    "x-ratelimit-reset-tokens": "1ms",
    "x-request-id": "req_upstream_abc123",
}


def sdk(gw: RunningGateway, **kwargs: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.v1, api_key="unused", max_retries=0, **kwargs)


def two_targets(a: Upstream, b: Upstream, sock: Path, **sections: Any) -> Config:
    return make_config({"a": a.url, "b": b.url}, sock=sock, health=NO_PROBES, **sections)


async def start_with_clock(start_gateway: Any, config: Config, clock: FakeClock) -> RunningGateway:
    gw: RunningGateway = await start_gateway(config)
    gw.gateway.runtime.balancers = Balancers(
        config.models, config.health, clock=clock, rng=random.Random(5)
    )
    return gw


def target_stats(gw: RunningGateway) -> dict[str, Any]:
    [model] = gw.gateway.runtime.balancers.snapshot().models
    return {t.provider: t for t in model.targets}


async def post(
    gw: RunningGateway, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(gw.v1 + "/chat/completions", json=body, headers=headers) as r,
    ):
        return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read()


CHAT = {"model": "gpt-test", "messages": MESSAGES}


# --- upstream 429: a pause for its retry-after, never a circuit trip ---------------------------


async def test_a_429_with_retry_after_fails_over_and_pauses_only_that_target(
    upstream: Upstream, upstream2: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    clock = FakeClock()
    gw = await start_with_clock(start_gateway, two_targets(upstream, upstream2, sock_dir), clock)
    upstream.behaviour.status = 429
    upstream.behaviour.retry_after = "20"
    client = sdk(gw)
    for _ in range(40):  # far past min_requests: were 429s errors, a's circuit would open
        answer = await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
        assert answer.choices[0].message.content == TEXT
    assert len(upstream.requests) == 1  # asked once, then left alone for its 20 s
    a = target_stats(gw)["a"]
    assert (a.circuit, a.errors, a.throttles) == ("closed", 0, 1)
    assert a.cooling_for == pytest.approx(20.0)
    clock.advance(20.0)
    upstream.behaviour.status = 200
    for _ in range(4):  # round robin again: a serves its share
        await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert len(upstream.requests) == 3
    assert target_stats(gw)["a"].circuit == "closed"
    await client.close()


async def test_a_429_reaches_the_client_with_the_upstreams_retry_headers_when_no_target_can_serve(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    clock = FakeClock()
    config = make_config({"up": upstream.url}, sock=sock_dir, health=NO_PROBES)
    gw = await start_with_clock(start_gateway, config, clock)
    upstream.behaviour.status = 429
    upstream.behaviour.retry_after = "30"
    upstream.behaviour.headers = {
        "x-ratelimit-remaining-requests": "0",
        "x-request-id": "req_up_429",
    }
    client = sdk(gw)
    with pytest.raises(openai.RateLimitError) as first:
        await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    headers = first.value.response.headers
    assert headers["retry-after"] == "30"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-upstream-request-id"] == "req_up_429"
    assert first.value.body == {
        "message": "upstream says 429",
        "type": "upstream_test",
        "param": None,
        "code": "http_429",
    }
    for _ in range(20):  # while it cools: still 429 (never 503), the upstream is not asked
        clock.advance(1.0)
        with pytest.raises(openai.RateLimitError) as again:
            await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
        assert again.value.body == first.value.body
    headers = again.value.response.headers
    assert headers["retry-after"] == "10" and headers["retry-after-ms"] == "10000"
    assert "x-upstream-request-id" not in headers  # that id was another request's
    assert len(upstream.requests) == 1
    assert target_stats(gw)["up"].circuit == "closed"
    clock.advance(10.0)
    upstream.behaviour.status = 200
    answer = await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert answer.choices[0].message.content == TEXT
    await client.close()


async def test_reset_headers_pace_a_429_without_retry_after(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    clock = FakeClock()
    config = make_config({"up": upstream.url}, sock=sock_dir, health=NO_PROBES)
    gw = await start_with_clock(start_gateway, config, clock)
    upstream.behaviour.status = 429
    upstream.behaviour.headers = {
        "x-ratelimit-remaining-requests": "4",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    status, _, _ = await post(gw, CHAT)
    assert status == 429
    assert target_stats(gw)["up"].cooling_for == pytest.approx(300.0)  # 6m, capped at 5m
    upstream.behaviour.headers = {}
    clock.advance(300.0)
    status, _, _ = await post(gw, CHAT)  # no advice at all: no pause, but never a trip
    assert status == 429 and target_stats(gw)["up"].cooling_for is None
    assert len(upstream.requests) == 2


# --- streams the openai SDK reads are complete at [DONE] ----------------------------------------


async def test_a_stream_delivered_up_to_done_is_complete_when_the_client_leaves_at_once(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    """The SDK closes its connection right after `data: [DONE]`; the upstream's end of body
    comes later. The stream is still a 200 in metrics, cached and settled with its usage."""
    from aigw.config import CacheConfig

    config = make_config(
        {"up": upstream.url},
        sock=sock_dir,
        cache=CacheConfig(enabled=True),
        quota=QuotaConfig(default=100_000),
        metrics=MetricsConfig(enabled=True),
    )
    gw: RunningGateway = await start_gateway(config)
    upstream.behaviour.hold_after_done = 2.0
    client = sdk(gw)
    for _ in range(3):
        text = []
        stream = await client.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": f"say it {_}"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text.append(chunk.choices[0].delta.content)
        await stream.close()  # what the SDK does after [DONE]
        assert "".join(text) == TEXT
    await client.close()
    counted = (
        'aigw_requests_total{endpoint="chat/completions",model="gpt-test",status="200",'
        'target="up/up-model"} 3.0'
    )
    for _ in range(250):  # until the gateway has noticed the three closes
        metrics = await _metrics(gw)
        if counted in metrics:
            break
        await asyncio.sleep(0.02)
    assert counted in metrics
    assert 'status="499"' not in metrics
    cache = gw.gateway.cache
    assert cache is not None and cache.entries == 3
    [status] = await gw.gateway.limits.quota.status("default")
    assert status.reserved == 0
    assert status.total_tokens == 3 * (7 + len(WORDS))  # the upstream's own usage, not estimates


async def _metrics(gw: RunningGateway) -> str:
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/metrics") as r:
        return await r.text()


# --- response headers pass through -------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_the_upstreams_response_headers_reach_the_client(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, stream: bool
) -> None:
    gw: RunningGateway = await start_gateway(make_config({"up": upstream.url}, sock=sock_dir))
    upstream.behaviour.headers = dict(UPSTREAM_HEADERS)
    direct = openai.AsyncOpenAI(base_url=upstream.url, api_key="k", max_retries=0)
    client = sdk(gw)
    got = {}
    for name, c in (("direct", direct), ("aigw", client)):
        raw = (
            await c.chat.completions.with_raw_response.create(
                model="up-model", messages=MESSAGES, stream=stream
            )
            if name == "direct"
            else await c.chat.completions.with_raw_response.create(
                model="gpt-test", messages=MESSAGES, stream=stream
            )
        )
        got[name] = {k.lower(): v for k, v in raw.headers.items()}
        parsed = raw.parse()
        if stream:
            async for _ in parsed:
                pass
    for name, value in UPSTREAM_HEADERS.items():
        if name == "x-request-id":
            continue
        assert got["aigw"][name] == got["direct"][name] == value
    assert got["aigw"]["x-upstream-request-id"] == "req_upstream_abc123"
    assert got["aigw"]["x-request-id"].startswith("req_")  # the gateway's own id
    assert got["aigw"]["x-request-id"] != "req_upstream_abc123"
    await client.close()
    await direct.close()


async def test_aigws_own_rate_limit_headers_win_over_the_upstreams(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    config = make_config(
        {"up": upstream.url},
        sock=sock_dir,
        rate_limit=RateLimitConfig(requests_per_second=5, burst=10),
    )
    gw: RunningGateway = await start_gateway(config)
    upstream.behaviour.headers = dict(UPSTREAM_HEADERS)
    status, headers, _ = await post(gw, CHAT)
    assert status == 200
    assert headers["x-ratelimit-limit-requests"] == "10"  # aigw's bucket, not the upstream's
    assert headers["x-ratelimit-remaining-requests"] == "9"
    assert headers["x-ratelimit-limit-tokens"] == "800000"  # no aigw token limit: upstream's
    assert headers["openai-processing-ms"] == "123"


async def test_the_upstream_request_id_is_in_the_audit_log(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, tmp_path: Path
) -> None:
    from aigw.config import HookSpec

    audit = tmp_path / "audit.log"
    config = make_config(
        {"up": upstream.url},
        sock=sock_dir,
        hooks=(HookSpec("validation"), HookSpec("audit", {"path": str(audit)})),
    )
    gw: RunningGateway = await start_gateway(config)
    upstream.behaviour.headers = {"x-request-id": "req_upstream_audit"}
    assert (await post(gw, CHAT))[0] == 200
    await gw.gateway.stop()  # flushes the audit writer
    [line] = audit.read_text().splitlines()
    assert json.loads(line)["upstream_request_id"] == "req_upstream_audit"


# --- request headers for the upstream ------------------------------------------------------------


async def test_the_client_headers_meant_for_the_upstream_reach_it_and_credentials_never_do(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    config = make_config({"up": upstream.url}, sock=sock_dir)
    config = dataclasses.replace(
        config,
        providers={
            "up": dataclasses.replace(
                config.providers["up"],
                api_key=Secret("sk-provider-key"),
                forward_headers=("X-Team-Trace",),
                headers={"OpenAI-Project": "proj_from_config"},
            )
        },
    )
    gw: RunningGateway = await start_gateway(config)
    sent = {
        "OpenAI-Organization": "org-client",
        "OpenAI-Project": "proj_client",  # the provider's configured value wins
        "OpenAI-Beta": "assistants=v2",
        "User-Agent": "MyApp/1.0",
        "X-Stainless-Lang": "python",
        "X-Stainless-Package-Version": "3.1.0",
        "HTTP-Referer": "https://myapp.example",
        "X-Title": "My App",
        "X-Team-Trace": "trace-7",
        # never forwarded:
        "Authorization": "Bearer tenant-key",
        "x-api-key": "tenant-key-2",
        "X-Aigw-Tenant": "team-a",
        "Cookie": "session=abc",
        "X-Other": "not listed",
    }
    assert (await post(gw, CHAT, sent))[0] == 200
    got = {k.lower(): v for k, v in upstream.headers[-1].items()}
    for name in (
        "OpenAI-Organization",
        "OpenAI-Beta",
        "User-Agent",
        "X-Stainless-Lang",
        "X-Stainless-Package-Version",
        "HTTP-Referer",
        "X-Title",
        "X-Team-Trace",
    ):
        assert got[name.lower()] == sent[name], name
    assert got["openai-project"] == "proj_from_config"
    assert got["authorization"] == "Bearer sk-provider-key"
    for name in ("x-api-key", "x-aigw-tenant", "cookie", "x-other"):
        assert name not in got, name
    assert list(got).count("openai-project") == 1


async def test_the_openai_sdks_own_headers_reach_the_upstream(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    gw: RunningGateway = await start_gateway(make_config({"up": upstream.url}, sock=sock_dir))
    client = sdk(gw, organization="org-sdk", project="proj_sdk")
    await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    got = {k.lower(): v for k, v in upstream.headers[-1].items()}
    assert got["openai-organization"] == "org-sdk" and got["openai-project"] == "proj_sdk"
    assert got["user-agent"].startswith("AsyncOpenAI/Python")
    assert got["x-stainless-lang"] == "python"
    assert "authorization" not in got  # the tenant's key stays at the gateway
    await client.close()


# --- the gateway's own credentials failing upstream ----------------------------------------------


async def test_an_upstream_401_for_the_gateways_key_is_a_502_that_never_shows_the_key(
    upstream: Upstream, upstream2: Upstream, start_gateway: Any, sock_dir: Path, caplog: Any
) -> None:
    key = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
    leaked = json.dumps(
        {
            "error": {
                "message": f"Incorrect API key provided: {key}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        }
    ).encode()
    config = make_config({"up": upstream.url}, sock=sock_dir, health=NO_PROBES)
    gw: RunningGateway = await start_gateway(config)
    upstream.behaviour.status = 401
    upstream.behaviour.error_body = leaked
    client = sdk(gw)
    with caplog.at_level(logging.INFO), pytest.raises(openai.InternalServerError) as info:
        await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    err = info.value
    assert err.status_code == 502
    assert err.body["code"] == "upstream_auth_error"  # type: ignore[index]
    assert err.body["type"] == "server_error"  # type: ignore[index]
    assert "invalid_api_key" in err.body["message"]  # type: ignore[index]
    assert key not in err.response.text and key[-8:] not in err.response.text
    stats = target_stats(gw)["up"]
    assert stats.errors == 1 and stats.last_error is not None
    assert key[8:] not in stats.last_error
    assert key[8:] not in caplog.text
    metrics = await _metrics(gw)
    assert key[8:] not in metrics and 'status="502"' in metrics
    await client.close()


async def test_an_upstream_401_fails_over_to_a_target_whose_key_works(
    upstream: Upstream, upstream2: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    gw: RunningGateway = await start_gateway(two_targets(upstream, upstream2, sock_dir))
    upstream.behaviour.status = 401
    client = sdk(gw)
    for _ in range(4):
        answer = await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
        assert answer.choices[0].message.content == TEXT
    assert target_stats(gw)["a"].errors >= 1
    await client.close()


# --- endpoints the gateway does not serve ---------------------------------------------------------


async def test_an_unsupported_endpoint_says_the_gateway_does_not_serve_it(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    gw: RunningGateway = await start_gateway(make_config({"up": upstream.url}, sock=sock_dir))
    client = sdk(gw)
    with pytest.raises(openai.NotFoundError) as info:
        await client.fine_tuning.jobs.list()
    body = info.value.body
    assert body["code"] == "unsupported_endpoint"  # type: ignore[index]
    message = body["message"]  # type: ignore[index]
    assert message.startswith("aigw does not serve GET /v1/fine_tuning/jobs")
    for served in ("POST /v1/chat/completions", "POST /v1/embeddings", "GET /v1/models"):
        assert served in message
    await client.close()


# --- deadlines and max_tokens hold for the whole stream -----------------------------------------


async def test_a_stream_that_never_ends_is_cut_at_the_request_deadline(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    config = make_config(
        {"up": upstream.url},
        sock=sock_dir,
        server={"request_timeout": 1.0},
        quota=QuotaConfig(default=1_000_000),
    )
    gw: RunningGateway = await start_gateway(config)
    upstream.behaviour.endless = True
    upstream.behaviour.chunk_delay = 0.01
    client = sdk(gw)
    seen = 0
    stream = await client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            seen += bool(chunk.choices and chunk.choices[0].delta.content)
    assert "request deadline" in str(info.value)
    assert 10 < seen < 500
    await client.close()
    await asyncio.wait_for(upstream.disconnected.wait(), 5)  # the upstream was let go
    [status] = await gw.gateway.limits.quota.status("default")
    assert status.reserved == 0 and status.output_tokens >= seen  # what was delivered


async def test_a_stream_past_its_max_tokens_is_cut(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    gw: RunningGateway = await start_gateway(make_config({"up": upstream.url}, sock=sock_dir))
    upstream.behaviour.ignore_max_tokens = True
    upstream.behaviour.endless = True
    client = sdk(gw)
    seen = 0
    stream = await client.chat.completions.create(
        model="gpt-test", messages=MESSAGES, stream=True, max_tokens=20
    )
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            seen += bool(chunk.choices and chunk.choices[0].delta.content)
    assert "max_tokens (20)" in str(info.value)
    assert 20 < seen <= 20 + 16
    await client.close()


async def test_a_stream_that_keeps_to_max_tokens_is_never_cut(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    gw: RunningGateway = await start_gateway(make_config({"up": upstream.url}, sock=sock_dir))
    upstream.behaviour.words = ["w"] * 20
    client = sdk(gw)
    stream = await client.chat.completions.create(
        model="gpt-test", messages=MESSAGES, stream=True, max_tokens=20, n=1
    )
    text = [c.choices[0].delta.content async for c in stream if c.choices]
    assert "".join(t or "" for t in text) == " ".join(["w"] * 20)
    await client.close()


# --- logs an operator reads -----------------------------------------------------------------


async def test_circuit_transitions_and_upstream_failures_are_logged(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, caplog: Any
) -> None:
    clock = FakeClock()
    health = HealthConfig(check_interval=0.0, min_requests=2, cooldown=5.0)
    config = make_config({"up": upstream.url}, sock=sock_dir, health=health)
    gw = await start_with_clock(start_gateway, config, clock)
    upstream.behaviour.status = 500
    with caplog.at_level(logging.INFO):
        for _ in range(8):
            await post(gw, CHAT)
        opened = [r for r in caplog.records if "circuit open" in r.getMessage()]
        assert len(opened) == 1 and opened[0].levelno == logging.WARNING
        assert "up/up-model" in opened[0].getMessage()
        failures = [r.getMessage() for r in caplog.records if r.name == "aigw.upstream"]
        # rate limited: one line for the target's burst of 500s, one for the model's 503s
        assert len(failures) == 2, failures
        assert "target up/up-model: 500 upstream says 500" in failures[0]
        assert "target -: 503 No healthy target" in failures[1]
        clock.advance(5.0)
        upstream.behaviour.status = 200
        assert (await post(gw, CHAT))[0] == 200
        closed = [r for r in caplog.records if "circuit closed" in r.getMessage()]
        assert len(closed) == 1 and closed[0].levelno == logging.WARNING


def test_rate_limited_log_counts_what_it_held_back(caplog: Any) -> None:
    from aigw.logutil import RateLimitedLog

    clock = FakeClock()
    log = RateLimitedLog(logging.getLogger("aigw.test"), interval=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="aigw.test"):
        assert log.log("t1", "failed %s", "x")
        for _ in range(5):
            assert not log.log("t1", "failed %s", "x")
        assert log.log("t2", "other")  # another key is not held back
        clock.advance(10.0)
        assert log.log("t1", "failed %s", "y")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["failed x", "other", "failed y (5 more like it in the last 10s)"]


def test_config_forward_headers_never_take_credentials() -> None:
    from aigw.config import parse_config
    from aigw.errors import ConfigError

    text = """
version: 1
providers:
  up:
    type: openai
    base_url: "http://127.0.0.1:1/v1"
    forward_headers: [X-Ok, Authorization, "x-aigw-tenant", "bad header"]
models:
  m: {targets: [{provider: up}]}
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml")
    problems = [p.format() for p in info.value.problems]
    assert problems == [
        "c.yaml:7: providers.up.forward_headers[1]: 'Authorization' is never forwarded upstream"
        " (Hint: credentials, cookies, X-Aigw-* and hop-by-hop headers stay at the gateway; set "
        "a provider's own headers under `headers:`)",
        "c.yaml:7: providers.up.forward_headers[2]: 'x-aigw-tenant' is never forwarded upstream"
        " (Hint: credentials, cookies, X-Aigw-* and hop-by-hop headers stay at the gateway; set "
        "a provider's own headers under `headers:`)",
        "c.yaml:7: providers.up.forward_headers[3]: 'bad header' is not an HTTP header name",
    ]


_ = (ModelConfig, ProviderConfig, TargetConfig)
