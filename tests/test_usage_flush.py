"""The gateway's usage flusher, in process, on a real sqlite file: rows go to the store off the
request path; a write that fails keeps them for the next one (nothing lost, nothing twice);
`GET /usage` sums what is flushed and what is not; the stop writes what is left; a reload can
turn the history off and on."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from aigw.admin_client import AdminClient
from aigw.config import StateConfig, UsageConfig
from aigw.errors import AdminError
from aigw.state.sqlite import _SCHEMA
from tests.conftest import RunningGateway, make_config
from tests.upstream import Upstream


def requests_in(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(
            conn.execute("SELECT coalesce(sum(requests), 0) FROM usage_hourly").fetchone()[0]
        )


async def chat(gw: RunningGateway, n: int, tenant: str = "team-a") -> None:
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            async with session.post(
                gw.v1 + "/chat/completions", json=body, headers={"X-Aigw-Tenant": tenant}
            ) as r:
                assert r.status == 200


async def usage(sock: Path, query: str = "by=tenant") -> dict[str, Any]:
    data = await asyncio.to_thread(AdminClient(sock).get_json, f"/usage?{query}")
    assert isinstance(data, dict)
    return data


async def test_a_failed_write_keeps_the_rows_and_the_next_one_writes_them_once(
    upstream: Upstream,
    start_gateway: Any,
    sock_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    db = tmp_path / "state.db"
    config = make_config(
        {"up": upstream.url},
        sock=sock_dir,
        state=StateConfig(backend="sqlite", path=str(db)),
        usage=UsageConfig(flush_interval=3600.0),  # flushed by the test only
    )
    gw = await start_gateway(config)
    gateway = gw.gateway
    await chat(gw, 3)
    assert requests_in(db) == 0
    assert await gateway.flush_usage()
    assert requests_in(db) == 3

    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE usage_hourly")  # every write fails now
    await chat(gw, 2)
    with caplog.at_level(logging.WARNING, logger="aigw"):
        assert not await gateway.flush_usage()
        await chat(gw, 1)
        assert not await gateway.flush_usage()
    failures = [r for r in caplog.records if "usage history: writing" in r.getMessage()]
    assert len(failures) == 1  # once per outage, not once per flush
    limits = gateway.limits
    assert limits is not None
    assert sum(row.requests for row in limits.history.rows()) == 3  # kept for the next write
    # GET /usage says what is wrong, in one line.
    with pytest.raises(AdminError, match=r"usage history .* failed \(no such table"):
        await usage(sock_dir / "admin.sock")

    with sqlite3.connect(db) as conn:
        conn.executescript(_SCHEMA)  # the table is back
    with caplog.at_level(logging.WARNING, logger="aigw"):
        assert await gateway.flush_usage()
    assert "writing to the state store works again" in caplog.text
    assert requests_in(db) == 3  # the kept rows, written once
    assert await gateway.flush_usage()  # nothing left: nothing written twice
    assert requests_in(db) == 3


async def test_usage_sums_flushed_and_unflushed_rows_and_the_stop_writes_the_rest(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, tmp_path: Path
) -> None:
    db = tmp_path / "state.db"
    config = make_config(
        {"up": upstream.url},
        sock=sock_dir,
        state=StateConfig(backend="sqlite", path=str(db)),
        usage=UsageConfig(flush_interval=3600.0),
    )
    gw = await start_gateway(config)
    await chat(gw, 2, "team-a")
    assert await gw.gateway.flush_usage()
    await chat(gw, 3, "team-a")
    await chat(gw, 1, "team-b")
    data = await usage(sock_dir / "admin.sock")
    assert {b["tenant"]: b["requests"] for b in data["buckets"]} == {"team-a": 5, "team-b": 1}
    await gw.gateway.stop()
    assert requests_in(db) == 6


async def test_the_flusher_runs_on_its_own_every_interval(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, tmp_path: Path
) -> None:
    db = tmp_path / "state.db"
    config = make_config(
        {"up": upstream.url},
        sock=sock_dir,
        state=StateConfig(backend="sqlite", path=str(db)),
        usage=UsageConfig(flush_interval=0.05),
    )
    gw = await start_gateway(config)
    await chat(gw, 4)
    for _ in range(200):  # bounded: 10 s
        if requests_in(db) == 4:
            break
        await asyncio.sleep(0.05)
    assert requests_in(db) == 4


async def test_a_reload_turns_the_history_off_and_on(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "config.yaml"

    def write(enabled: bool) -> None:
        path.write_text(
            f"""\
version: 1
server: {{port: 0, admin_socket: "{sock_dir / "admin.sock"}"}}
state: {{backend: memory}}
providers:
  up: {{type: openai, base_url: "{upstream.url}"}}
models:
  gpt-test: {{targets: [{{provider: up, model: up-model}}]}}
usage: {{enabled: {str(enabled).lower()}}}
"""
        )

    from aigw.config import load_config

    write(True)
    gw = await start_gateway(load_config(str(path)))
    await chat(gw, 2)
    write(False)
    await gw.gateway.reload()
    await chat(gw, 5)  # not kept
    with pytest.raises(AdminError, match="usage history is off"):
        await usage(sock_dir / "admin.sock")
    write(True)
    await gw.gateway.reload()
    await chat(gw, 1)
    assert (await usage(sock_dir / "admin.sock"))["totals"]["requests"] == 3
