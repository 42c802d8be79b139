"""Failover and health end to end, in process (issue 3, acceptance 3, 4, 5): real aiohttp
upstreams on loopback behind a real `Gateway`, driven over HTTP.

Health time comes from an injected clock: the gateway's balancers are replaced, before the first
request, by a `Balancers` built on a `FakeClock`, so circuits open and cool down only when a test
moves the clock. The active probe loop is off (`check_interval: 0`) so probes never add noise.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from aigw.admin_client import AdminClient
from aigw.balancer import Balancers
from aigw.config import Config, HealthConfig, ModelConfig, TargetConfig
from aigw.health import TargetStats
from tests.clock import FakeClock
from tests.conftest import RunningGateway, make_config
from tests.upstream import WORDS, Upstream

MESSAGES = [{"role": "user", "content": "hello there"}]
TEXT = " ".join(WORDS)


def health(**overrides: Any) -> HealthConfig:
    return dataclasses.replace(HealthConfig(check_interval=0.0), **overrides)


def dead_url() -> str:
    """A loopback base URL with nothing listening: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


async def start_with_clock(start_gateway: Any, config: Config, clock: FakeClock) -> RunningGateway:
    gw: RunningGateway = await start_gateway(config)
    # Gateway takes no clock (see fix-issue3.patch, hunk 1): swap in balancers that use ours
    # before any request; reloads derive from these, so they keep the clock.
    gw.gateway.runtime.balancers = Balancers(
        config.models, config.health, clock=clock, rng=random.Random(3)
    )
    return gw


def targets(gw: RunningGateway, model: str = "gpt-test") -> dict[str, TargetStats]:
    snapshot = gw.gateway.runtime.balancers.snapshot()
    (stats,) = [m for m in snapshot.models if m.name == model]
    return {t.provider: t for t in stats.targets}


def two_models(config: Config, primary: ModelConfig, backup: ModelConfig) -> Config:
    return dataclasses.replace(config, models={primary.name: primary, backup.name: backup})


async def post(
    session: aiohttp.ClientSession, gw: RunningGateway, model: str = "gpt-test", **extra: Any
) -> tuple[int, CIMultiDict[str], bytes]:
    body = {"model": model, "messages": MESSAGES, **extra}
    async with session.post(gw.v1 + "/chat/completions", json=body) as r:
        return r.status, r.headers.copy(), await r.read()


async def hammer(
    gw: RunningGateway, n: int, *, concurrency: int = 20
) -> list[tuple[int, str | None]]:
    """n requests, at most `concurrency` at a time: (status, x-aigw-provider) of each."""
    gate = asyncio.Semaphore(concurrency)

    async def one(session: aiohttp.ClientSession) -> tuple[int, str | None]:
        async with gate:
            status, headers, body = await post(session, gw)
            if status == 200:
                assert json.loads(body)["choices"][0]["message"]["content"] == TEXT
            return status, headers.get("x-aigw-provider")

    async with aiohttp.ClientSession() as session:
        return await asyncio.gather(*(one(session) for _ in range(n)))


def sse_events(body: bytes) -> list[bytes]:
    return [e for e in body.split(b"\n\n") if e.strip()]


def sse_text(events: list[bytes]) -> str:
    parts = []
    for event in events:
        if event == b"data: [DONE]":
            continue
        data = json.loads(event.removeprefix(b"data: "))
        for choice in data.get("choices") or ():
            parts.append(choice.get("delta", {}).get("content") or "")
    return "".join(parts)


# --- acceptance 3: a failing target drops out, every client request still succeeds ----------


@pytest.mark.parametrize("failure", ["status_500", "refused"])
async def test_failing_target_drops_out_and_all_1000_requests_succeed(
    upstream: Upstream, upstream2: Upstream, start_gateway: Any, sock_dir: Path, failure: str
) -> None:
    if failure == "status_500":
        upstream2.behaviour.status = 500
        bad_url = upstream2.url
    else:
        bad_url = dead_url()
    clock = FakeClock()
    hc = health(min_requests=10, error_rate_threshold=0.5, cooldown=30.0, window=60.0)
    config = make_config({"good": upstream.url, "bad": bad_url}, sock=sock_dir, health=hc)
    gw = await start_with_clock(start_gateway, config, clock)

    first = await hammer(gw, 500)
    assert first == [(200, "good")] * 500
    bad = targets(gw)["bad"]
    assert bad.circuit == "open"
    assert bad.health == "unhealthy"
    # tripped after min_requests failures; at most the requests already in flight came after
    assert hc.min_requests <= bad.requests <= hc.min_requests + 20
    assert bad.errors == bad.requests
    assert bad.last_error
    tripped_at = bad.requests

    # Past the cooldown: exactly one request probes the half-open target, fails over, and
    # the circuit opens again (cooldown doubled); the rest never touch it.
    clock.advance(31.0)
    second = await hammer(gw, 500)
    assert second == [(200, "good")] * 500
    stats = targets(gw)
    assert stats["bad"].requests == tripped_at + 1
    assert stats["bad"].circuit == "open"
    assert stats["bad"].next_probe_in == pytest.approx(60.0)
    assert stats["good"].requests == 1000
    assert stats["good"].errors == 0
    if failure == "status_500":
        assert len(upstream2.requests) == stats["bad"].requests
    assert len(upstream.requests) == 1000


# --- acceptance 4: nothing healthy → 503; fallbacks ------------------------------------------


async def test_all_targets_down_is_503_no_healthy_target_with_retry_after(
    upstream: Upstream, upstream2: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    upstream.behaviour.status = 500
    clock = FakeClock()
    hc = health(min_requests=2, cooldown=30.0)
    config = make_config({"a": upstream.url, "b": dead_url()}, sock=sock_dir, health=hc)
    gw = await start_with_clock(start_gateway, config, clock)
    async with aiohttp.ClientSession() as session:
        # Each request tries both targets; after two, both circuits are open.
        for _ in range(2):
            status, _, body = await post(session, gw)
            assert status in (500, 502)
            assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}
        assert {t.circuit for t in targets(gw).values()} == {"open"}

        status, headers, body = await post(session, gw)
        assert status == 503
        assert headers["retry-after"] == "30"  # the soonest recovery
        assert headers["Content-Type"].startswith("application/json")
        assert headers["x-request-id"].startswith("req_")
        error = json.loads(body)["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == "no_healthy_target"
        assert "gpt-test" in error["message"]

        clock.advance(12.5)
        status, headers, _ = await post(session, gw, stream=True)
        assert status == 503
        assert headers["retry-after"] == "18"  # ceil(17.5)
    # no traffic reached the targets while their circuits were open
    assert len(upstream.requests) == 2
    assert {t.requests for t in targets(gw).values()} == {2}


@pytest.mark.parametrize("stream", [False, True])
async def test_fallback_model_answers_when_every_own_target_fails(
    upstream: Upstream, upstream2: Upstream, start_gateway: Any, sock_dir: Path, stream: bool
) -> None:
    upstream.behaviour.status = 503
    clock = FakeClock()
    base = make_config(
        {"flaky": upstream.url, "gone": dead_url(), "spare": upstream2.url},
        sock=sock_dir,
        health=health(min_requests=3),
    )
    primary = ModelConfig(
        name="gpt-test",
        targets=(TargetConfig("flaky", "up-model"), TargetConfig("gone", "up-model")),
        fallbacks=("backup",),
    )
    backup = ModelConfig(name="backup", targets=(TargetConfig("spare", "spare-model"),))
    gw = await start_with_clock(start_gateway, two_models(base, primary, backup), clock)
    async with aiohttp.ClientSession() as session:
        for _ in range(5):
            status, headers, body = await post(session, gw, stream=stream)
            assert status == 200, body
            assert headers["x-aigw-provider"] == "spare"
            assert headers["x-aigw-model"] == "spare-model"
            if stream:
                events = sse_events(body)
                assert sse_text(events) == TEXT
                assert events[-1] == b"data: [DONE]"
            else:
                assert json.loads(body)["choices"][0]["message"]["content"] == TEXT
    assert [r["model"] for r in upstream2.requests] == ["spare-model"] * 5
    own = targets(gw)
    # both own targets failed until their circuits opened (3 requests), then were skipped
    assert {(t.requests, t.errors, t.circuit) for t in own.values()} == {(3, 3, "open")}
    assert len(upstream.requests) == 3
    assert targets(gw, "backup")["spare"].requests == 5


# --- acceptance 5: streaming failover before the first byte, in-band error after it ------------


@pytest.mark.parametrize("failure", ["status_500", "refused", "reset_before_first_chunk"])
async def test_stream_fails_over_before_the_first_byte(
    upstream: Upstream, upstream2: Upstream, start_gateway: Any, sock_dir: Path, failure: str
) -> None:
    bad_url = upstream2.url
    if failure == "status_500":
        upstream2.behaviour.status = 500
    elif failure == "refused":
        bad_url = dead_url()
    else:
        upstream2.behaviour.reset_before_first_chunk = True
    config = make_config(
        {"bad": bad_url, "good": upstream.url}, sock=sock_dir, health=health(min_requests=100)
    )
    gw = await start_with_clock(start_gateway, config, FakeClock())
    async with aiohttp.ClientSession() as session:
        for _ in range(4):
            status, headers, body = await post(session, gw, stream=True)
            assert status == 200
            assert headers["x-aigw-provider"] == "good"
            events = sse_events(body)
            # one clean stream: one role chunk, the whole text, [DONE] last, no error event
            assert sum(b'"role"' in e for e in events) == 1
            assert not any(b'"error"' in e for e in events)
            assert sse_text(events) == TEXT
            assert events[-1] == b"data: [DONE]"
    stats = targets(gw)
    assert stats["bad"].requests == 2  # round robin: every other request tried it first
    assert stats["bad"].errors == 2
    assert stats["good"].requests == 4
    assert stats["good"].errors == 0
    if failure != "refused":
        assert len(upstream2.requests) == 2


async def test_stream_failure_after_first_byte_is_in_band_and_a_target_error(
    upstream: Upstream, upstream2: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    for up in (upstream, upstream2):
        up.behaviour.reset_after_chunks = 3
    config = make_config(
        {"a": upstream.url, "b": upstream2.url}, sock=sock_dir, health=health(min_requests=100)
    )
    gw = await start_with_clock(start_gateway, config, FakeClock())
    async with aiohttp.ClientSession() as session:
        status, headers, body = await post(session, gw, stream=True)
    assert status == 200
    events = sse_events(body)
    assert sse_text(events[:-1]) == " ".join(WORDS[:3])
    error = json.loads(events[-1].removeprefix(b"data: "))["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "upstream_error"
    assert b"data: [DONE]" not in body
    # no failover once bytes reached the client: exactly one upstream saw the request
    assert len(upstream.requests) + len(upstream2.requests) == 1
    answered = headers["x-aigw-provider"]

    # the admin socket's /lb/stats counts it against that target
    client = AdminClient(gw.gateway.admin_socket)
    data = await asyncio.to_thread(client.get_json, "/lb/stats")
    (model,) = data["models"]
    by_provider = {t["provider"]: t for t in model["targets"]}
    assert by_provider[answered]["requests"] == 1
    assert by_provider[answered]["errors"] == 1
    assert by_provider[answered]["error_rate"] == 1.0
    assert by_provider[answered]["in_flight"] == 0
    assert by_provider[answered]["last_error"]
    other = by_provider[({"a", "b"} - {answered}).pop()]
    assert (other["requests"], other["errors"]) == (0, 0)


# --- a client's own 4xx is not the target's fault ----------------------------------------------


async def test_client_4xx_neither_fails_over_nor_counts_as_an_error(
    upstream: Upstream, upstream2: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    for up in (upstream, upstream2):
        up.behaviour.status = 400
    config = make_config(
        {"a": upstream.url, "b": upstream2.url},
        sock=sock_dir,
        health=health(min_requests=2, error_rate_threshold=0.5),
    )
    gw = await start_with_clock(start_gateway, config, FakeClock())
    async with aiohttp.ClientSession() as session:
        for stream in (False, True) * 4:
            status, _, body = await post(session, gw, stream=stream)
            assert status == 400
            # the upstream's OpenAI-shaped error passes through unchanged
            assert json.loads(body)["error"]["code"] == "http_400"
    # one upstream call per request: no failover on a client error
    assert len(upstream.requests) + len(upstream2.requests) == 8
    stats = targets(gw)
    assert sum(t.requests for t in stats.values()) == 8
    for t in stats.values():
        assert (t.errors, t.circuit, t.health, t.window_requests) == (0, "closed", "healthy", 0)
        assert t.last_error is None


# --- a client that goes away never leaves a target busy ------------------------------------------


async def wait_until(condition: Any, timeout: float = 5.0) -> bool:
    """Poll for something another task does (not for time to pass); False on timeout."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def test_client_gone_while_an_upstream_error_body_is_read_frees_the_target(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    upstream.behaviour.status = 500
    upstream.behaviour.error_body_hang = True  # status line and headers, then nothing
    config = make_config({"up": upstream.url}, sock=sock_dir, health=health(min_requests=100))
    gw = await start_with_clock(start_gateway, config, FakeClock())
    async with aiohttp.ClientSession() as session:
        request = asyncio.create_task(post(session, gw))
        assert await wait_until(lambda: targets(gw)["up"].in_flight == 1 and upstream.requests)
        # Everything runs on this loop: a few turns let the headers reach the gateway, so it
        # is reading the body (not still connecting) when the client goes.
        for _ in range(50):
            await asyncio.sleep(0)
        request.cancel()  # the client hangs up while the gateway reads the error body
        with pytest.raises(asyncio.CancelledError):
            await request
    # The lease must be settled: a leaked one keeps in_flight up forever (least_connections
    # starves the target) and, on a half-open probe, wedges the circuit for good.
    assert await wait_until(lambda: targets(gw)["up"].in_flight == 0, 2.0), targets(gw)["up"]
    stats = targets(gw)["up"]
    assert (stats.requests, stats.errors) == (1, 0)  # the client left: not the target's fault
