"""`aigw quota` against a real admin endpoint set (aiohttp on a Unix socket) wrapping a real
QuotaManager; the CLI talks to it through the real `AdminClient`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import typer
from aiohttp import web
from rich.console import Console
from typer.testing import CliRunner

from aigw.cli.quota import quota_table, register
from aigw.config import QuotaConfig
from aigw.hooks.base import Usage
from aigw.limits.quota import QuotaManager
from aigw.state.memory import MemoryStore

NOW = datetime.fromisoformat("2024-03-10T12:00:00+00:00").timestamp()


@dataclass
class Daemon:
    socket: Path
    quota: QuotaManager
    requests: list[str] = field(default_factory=list)


def _admin_app(daemon: Daemon) -> web.Application:
    """The quota endpoints of the admin socket, as the CLI expects them."""
    qm = daemon.quota

    def reply(payload: Any, status: int = 200) -> web.Response:
        return web.json_response(payload, status=status)

    async def statuses(tenant: str | None) -> web.Response:
        try:
            found = await qm.status(tenant)
        except ValueError as exc:
            return reply({"error": {"message": str(exc)}}, 400)
        return reply({"tenants": [s.to_dict() for s in found]})

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        daemon.requests.append(f"{request.method} {request.path}")
        response: web.StreamResponse = await handler(request)
        return response

    async def list_all(request: web.Request) -> web.Response:
        return await statuses(None)

    async def get_one(request: web.Request) -> web.Response:
        return await statuses(request.match_info["tenant"])

    async def set_one(request: web.Request) -> web.Response:
        body = await request.json()
        tenant = request.match_info["tenant"]
        try:
            await qm.set_limit(tenant, body["tokens"], body.get("period"))
        except ValueError as exc:
            return reply({"error": {"message": str(exc)}}, 400)
        return await statuses(tenant)

    async def reset_one(request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        if tenant == "ghost":  # as the daemon refuses a tenant it does not know
            message = "unknown tenant 'ghost' [/quota/ghost]: no quota, no usage"
            return reply({"error": {"message": message}}, 404)
        await qm.reset(tenant)
        return await statuses(tenant)

    app = web.Application(middlewares=[record])
    app.router.add_get("/quota", list_all)
    app.router.add_get("/quota/{tenant}", get_one)
    app.router.add_post("/quota/{tenant}", set_one)
    app.router.add_post("/quota/{tenant}/reset", reset_one)
    return app


@pytest.fixture
async def daemon(sock_dir: Path) -> AsyncIterator[Daemon]:
    qm = QuotaManager(
        MemoryStore(),
        QuotaConfig(default=1000, tenants={"free-tier": 10, "enterprise": 0}),
        clock=lambda: NOW,
    )
    d = Daemon(sock_dir / "admin.sock", qm)
    runner = web.AppRunner(_admin_app(d))
    await runner.setup()
    await web.UnixSite(runner, str(d.socket)).start()
    try:
        yield d
    finally:
        await runner.cleanup()


async def aigw(*args: str, columns: int | None = None) -> Any:
    """Run `aigw quota …` in a thread: the AdminClient blocks, the server runs on this loop.
    Not on a terminal; `columns`: $COLUMNS, else unset."""
    app = typer.Typer()
    register(app)
    env = {"COLUMNS": str(columns) if columns else None}
    return await asyncio.to_thread(CliRunner().invoke, app, list(args), env=env)


async def test_set_takes_effect_and_persists_in_the_manager(daemon: Daemon) -> None:
    result = await aigw("quota", "set", "team-a", "10000", "--admin-socket", str(daemon.socket))
    assert result.exit_code == 0, result.output
    assert "team-a" in result.stdout and "10,000" in result.stdout
    [status] = await daemon.quota.status("team-a")
    assert (status.limit, status.source, status.period) == (10_000, "override", "daily")

    result = await aigw(
        "quota", "set", "team-a", "500", "--period", "monthly",
        "--admin-socket", str(daemon.socket),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    [status] = await daemon.quota.status("team-a")
    assert (status.limit, status.period) == (500, "monthly")


async def test_show_json_lists_every_tenant(daemon: Daemon) -> None:
    qm = daemon.quota
    await qm.commit(await qm.reserve("team-a", 200), Usage(120, 30, 150))
    result = await aigw("quota", "show", "--json", "--admin-socket", str(daemon.socket))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    by_name = {s["tenant"]: s for s in data["tenants"]}
    assert set(by_name) == {"enterprise", "free-tier", "team-a"}
    team_a = by_name["team-a"]
    assert (team_a["input_tokens"], team_a["output_tokens"], team_a["total_tokens"]) == (
        120,
        30,
        150,
    )
    assert team_a["limit"] == 1000 and team_a["percent_used"] == 15.0
    assert team_a["next_reset"] == "2024-03-11T00:00:00Z"

    one = await aigw("quota", "show", "team-a", "--json", "--admin-socket", str(daemon.socket))
    assert json.loads(one.stdout)["tenants"] == [team_a]


async def test_show_renders_the_table(daemon: Daemon) -> None:
    qm = daemon.quota
    await qm.commit(await qm.reserve("team-a", 200), Usage(120, 30, 150))
    result = await aigw("quota", "show", "--admin-socket", str(daemon.socket))
    assert result.exit_code == 0, result.output
    for text in ("team-a", "free-tier", "enterprise", "unlimited"):
        assert text in result.stdout


async def test_reset_zeroes_usage(daemon: Daemon) -> None:
    qm = daemon.quota
    await qm.commit(await qm.reserve("team-a", 200), Usage(120, 30, 150))
    result = await aigw("quota", "reset", "team-a", "--admin-socket", str(daemon.socket))
    assert result.exit_code == 0, result.output
    [status] = await qm.status("team-a")
    assert status.total_tokens == 0
    assert daemon.requests == ["POST /quota/team-a/reset"]


@pytest.mark.parametrize(
    "args",
    [
        ["quota", "set", "bad name", "10"],
        ["quota", "set", "x" * 65, "10"],
        ["quota", "show", "team/a"],
        ["quota", "reset", "ü"],
    ],
)
async def test_invalid_tenant_is_one_line_exit_1_without_a_request(
    daemon: Daemon, args: list[str]
) -> None:
    result = await aigw(*args, "--admin-socket", str(daemon.socket))
    assert result.exit_code == 1
    assert "invalid tenant name" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert daemon.requests == []


async def test_bad_period_and_negative_tokens_are_usage_errors(daemon: Daemon) -> None:
    sock = str(daemon.socket)
    result = await aigw(
        "quota", "set", "team-a", "10", "--period", "yearly", "--admin-socket", sock
    )
    assert result.exit_code == 2
    result = await aigw("quota", "set", "team-a", "-5", "--admin-socket", sock)
    assert result.exit_code == 2
    assert daemon.requests == []


async def test_no_daemon_is_one_line_exit_1(tmp_path: Path) -> None:
    for args in (["show"], ["set", "team-a", "1"], ["reset", "team-a"]):
        result = await aigw("quota", *args, "--admin-socket", str(tmp_path / "none.sock"))
        assert result.exit_code == 1
        assert "no aigw daemon is running" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_quota_table_is_pure_and_complete() -> None:
    statuses = [
        {
            "tenant": "team-a", "input_tokens": 120_000, "output_tokens": 30_000,
            "total_tokens": 150_000, "limit": 200_000, "period": "daily", "percent_used": 75.0,
            "next_reset": "2024-03-11T00:00:00Z", "reserved": 0, "source": "override",
        },
        {
            "tenant": "enterprise", "input_tokens": 5, "output_tokens": 5, "total_tokens": 10,
            "limit": 0, "period": "never", "percent_used": 0.0, "next_reset": None,
            "reserved": 0, "source": "config",
        },
    ]  # fmt: skip
    table = quota_table(statuses)
    console = Console(record=True, width=200)
    console.print(table)
    text = console.export_text()
    row_a = next(line for line in text.splitlines() if "team-a" in line)
    for cell in ("120,000", "30,000", "150,000", "200,000", "75%", "daily", "2024-03-11 00:00"):
        assert cell in row_a
    assert row_a.count("█") == 6  # 75 % of an 8-cell bar
    assert "200,000*" in row_a  # the override marker
    row_e = next(line for line in text.splitlines() if "enterprise" in line)
    assert "unlimited" in row_e and "never" in row_e
    assert "aigw quota set" in text  # the caption explains the override marker
    assert quota_table([]).row_count == 0


# --- bad input: one line, exit 2, nothing sent ------------------------------------------------


@pytest.mark.parametrize(
    ("tokens", "reason"),
    [
        ("-5", "TOKENS cannot be negative (got -5); 0 means unlimited"),
        ("99999999999999999999", "TOKENS is at most 1,000,000,000,000,000 (10^15)"),
        (str(10**15 + 1), "TOKENS is at most 1,000,000,000,000,000 (10^15)"),
        ("1e6", "TOKENS must be a whole number of tokens, not '1e6'"),
    ],
)
async def test_bad_tokens_are_one_line_exit_2_without_a_request(
    daemon: Daemon, tokens: str, reason: str
) -> None:
    result = await aigw("quota", "set", "team-a", tokens, "--admin-socket", str(daemon.socket))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {reason}")
    assert len(result.stderr.strip().splitlines()) == 1
    assert daemon.requests == []


@pytest.mark.parametrize(
    ("tokens", "limit"), [(str(10**15), 10**15), ("100_000", 100_000), ("100,000", 100_000)]
)
async def test_the_largest_quota_and_grouped_digits_are_taken(
    daemon: Daemon, tokens: str, limit: int
) -> None:
    result = await aigw("quota", "set", "team-a", tokens, "--admin-socket", str(daemon.socket))
    assert result.exit_code == 0, result.output
    [status] = await daemon.quota.status("team-a")
    assert status.limit == limit


async def test_a_bad_period_names_the_choices_without_pydantic_words(daemon: Daemon) -> None:
    sock = str(daemon.socket)
    result = await aigw(
        "quota", "set", "t", "10", "--period", "fortnightly", "--admin-socket", sock
    )
    assert result.exit_code == 2
    assert "Value error" not in result.output
    assert "'fortnightly' is not one of 'hourly', 'daily', 'weekly', 'monthly', 'never'" in (
        " ".join(result.output.replace("│", " ").split())
    )
    assert daemon.requests == []


async def test_the_daemons_error_is_printed_as_it_is_on_one_line(daemon: Daemon) -> None:
    result = await aigw("quota", "reset", "ghost", "--admin-socket", str(daemon.socket))
    assert result.exit_code == 1
    assert result.stderr == "error: unknown tenant 'ghost' [/quota/ghost]: no quota, no usage\n"
    assert result.stdout == ""


# --- the table at a terminal's width -------------------------------------------------------

BIG = [
    {
        "tenant": "team-analytics", "input_tokens": 2_410_000_000, "output_tokens": 6_000_000_123,
        "total_tokens": 8_410_000_123, "limit": 10_000_000_000, "period": "monthly",
        "percent_used": 84.1, "next_reset": "2024-04-01T00:00:00Z", "reserved": 0,
        "source": "override",
    },
    {
        "tenant": "enterprise", "input_tokens": 999_999_999_999, "output_tokens": 5,
        "total_tokens": 1_000_000_000_004, "limit": 0, "period": "never", "percent_used": 0.0,
        "next_reset": None, "reserved": 0, "source": "config",
    },
]  # fmt: skip
#: Each number of BIG as the table shows it, and its column.
NUMBERS = {
    "2,410,000,000": "Input",
    "6,000,000,123": "Output",
    "8,410,000,123": "Total",
    "10,000,000,000*": "Limit",
    "999,999,999,999": "Input",
    "1,000,000,000,004": "Total",
}


@pytest.mark.parametrize("width", [80, 120, 160])
async def test_show_fits_the_terminal_and_never_splits_a_number(sock_dir: Path, width: int) -> None:
    async def quota_list(request: web.Request) -> web.Response:
        return web.json_response({"tenants": BIG})

    app = web.Application()
    app.router.add_get("/quota", quota_list)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = sock_dir / "big.sock"
    await web.UnixSite(runner, str(sock)).start()
    try:
        result = await aigw("quota", "show", "--admin-socket", str(sock), columns=width)
    finally:
        await runner.cleanup()
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(len(line) <= width for line in lines), result.stdout
    assert all(line == line.rstrip() for line in lines)  # no trailing spaces in a pipe
    header = next(line for line in lines if "Tenant" in line)
    rows = [line for line in lines if "team-analytics" in line or "enterprise" in line]
    assert len(rows) == 2  # one line each: nothing wrapped
    shown = header.split()
    for name in ("Tenant", "Total", "Limit", "Used"):  # always there, whole words
        assert name in shown
    # Every number in a shown column is whole; a hidden column is named under the table.
    text = result.stdout
    for number, column in NUMBERS.items():
        if column in shown:
            assert number in text, (number, text)
        else:
            assert column in text.split("hidden at this width")[0].splitlines()[-1]
    if width >= 160:
        assert {"Input", "Output", "Period"} <= set(shown) and "█" in text  # room for all
