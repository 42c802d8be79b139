"""Quotas end to end (issue 4, acceptance 2, 3, 4 and 6): real HTTP into the gateway, a real
upstream on loopback, and `aigw serve` as a subprocess driven by the `openai` SDK and the CLI.

Acceptance 1 and 5 live at the library level (tests/test_quota.py, tests/test_ratelimit.py);
the next-reset case of acceptance 1 is repeated here through the gateway, because nothing there
checks that `quota.timezone` reaches the running manager.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from aigw.admin_client import AdminClient
from aigw.config import QuotaConfig, StateConfig
from aigw.errors import AdminError
from aigw.hooks.base import Usage
from aigw.limits import build_limits
from aigw.limits.quota import QuotaManager, QuotaStatus
from aigw.state import open_store
from tests.clock import FakeClock as Clock
from tests.conftest import Daemon, cli_env, make_config
from tests.upstream import WORDS, Upstream

TEAM_KEY = "sk-team-a-e2e-0123456789"
MESSAGES = [{"role": "user", "content": "hi"}]
BODY_100 = {"model": "gpt-test", "messages": MESSAGES, "max_tokens": 100}


# --- helpers ---------------------------------------------------------------------------------


def quota_of(gw: Any) -> QuotaManager:
    quota = gw.gateway.limits.quota
    assert quota is not None
    return quota  # type: ignore[no-any-return]


async def settled(qm: QuotaManager, tenant: str, timeout: float = 5.0) -> QuotaStatus:
    """The tenant's status once no reservation is in flight any more (a stream the client left
    settles in the gateway's handler after the disconnect, not before the client returns)."""
    deadline = time.monotonic() + timeout
    while True:
        [status] = await qm.status(tenant)
        if status.reserved == 0:
            return status
        assert time.monotonic() < deadline, f"reservation never settled: {status}"
        await asyncio.sleep(0.01)


def sse_payloads(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for event in raw.split(b"\n\n"):
        if event.startswith(b"data: {"):
            out.append(json.loads(event[len(b"data: ") :]))
    return out


def text_of(payload: dict[str, Any]) -> str:
    """The text a stream chunk carries (chat delta or completions text)."""
    text = ""
    for choice in payload.get("choices") or ():
        delta = choice.get("delta")
        piece = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        text += piece or ""
    return text


def stream_body(endpoint: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "gpt-test", "stream": True, **extra}
    if endpoint == "chat/completions":
        body["messages"] = [{"role": "user", "content": "tell me a long story, please " * 3}]
    else:
        body["prompt"] = "once upon a time " * 5
    return body


# --- acceptance 2: concurrency never overshoots ---------------------------------------------------


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_200_concurrent_requests_never_pass_the_quota(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, tmp_path: Path, backend: str
) -> None:
    """10,000 tokens left, 200 concurrent requests of max_tokens 100 over HTTP: recorded usage
    never exceeds the quota, and each request succeeds or gets insufficient_quota."""
    limit, used_before = 15_000, 5_000
    upstream.behaviour.words = ["w"] * 100  # real usage = 7 + 100: just under the worst case
    upstream.behaviour.delay = 0.05  # all 200 are in flight before the first one settles
    quota = QuotaConfig(tenants={"team-a": limit}, period="never")
    state = StateConfig(backend=backend, path=str(tmp_path / "state.db"))
    if backend == "sqlite":
        # Usage already on disk: all 200 requests race to load the row before they can check.
        store = await open_store(state)
        setup = QuotaManager(store, quota)
        await setup.commit(await setup.reserve("team-a", 0), Usage(2_500, 2_500, used_before))
        await store.close()
    config = make_config({"up": upstream.url}, sock=sock_dir, quota=quota, state=state)
    gw = await start_gateway(config)
    qm = quota_of(gw)
    if backend == "memory":
        await qm.commit(await qm.reserve("team-a", 0), Usage(2_500, 2_500, used_before))
    body = {"model": "gpt-test", "messages": MESSAGES, "max_tokens": 100}
    reservation = qm.estimate_tokens("chat/completions", body)
    assert reservation == 3 + 4 + 1 + 100

    stop = asyncio.Event()
    peaks: list[tuple[int, int]] = []

    async def watch() -> None:
        # Sampled on the gateway's own loop while requests run: never over, not even briefly.
        while not stop.is_set():
            [status] = await qm.status("team-a")
            peaks.append((status.total_tokens, status.total_tokens + status.reserved))
            await asyncio.sleep(0.002)

    async def one(session: aiohttp.ClientSession) -> tuple[int, dict[str, Any], Any]:
        async with session.post(
            gw.v1 + "/chat/completions", json=body, headers={"X-Aigw-Tenant": "team-a"}
        ) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.json()

    watcher = asyncio.create_task(watch())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        results = await asyncio.gather(*(one(session) for _ in range(200)))
    stop.set()
    await watcher

    ok = [data for status, _, data in results if status == 200]
    denied = [(headers, data) for status, headers, data in results if status == 429]
    assert len(ok) + len(denied) == 200, {status for status, _, _ in results}
    for headers, data in denied:
        assert data["error"]["code"] == "insufficient_quota"
        assert data["error"]["type"] == "insufficient_quota"
        if "Retry once the requests in flight have finished" in data["error"]["message"]:
            # Refused while the others' reservations held the rest: the SDKs may retry it
            # once they settle.
            assert "x-should-retry" not in headers and headers["retry-after"] == "1"
        else:  # refused because the recorded usage leaves no room: retrying cannot help
            assert headers["x-should-retry"] == "false" and "retry-after" not in headers
    # Every admitted request held its worst case, so at least (what was left) // worst case
    # fit, and no more than the quota allows at their real size.
    left = limit - used_before
    assert left // reservation <= len(ok) <= left // 107
    assert denied, "the quota never refused anything: the test did not reach the limit"
    status = await settled(qm, "team-a")
    served = sum(data["usage"]["total_tokens"] for data in ok)
    assert status.total_tokens == used_before + served <= limit
    assert (status.input_tokens, status.output_tokens) == (
        2_500 + 7 * len(ok),
        2_500 + 100 * len(ok),
    )
    assert peaks and max(total for total, _ in peaks) <= limit
    assert max(held for _, held in peaks) <= limit
    assert len(upstream.requests) == len(ok)  # refused requests never went upstream


# --- acceptance 1 through the gateway: the next reset in a non-UTC zone --------------------------


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@pytest.mark.parametrize(
    ("period", "now", "next_reset"),
    [
        # New York springs forward on 2024-03-10: a 23-hour day
        ("daily", "2024-03-10T12:00:00-04:00", "2024-03-11T04:00:00Z"),
        ("weekly", "2024-03-10T23:00:00-04:00", "2024-03-11T04:00:00Z"),
        # a month end, and a month starting in a different UTC offset than it ends
        ("monthly", "2024-03-31T23:30:00-04:00", "2024-04-01T04:00:00Z"),
        # a leap day
        ("monthly", "2024-02-29T12:00:00-05:00", "2024-03-01T05:00:00Z"),
        # fall back on 2024-11-03: 01:00-02:00 happens twice; this is the first one
        ("hourly", "2024-11-03T01:30:00-04:00", "2024-11-03T06:00:00Z"),
        ("never", "2024-03-10T12:00:00-04:00", None),
    ],
)
async def test_next_reset_after_a_request_in_a_non_utc_zone(
    upstream: Upstream,
    start_gateway: Any,
    sock_dir: Path,
    period: str,
    now: str,
    next_reset: str | None,
) -> None:
    """`quota.timezone` reaches the running gateway: after a request, the admin socket reports
    the next reset of the tenant's period aligned to New York's calendar."""
    quota = QuotaConfig(default=100_000, period=period, timezone="America/New_York")
    gw = await start_gateway(make_config({"up": upstream.url}, sock=sock_dir, quota=quota))
    clock = Clock(ts(now))
    gw.gateway.limits = build_limits(gw.gateway.store, gw.gateway.config, wall_clock=clock)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gw.v1 + "/chat/completions", json=BODY_100, headers={"X-Aigw-Tenant": "t"}
        ) as r,
    ):
        assert r.status == 200
    admin = AdminClient(gw.gateway.admin_socket)
    [status] = (await asyncio.to_thread(admin.get_json, "/quota/t"))["tenants"]
    assert status["total_tokens"] == 7 + len(WORDS)
    assert (status["period"], status["next_reset"]) == (period, next_reset)
    if next_reset is not None:
        assert ts(next_reset.replace("Z", "+00:00")) > clock.now


# --- acceptance 3: streaming usage is exact -------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "include_usage", "continuous"),
    [
        ("chat/completions", False, False),
        ("chat/completions", True, False),
        ("completions", False, False),
        ("completions", True, False),
        ("chat/completions", False, True),  # vLLM continuous usage stats: the last one counts
    ],
)
async def test_complete_stream_records_the_upstreams_usage(
    upstream: Upstream,
    start_gateway: Any,
    sock_dir: Path,
    endpoint: str,
    include_usage: bool,
    continuous: bool,
) -> None:
    upstream.behaviour.prompt_tokens = 31  # unlike the gateway's own estimate of the prompt
    upstream.behaviour.continuous_usage = continuous
    gw = await start_gateway(
        make_config({"up": upstream.url}, sock=sock_dir, quota=QuotaConfig(default=100_000))
    )
    qm = quota_of(gw)
    extra: dict[str, Any] = {"max_tokens": 500}
    if include_usage:
        extra["stream_options"] = {"include_usage": True}
    body = stream_body(endpoint, **extra)
    assert qm.estimate_prompt_tokens(endpoint, body) != 31
    async with (
        aiohttp.ClientSession() as session,
        session.post(gw.v1 + "/" + endpoint, json=body, headers={"X-Aigw-Tenant": "t"}) as r,
    ):
        assert r.status == 200
        raw = await r.read()
    payloads = sse_payloads(raw)
    assert "".join(text_of(p) for p in payloads) == " ".join(WORDS)
    usages = [p["usage"] for p in payloads if p.get("usage")]
    if include_usage:
        assert usages[-1]["completion_tokens"] == len(WORDS)
    else:
        assert usages == [] and all("usage" not in p for p in payloads)
    status = await settled(qm, "t")
    assert (status.input_tokens, status.output_tokens, status.total_tokens) == (
        31,
        len(WORDS),
        31 + len(WORDS),
    )


@pytest.mark.parametrize(
    "endpoint",
    [
        "chat/completions",
        "completions",
    ],
)
async def test_complete_stream_without_upstream_usage_is_estimated(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, endpoint: str
) -> None:
    """An upstream that ignores stream_options sends no usage at all: the prompt by the quota
    estimator, one completion token per content chunk."""
    upstream.behaviour.omit_usage = True
    gw = await start_gateway(
        make_config({"up": upstream.url}, sock=sock_dir, quota=QuotaConfig(default=100_000))
    )
    qm = quota_of(gw)
    body = stream_body(endpoint, max_tokens=500, stream_options={"include_usage": True})
    async with (
        aiohttp.ClientSession() as session,
        session.post(gw.v1 + "/" + endpoint, json=body, headers={"X-Aigw-Tenant": "t"}) as r,
    ):
        raw = await r.read()
    assert raw.endswith(b"data: [DONE]\n\n")
    assert all("usage" not in p for p in sse_payloads(raw))
    status = await settled(qm, "t")
    prompt = qm.estimate_prompt_tokens(endpoint, body)
    assert (status.input_tokens, status.output_tokens) == (prompt, len(WORDS))


@pytest.mark.parametrize(
    ("endpoint", "continuous"),
    [
        pytest.param("chat/completions", False),
        pytest.param("completions", False),
        ("chat/completions", True),
        ("completions", True),
    ],
)
async def test_client_disconnect_mid_stream_records_what_was_delivered(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, endpoint: str, continuous: bool
) -> None:
    """The client leaves halfway: the gateway aborts the upstream and records the prompt by the
    quota estimator (or the upstream's running usage, when it sends one) and one completion
    token per content chunk it received."""
    total_words = 40
    upstream.behaviour.words = [f"w{i}" for i in range(total_words)]
    upstream.behaviour.chunk_delay = 0.02
    upstream.behaviour.prompt_tokens = 31
    upstream.behaviour.continuous_usage = continuous
    gw = await start_gateway(
        make_config({"up": upstream.url}, sock=sock_dir, quota=QuotaConfig(default=100_000))
    )
    qm = quota_of(gw)
    body = stream_body(endpoint, max_tokens=1000)
    reservation = qm.estimate_tokens(endpoint, body)
    sent_before = upstream.chunks_sent
    received = 0
    async with aiohttp.ClientSession() as session:
        resp = await session.post(gw.v1 + "/" + endpoint, json=body, headers={"X-Aigw-Tenant": "t"})
        assert resp.status == 200
        [status] = await qm.status("t")
        assert status.reserved == reservation  # held while the stream runs
        while received < total_words // 2:
            event = await resp.content.readuntil(b"\n\n")
            for payload in sse_payloads(event):
                received += bool(text_of(payload))
        resp.close()  # drop the connection halfway
    await asyncio.wait_for(upstream.disconnected.wait(), timeout=1.0)
    sent = upstream.chunks_sent - sent_before
    assert received <= sent < total_words, "the upstream was not aborted"

    status = await settled(qm, "t")
    expected_prompt = 31 if continuous else qm.estimate_prompt_tokens(endpoint, body)
    assert status.input_tokens == expected_prompt
    # `sent` counts chunks whose write completed on the upstream, i.e. reached its socket
    # buffer. At most one of them can still be in flight, unread by the gateway, when the close
    # lands: the upstream writes one chunk per 20 ms, and the gateway reads each one long before
    # the next is written; the close then cancels the upstream before its next write. So the
    # gateway saw `sent` or `sent - 1` chunks, and at least every chunk it forwarded.
    assert max(received, sent - 1) <= status.output_tokens <= sent
    assert status.total_tokens == status.input_tokens + status.output_tokens
    assert 0 < status.total_tokens != reservation


@pytest.mark.parametrize("stream", [False, True])
async def test_client_leaving_before_the_answer_releases_the_reservation(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, stream: bool
) -> None:
    """A client that gives up while the upstream is still thinking: nothing was produced for
    it, and its worst case must not stay held (here it would block the tenant for good)."""
    upstream.behaviour.delay = 30.0  # the upstream never answers within the test
    gw = await start_gateway(
        make_config({"up": upstream.url}, sock=sock_dir, quota=QuotaConfig(tenants={"t": 2 * 1008}))
    )
    qm = quota_of(gw)
    body = {"model": "gpt-test", "messages": MESSAGES, "max_tokens": 1000, "stream": stream}
    assert qm.estimate_tokens("chat/completions", body) == 1008
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as session:
        for _ in range(2):
            with pytest.raises(asyncio.TimeoutError):
                await session.post(
                    gw.v1 + "/chat/completions", json=body, headers={"X-Aigw-Tenant": "t"}
                )
    assert len(upstream.requests) == 2
    status = await settled(qm, "t", timeout=3.0)
    assert (status.reserved, status.total_tokens) == (0, 0)


@pytest.mark.parametrize(
    ("endpoint", "words"),
    [
        pytest.param("chat/completions", WORDS),
        pytest.param("completions", WORDS),
        pytest.param("chat/completions", ["metadata:", "data:", "x"] * 4),  # a model writing YAML
    ],
)
async def test_upstream_breaking_mid_stream_records_what_was_delivered(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, endpoint: str, words: list[str]
) -> None:
    """No usage ever arrives (the upstream dies after 5 content chunks): the prompt estimate
    plus one token per content chunk is recorded; the client got an in-band error."""
    upstream.behaviour.words = list(words)
    upstream.behaviour.reset_after_chunks = 5
    gw = await start_gateway(
        make_config({"up": upstream.url}, sock=sock_dir, quota=QuotaConfig(default=100_000))
    )
    qm = quota_of(gw)
    body = stream_body(endpoint, max_tokens=100)
    async with (
        aiohttp.ClientSession() as session,
        session.post(gw.v1 + "/" + endpoint, json=body, headers={"X-Aigw-Tenant": "t"}) as r,
    ):
        raw = await r.read()
    payloads = sse_payloads(raw)
    assert payloads[-1]["error"]["code"] == "upstream_error"
    assert sum(bool(text_of(p)) for p in payloads) == 5
    status = await settled(qm, "t")
    assert status.input_tokens == qm.estimate_prompt_tokens(endpoint, body)
    assert status.output_tokens == 5


# --- `aigw serve` as a subprocess --------------------------------------------------------------


def daemon_config(
    upstream_url: str, *, state: str = "{backend: memory}", quota: str = "{default: 100}"
) -> str:
    return f"""\
version: 1
server: {{shutdown_timeout: 10s}}
state: {state}
auth:
  keys:
    - {{key: "${{TEAM_KEY}}", tenant: team-a}}
providers:
  up: {{type: openai, base_url: "{upstream_url}", api_key: "${{UP_KEY}}", timeout: 5s}}
models:
  gpt-test:
    targets: [{{provider: up, model: up-model}}]
quota: {quota}
"""


DAEMON_ENV = {"TEAM_KEY": TEAM_KEY, "UP_KEY": "sk-up", "COLUMNS": "160"}


async def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`aigw …` as a subprocess, off the event loop (the upstream runs on it)."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "aigw", *args],
        capture_output=True,
        text=True,
        env=cli_env(DAEMON_ENV),
        timeout=30,
    )


async def show_json(d: Daemon, tenant: str = "team-a") -> dict[str, Any]:
    result = await cli("quota", "show", tenant, "--json", "--admin-socket", str(d.socket))
    assert result.returncode == 0, result.stderr
    [status] = json.loads(result.stdout)["tenants"]
    assert isinstance(status, dict)
    return status


async def start(factory: Callable[..., Daemon], config: str) -> Daemon:
    return await asyncio.to_thread(factory, config, env=DAEMON_ENV)


async def chat(d: Daemon, *, stream: bool = False, max_tokens: int = 50) -> int:
    """One request as team-a; returns the total tokens the answer reported."""
    async with openai.AsyncOpenAI(base_url=d.v1, api_key=TEAM_KEY, max_retries=0) as client:
        if not stream:
            done = await client.chat.completions.create(
                model="gpt-test", messages=MESSAGES, max_tokens=max_tokens
            )
            assert done.usage is not None
            return done.usage.total_tokens
        chunks = [
            c
            async for c in await client.chat.completions.create(
                model="gpt-test",
                messages=MESSAGES,
                max_tokens=max_tokens,
                stream=True,
                stream_options={"include_usage": True},
            )
        ]
        [total] = [c.usage.total_tokens for c in chunks if c.usage]
        return total


# --- acceptance 4: restarts with the sqlite store ----------------------------------------------


@pytest.mark.slow
async def test_sqlite_usage_and_override_survive_graceful_restart(
    upstream: Upstream, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    # An hour between flushes: only the graceful stop can have written the usage.
    state = f'{{backend: sqlite, path: "{tmp_path / "state.db"}", flush_interval: 1h}}'
    config = daemon_config(upstream.url, state=state)
    d = await start(daemon_factory, config)
    socket_args = ("--admin-socket", str(d.socket))
    result = await cli("quota", "set", "team-a", "5000", "--period", "monthly", *socket_args)
    assert result.returncode == 0, result.stderr
    used = await chat(d) + await chat(d, stream=True)

    # A stream still running at SIGTERM is drained, and its usage is kept as well.
    upstream.behaviour.chunk_delay = 0.05
    sent = upstream.chunks_sent
    draining = asyncio.create_task(chat(d, stream=True))
    deadline = time.monotonic() + 5
    while upstream.chunks_sent == sent:
        assert time.monotonic() < deadline, "the stream never started"
        await asyncio.sleep(0.01)
    d.proc.send_signal(signal.SIGTERM)
    used += await draining
    assert await asyncio.to_thread(d.proc.wait, 15) == 0
    upstream.behaviour.chunk_delay = 0.0
    assert used == 3 * (7 + len(WORDS))

    d = await start(daemon_factory, config)
    after = await show_json(d)
    assert after["input_tokens"] == 3 * 7 and after["output_tokens"] == 3 * len(WORDS)
    assert after["total_tokens"] == used and after["reserved"] == 0
    assert (after["limit"], after["source"], after["period"]) == (5000, "override", "monthly")
    listed = await cli("quota", "show", "--json", "--admin-socket", str(d.socket))
    assert [s["tenant"] for s in json.loads(listed.stdout)["tenants"]] == ["team-a"]
    used += await chat(d)  # counting goes on from the restored usage
    assert (await show_json(d))["total_tokens"] == used

    # A reset is written before the command returns: even kill -9 right after keeps it.
    result = await cli("quota", "reset", "team-a", "--admin-socket", str(d.socket))
    assert result.returncode == 0, result.stderr
    d.proc.kill()
    await asyncio.to_thread(d.proc.wait, 10)
    d = await start(daemon_factory, config)  # the stale admin socket is replaced
    after_kill = await show_json(d)
    assert (after_kill["total_tokens"], after_kill["limit"]) == (0, 5000)
    assert await asyncio.to_thread(d.terminate) == 0


@pytest.mark.slow
async def test_kill_9_under_load_loses_at_most_one_flush_interval(
    upstream: Upstream, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    flush_interval = 0.2
    # The flush task wakes up a little late under load, and a kill during a write loses that
    # write's batch as well: a small allowance on top of the interval covers both.
    window = flush_interval + 0.1
    state = f'{{backend: sqlite, path: "{tmp_path / "state.db"}", flush_interval: 200ms}}'
    config = daemon_config(upstream.url, state=state, quota="{default: 0, period: never}")
    upstream.behaviour.delay = 0.02  # spread the load over a few seconds
    d = await start(daemon_factory, config)

    served: list[tuple[float, int]] = []  # (monotonic time the client got it, total tokens)
    kill_at = 250
    max_requests = 600
    issued = 0
    killed = asyncio.Event()
    killed_at = 0.0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal issued, killed_at
        while issued < max_requests and not killed.is_set():
            issued += 1
            try:
                async with session.post(
                    d.v1 + "/chat/completions",
                    json={"model": "gpt-test", "messages": MESSAGES, "max_tokens": 50},
                    headers={"Authorization": f"Bearer {TEAM_KEY}"},
                ) as r:
                    assert r.status == 200, await r.text()
                    data = await r.json()
            except aiohttp.ClientError:
                assert killed.is_set()
                return
            served.append((time.monotonic(), data["usage"]["total_tokens"]))
            if len(served) == kill_at:
                killed_at = time.monotonic()
                d.proc.kill()  # SIGKILL: no flush, no cleanup
                killed.set()

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(4)))
    assert killed.is_set(), "the load ended before the kill"
    assert await asyncio.to_thread(d.proc.wait, 10) == -9

    d = await start(daemon_factory, config)
    recovered = (await show_json(d))["total_tokens"]
    seen = sum(tokens for _, tokens in served)
    in_last_window = sum(tokens for at, tokens in served if at >= killed_at - window)
    lost = seen - recovered
    # Requests in flight at the kill may have been recorded without the client seeing them.
    assert recovered <= seen + 4 * (7 + len(WORDS))
    assert lost <= in_last_window, (lost, in_last_window, seen)
    assert in_last_window < seen  # the bound is tighter than "everything": it can fail
    assert await asyncio.to_thread(d.terminate) == 0


# --- acceptance 6: the openai SDK and `aigw quota` on a running daemon ---------------------------


@pytest.mark.slow
async def test_openai_sdk_quota_and_cli_on_a_running_daemon(
    upstream: Upstream, daemon_factory: Callable[..., Daemon]
) -> None:
    d = await start(daemon_factory, daemon_config(upstream.url, quota="{default: 100}"))
    attempts: list[str] = []

    async def count(request: Any) -> None:  # the SDK's own HTTP client request
        attempts.append(request.url.path)

    # The SDK's own retries stay on: `x-should-retry: false` must stop them.
    http_client = openai.DefaultAsyncHttpxClient(event_hooks={"request": [count]})
    client = openai.AsyncOpenAI(base_url=d.v1, api_key=TEAM_KEY, http_client=http_client)
    request = {"model": "gpt-test", "messages": MESSAGES, "max_tokens": 200}
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(**request)
    err = info.value
    assert err.status_code == 429 and err.code == "insufficient_quota"
    assert isinstance(err.body, dict) and err.body["code"] == "insufficient_quota"
    assert "team-a" in err.body["message"]
    assert err.response.headers["x-should-retry"] == "false"
    assert attempts == ["/v1/chat/completions"], "the SDK retried an insufficient_quota"
    assert upstream.requests == []

    socket_args = ("--admin-socket", str(d.socket))
    result = await cli("quota", "set", "team-a", "10000", *socket_args)
    assert result.returncode == 0, result.stderr
    assert "team-a" in result.stdout and "10,000" in result.stdout
    done = await client.chat.completions.create(**request)  # the very next request
    assert done.usage is not None and done.usage.total_tokens == 7 + len(WORDS)

    status = await show_json(d)
    assert (status["limit"], status["source"]) == (10_000, "override")
    assert (status["input_tokens"], status["output_tokens"], status["total_tokens"]) == (
        7,
        len(WORDS),
        7 + len(WORDS),
    )
    listed = await cli("quota", "show", "--json", *socket_args)
    assert listed.returncode == 0, listed.stderr
    assert [s["tenant"] for s in json.loads(listed.stdout)["tenants"]] == ["team-a"]

    table = await cli("quota", "show", *socket_args)
    assert table.returncode == 0, table.stderr
    [row] = [line for line in table.stdout.splitlines() if line.strip().startswith("team-a")]
    assert row.split()[:5] == ["team-a", "7", str(len(WORDS)), str(7 + len(WORDS)), "10,000*"]
    assert "daily" in row
    assert "set at runtime" in table.stdout

    result = await cli("quota", "reset", "team-a", *socket_args)
    assert result.returncode == 0, result.stderr
    status = await show_json(d)
    assert (status["total_tokens"], status["input_tokens"], status["output_tokens"]) == (0, 0, 0)
    assert status["limit"] == 10_000  # a reset keeps the quota

    result = await cli("quota", "set", "team-a", "100", *socket_args)
    assert result.returncode == 0, result.stderr
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(**request)
    await client.close()
    assert await asyncio.to_thread(d.terminate) == 0


@pytest.mark.slow
async def test_bad_tenant_name_is_one_line_exit_1(
    upstream: Upstream, daemon_factory: Callable[..., Daemon]
) -> None:
    d = await start(daemon_factory, daemon_config(upstream.url))
    socket_args = ("--admin-socket", str(d.socket))
    cases = [
        ("set", "bad name", "10"),
        ("set", "x" * 65, "10"),
        ("show", "a/b"),
        ("show", "team:a", "--json"),
        ("reset", "\u00fc"),
        ("reset", ""),
    ]
    results = await asyncio.gather(*(cli("quota", *args, *socket_args) for args in cases))
    for args, result in zip(cases, results, strict=True):
        assert result.returncode == 1, args
        assert result.stderr.count("\n") == 1, (args, result.stderr)
        assert "invalid tenant name" in result.stderr, args
        assert "Traceback" not in result.stderr and result.stdout == "", args
    # The daemon checks too, for callers other than the CLI.
    admin = AdminClient(d.socket)
    for path in ("/quota/team:a", "/quota/team:a/reset"):
        with pytest.raises(AdminError, match="Invalid tenant name"):
            await asyncio.to_thread(admin.post_json, path, {"tokens": 5})
    listed = await cli("quota", "show", "--json", *socket_args)
    assert json.loads(listed.stdout) == {"tenants": []}  # nothing was created
    assert await asyncio.to_thread(d.terminate) == 0
