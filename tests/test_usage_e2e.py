"""The usage history end to end: `aigw serve` as a subprocess on a real sqlite file (and two of
them on a real redis-server), driven by the `openai` SDK, read with the real `aigw usage` CLI.

- after a known workload (chat, streams, Responses, embeddings, an upstream error, an unknown
  model, two tenants), `aigw usage --json` equals what the clients saw: requests, errors,
  tokens, cost;
- the history survives a graceful restart (only the stop can have written it), and `kill -9`
  loses nothing that was flushed before it; rows past `usage.retention` are pruned;
- `usage.enabled: false` and a bad query are one-line errors; the daemons on one redis read one
  history.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from aigw.admin_client import AdminClient
from aigw.config import StateConfig
from aigw.errors import AdminError
from aigw.exchange import Usage
from aigw.pricing import Price, cost_nanos, to_nanos
from aigw.state import open_store
from aigw.usage_history import DAY, HOUR, Row, hour_of
from tests.conftest import Daemon, _short_tmp, cli_env, start_daemon
from tests.upstream import Upstream

pytestmark = pytest.mark.slow

KEYS = {"team-a": "sk-team-a-0123456789abcdef", "team-b": "sk-team-b-0123456789abcdef"}
PRICE = Price.of("1000", "2000")
MESSAGES = [{"role": "user", "content": "hi"}]
COUNTERS = ("requests", "errors", "input_tokens", "cached_input_tokens", "output_tokens")


def config_text(
    upstream: Upstream, state: str, usage: str = "{flush_interval: 200ms}", extra: str = ""
) -> str:
    keys = "\n".join(
        f"    - {{key_sha256: {hashlib.sha256(key.encode()).hexdigest()}, tenant: {t}}}"
        for t, key in KEYS.items()
    )
    return f"""\
version: 1
server: {{shutdown_timeout: 10s}}
state: {state}
auth:
  keys:
{keys}
providers:
  up: {{type: openai, base_url: "{upstream.url}", timeout: 5s}}
models:
  gpt-test:
    targets: [{{provider: up, model: up-model}}]
  embed:
    targets: [{{provider: up, model: up-embed}}]
prices:
  up-model: {{input: 1000, output: 2000}}
usage: {usage}
health: {{check_interval: 0s}}
{extra}"""


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[[str], Daemon]]:
    started: list[Daemon] = []

    def start(text: str) -> Daemon:
        home = Path(tempfile.mkdtemp(prefix="d", dir=tmp_path))
        daemon = start_daemon(text, home, _short_tmp())
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(10)


async def run(factory: Callable[[str], Daemon], text: str) -> Daemon:
    return await asyncio.to_thread(factory, text)


async def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "aigw", *args],
        capture_output=True,
        text=True,
        env=cli_env({"COLUMNS": "200"}),
        timeout=30,
    )


async def usage_json(d: Daemon, *args: str) -> dict[str, Any]:
    result = await cli("usage", "--json", "--admin-socket", str(d.socket), *args)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


class Seen:
    """What the clients saw, per (tenant, model): the same counters `aigw usage` shows."""

    def __init__(self) -> None:
        self.cells: dict[tuple[str, str], dict[str, Any]] = {}

    def add(
        self, tenant: str, model: str, usage: Usage | None, error: bool = False, priced: bool = True
    ) -> None:
        cell = self.cells.setdefault((tenant, model), dict.fromkeys((*COUNTERS, "cost_nanos"), 0))
        cell["requests"] += 1
        cell["errors"] += error
        if usage is not None:
            cell["input_tokens"] += usage.prompt_tokens
            cell["cached_input_tokens"] += usage.cached_tokens
            cell["output_tokens"] += usage.completion_tokens
            if priced:
                cell["cost_nanos"] += cost_nanos(usage, PRICE)

    def merge(self, other: Seen) -> Seen:
        merged = Seen()
        for source in (self, other):
            for key, cell in source.cells.items():
                into = merged.cells.setdefault(key, dict.fromkeys(cell, 0))
                for name, value in cell.items():
                    into[name] += value
        return merged

    def by(self, group: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for (tenant, model), cell in self.cells.items():
            into = out.setdefault(tenant if group == "tenant" else model, dict.fromkeys(cell, 0))
            for name, value in cell.items():
                into[name] += value
        return out


def as_seen(buckets: list[dict[str, Any]], group: str) -> dict[str, dict[str, Any]]:
    return {
        b[group]: {**{c: b[c] for c in COUNTERS}, "cost_nanos": to_nanos(repr(b["cost_usd"]))}
        for b in buckets
    }


async def workload(d: Daemon, upstream: Upstream) -> Seen:
    """Every kind of request the history keeps, as the SDK sees them."""
    seen = Seen()
    a = openai.AsyncOpenAI(base_url=d.v1, api_key=KEYS["team-a"], max_retries=0)
    b = openai.AsyncOpenAI(base_url=d.v1, api_key=KEYS["team-b"], max_retries=0)

    def usage_of(u: Any) -> Usage:
        completion = getattr(u, "completion_tokens", 0)  # embeddings have none
        return Usage(u.prompt_tokens, completion, u.total_tokens)

    for max_tokens in (3, 5, 100):
        done = await a.chat.completions.create(
            model="gpt-test", messages=MESSAGES, max_tokens=max_tokens
        )
        seen.add("team-a", "gpt-test", usage_of(done.usage))
    for _ in range(2):
        chunks = [
            c
            async for c in await b.chat.completions.create(
                model="gpt-test",
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
            )
        ]
        [last] = [c.usage for c in chunks if c.usage is not None]
        seen.add("team-b", "gpt-test", usage_of(last))
    response = await a.responses.create(model="gpt-test", input="hello")
    assert response.usage is not None
    seen.add(
        "team-a",
        "gpt-test",
        Usage(response.usage.input_tokens, response.usage.output_tokens, 0),
    )
    embedded = await b.embeddings.create(model="embed", input=["one", "two"])
    seen.add("team-b", "embed", usage_of(embedded.usage), priced=False)  # up-embed: no price
    upstream.behaviour.status = 500
    with pytest.raises(openai.InternalServerError):
        await a.chat.completions.create(model="gpt-test", messages=MESSAGES)
    upstream.behaviour.status = 200
    seen.add("team-a", "gpt-test", None, error=True)
    with pytest.raises(openai.NotFoundError):
        await a.chat.completions.create(model="no-such-model", messages=MESSAGES)
    seen.add("team-a", "-", None, error=True)
    await a.close()
    await b.close()
    return seen


async def check(d: Daemon, seen: Seen) -> None:
    """`aigw usage --json` by tenant, by model and in total equals what the clients saw."""
    for group in ("tenant", "model"):
        data = await usage_json(d, "--by", group)
        assert as_seen(data["buckets"], group) == seen.by(group), group
    data = await usage_json(d)
    totals = data["totals"]
    want = {name: sum(c[name] for c in seen.cells.values()) for name in (*COUNTERS, "cost_nanos")}
    got = {**{c: totals[c] for c in COUNTERS}, "cost_nanos": to_nanos(repr(totals["cost_usd"]))}
    assert got == want
    for bucket in data["buckets"]:  # by hour: each line names its hour, tenant and model
        assert bucket["start"].endswith(":00:00Z") and {"tenant", "model"} <= set(bucket)


def flushed_rows(path: Path) -> int:
    """Requests the daemon has written to its sqlite file (read by another connection)."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            row = conn.execute("SELECT coalesce(sum(requests), 0) FROM usage_hourly").fetchone()
    except sqlite3.OperationalError:  # not created yet
        return 0
    return int(row[0])


async def eventually(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


# --- a known workload, restarts ---------------------------------------------------------------


async def test_usage_equals_what_the_clients_saw_and_survives_a_graceful_restart(
    upstream: Upstream, daemons: Callable[[str], Daemon], tmp_path: Path
) -> None:
    db = tmp_path / "state.db"
    # An hour between flushes: what the restarted daemon shows, only the stop can have written.
    text = config_text(upstream, f'{{backend: sqlite, path: "{db}"}}', "{flush_interval: 1h}")
    d = await run(daemons, text)
    seen = await workload(d, upstream)
    await check(d, seen)  # not flushed yet: the rollup in memory answers
    assert flushed_rows(db) == 0
    assert await asyncio.to_thread(d.terminate) == 0
    assert flushed_rows(db) == sum(c["requests"] for c in seen.cells.values())
    with sqlite3.connect(db) as conn:  # kept per endpoint too: the client's API
        endpoints = conn.execute(
            "SELECT model, endpoint, sum(requests) FROM usage_hourly GROUP BY model, endpoint"
        ).fetchall()
    assert sorted(endpoints) == [
        ("-", "chat/completions", 1),
        ("embed", "embeddings", 1),
        ("gpt-test", "chat/completions", 6),
        ("gpt-test", "responses", 1),
    ]

    d = await run(daemons, text)
    await check(d, seen)
    more = await workload(d, upstream)  # added to the same rows
    await check(d, seen.merge(more))
    # --tenant/--model narrow it; the table and CSV draw the same numbers.
    only = await usage_json(d, "--tenant", "team-b", "--model", "embed", "--by", "model")
    assert as_seen(only["buckets"], "model") == {"embed": seen.merge(more).by("model")["embed"]}
    table = await cli("usage", "--by", "tenant", "--admin-socket", str(d.socket))
    assert table.returncode == 0 and "team-a" in table.stdout and "$" in table.stdout
    csv = await cli("usage", "--csv", "--by", "model", "--admin-socket", str(d.socket))
    assert csv.stdout.splitlines()[0].startswith("model,requests,errors")
    assert await asyncio.to_thread(d.terminate) == 0


async def test_kill_9_loses_nothing_that_was_flushed(
    upstream: Upstream, daemons: Callable[[str], Daemon], tmp_path: Path
) -> None:
    db = tmp_path / "state.db"
    text = config_text(upstream, f'{{backend: sqlite, path: "{db}"}}', "{flush_interval: 200ms}")
    d = await run(daemons, text)
    first = await workload(d, upstream)
    total = sum(c["requests"] for c in first.cells.values())
    await eventually(lambda: flushed_rows(db) == total)  # within a flush interval or two
    second = await workload(d, upstream)
    d.proc.kill()  # SIGKILL right after: the last interval's requests may be lost
    assert await asyncio.to_thread(d.proc.wait, 10) == -9

    d = await run(daemons, text)
    recovered = (await usage_json(d, "--by", "tenant"))["totals"]
    everything = first.merge(second)
    for name in COUNTERS:
        flushed = sum(c[name] for c in first.cells.values())
        assert flushed <= recovered[name] <= sum(c[name] for c in everything.cells.values())
    assert await asyncio.to_thread(d.terminate) == 0


async def test_rows_past_the_retention_are_pruned(
    upstream: Upstream, daemons: Callable[[str], Daemon], tmp_path: Path
) -> None:
    db = tmp_path / "state.db"
    now = hour_of(time.time())
    store = await open_store(StateConfig(backend="sqlite", path=str(db)))
    old = Row(now - 10 * DAY, "team-a", "gpt-test", "chat/completions", 5, 0, 50, 0, 50, 1000)
    recent = Row(now - 2 * HOUR, "team-a", "gpt-test", "chat/completions", 1, 0, 10, 0, 10, 100)
    await store.add_history([old, recent], 90 * DAY)
    await store.close()
    text = config_text(
        upstream, f'{{backend: sqlite, path: "{db}"}}', "{retention: 3d, flush_interval: 1s}"
    )
    d = await run(daemons, text)

    def pruned() -> bool:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT count(*) FROM usage_hourly").fetchone() == (1,)

    await eventually(pruned)  # at start, then hourly
    data = await usage_json(d, "--since", "30d", "--by", "tenant")
    assert data["totals"]["requests"] == 1 and data["totals"]["cost_usd"] == 100 / 10**9
    assert await asyncio.to_thread(d.terminate) == 0


# --- errors ------------------------------------------------------------------------------------


async def test_usage_off_and_bad_queries_are_one_line_errors(
    upstream: Upstream, daemons: Callable[[str], Daemon]
) -> None:
    d = await run(daemons, config_text(upstream, "{backend: memory}", "{enabled: false}"))
    result = await cli("usage", "--admin-socket", str(d.socket))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: the usage history is off (usage.enabled: false in the daemon's config)"
    )
    admin = AdminClient(d.socket)
    with pytest.raises(AdminError, match="usage history is off"):
        await asyncio.to_thread(admin.get_json, "/usage")
    # Requests are still served, and nothing is kept.
    async with openai.AsyncOpenAI(base_url=d.v1, api_key=KEYS["team-a"]) as client:
        await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert await asyncio.to_thread(d.terminate) == 0

    d = await run(daemons, config_text(upstream, "{backend: memory}"))
    admin = AdminClient(d.socket)
    for query, message in (
        ("since=5y", "since must be a number with a unit"),
        ("by=week", "by must be one of"),
        ("tenant=a&colour=red", "unknown parameter 'colour'"),
    ):
        with pytest.raises(AdminError, match=message):
            await asyncio.to_thread(admin.get_json, f"/usage?{query}")
    assert await asyncio.to_thread(d.terminate) == 0


# --- redis: one history for every instance ------------------------------------------------


async def test_two_daemons_on_one_redis_read_one_history(
    upstream: Upstream, daemons: Callable[[str], Daemon], redis_url: str
) -> None:
    text = config_text(upstream, f'{{backend: redis, url: "{redis_url}"}}')
    pair = await asyncio.gather(run(daemons, text), run(daemons, text))
    seen = (await workload(pair[0], upstream)).merge(await workload(pair[1], upstream))
    want = seen.by("tenant")

    async def both_agree() -> None:
        deadline = time.monotonic() + 15
        while True:
            got = [as_seen((await usage_json(d, "--by", "tenant"))["buckets"], "tenant")
                   for d in pair]  # fmt: skip
            if got == [want, want]:
                return
            assert time.monotonic() < deadline, got
            await asyncio.sleep(0.2)

    await both_agree()  # each flushed its part into redis
    for d in pair:
        assert await asyncio.to_thread(d.terminate) == 0
    d = await run(daemons, text)  # a fresh instance reads it all from redis
    assert as_seen((await usage_json(d, "--by", "tenant"))["buckets"], "tenant") == want
    assert await asyncio.to_thread(d.terminate) == 0
