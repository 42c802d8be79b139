"""`aigw usage`: the pure renderers (`usage_table`, `usage_csv`) on report objects, and the
command end to end through the real `AdminClient`.

The daemon's side of `GET /usage` is not built yet (the lead wires `summarise()` into the admin
socket after the pipeline restructure), so the end-to-end tests run the command against a tiny
real HTTP server on a Unix socket that answers `GET /usage` with a fixed report in the JSON
shape DESIGN §9 fixes, made by `summarise()` itself. It stands in for the daemon's answer only;
everything on the client side (option parsing, the query string, the socket, the JSON, the
rendering) is the real code.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import typer
from aiohttp import web
from rich.console import Console
from typer.testing import CliRunner

from aigw.cli.usage import register, usage_csv, usage_table
from aigw.pricing import to_nanos
from aigw.usage_history import DAY, HOUR, Row, UsageReport, summarise
from tests.conftest import cli_env

T0 = int(datetime.fromisoformat("2024-03-10T00:00:00+00:00").timestamp())
CHAT = "chat/completions"
ROWS = [
    Row(T0, "team-analytics", "gpt-4o-mini", CHAT, 1200, 3, 2_400_000, 800_000, 310_000,
        to_nanos("0.51")),
    Row(T0, "enterprise", "claude-sonnet-4-5", CHAT, 90, 0, 1_900_000, 1_200_000, 88_000,
        to_nanos("2.31")),
    Row(T0 + HOUR, "team-analytics", "gpt-4o-mini", CHAT, 900, 0, 1_700_000, 0, 250_000,
        to_nanos("0.4055")),
    Row(T0 + 2 * HOUR, "free-tier", "mock", "embeddings", 5, 5, 50, 0, 0, 0),
]  # fmt: skip
#: Counts far beyond a day of one tenant, for the narrow-terminal tests.
BIG = [
    Row(T0, "a-tenant-with-a-long-name", "claude-opus-4-1-20250805", CHAT, 12_345_678, 98_765,
        987_654_321_012, 123_456_789_012, 45_678_901_234, to_nanos("9876543.21")),
    Row(T0 + HOUR, "enterprise", "gpt-4.1", CHAT, 1, 0, 10, 0, 5, to_nanos("0.00006")),
]  # fmt: skip


def report(rows: list[Row] = ROWS, by: str = "hour", **kw: Any) -> UsageReport:
    return summarise(rows, T0, by, until=T0 + DAY, **kw)  # type: ignore[arg-type]


def render(table: Any, width: int) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(table)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())


# --- the table -----------------------------------------------------------------------------------


def test_table_shows_every_bucket_totals_bars_and_the_period() -> None:
    text = render(usage_table(report(), None), 200)
    lines = text.splitlines()
    assert lines[0] == "Usage by hour, 2024-03-10 00:00 to 2024-03-11 00:00 UTC"
    header = next(line for line in lines if "Requests" in line).split()
    assert header == ["Hour", "Tenant", "Model", "Requests", "Errors", "Input", "Cached",
                      "Output", "Cost"]  # fmt: skip
    row = next(line for line in lines if "claude-sonnet-4-5" in line)
    for cell in ("03-10 00:00", "enterprise", "90", "1,900,000", "1,200,000", "88,000", "$2.31"):
        assert cell in row
    assert "█" * 10 in row  # the costliest bucket has the whole bar
    total = next(line for line in lines if line.lstrip().startswith("Total"))
    assert total.split() == ["Total", "2,195", "8", "6,000,050", "2,000,000", "648,000", "$3.23"]


def test_bars_are_shares_of_the_largest_cost_or_requests_when_nothing_cost() -> None:
    text = render(usage_table(report(), None), 200)
    bars = {
        name: line.count("█")
        for line in text.splitlines()
        for name in ("claude-sonnet", "gpt-4o-mini", "mock")
        if name in line
    }
    assert bars == {"claude-sonnet": 10, "gpt-4o-mini": 2, "mock": 0}
    free = report([Row(T0, "a", "m", CHAT, 10, 0, 1, 0, 1, 0), Row(T0, "b", "m", CHAT, 5, 0, 1,
                                                                    0, 1, 0)])  # fmt: skip
    lines = render(usage_table(free, None), 200).splitlines()
    assert [line.count("█") for line in lines if line.lstrip().startswith("03-10")] == [10, 5]


def test_a_single_tenant_or_model_goes_into_the_title() -> None:
    one = report(tenant="team-analytics")
    text = render(usage_table(one, None), 200)
    assert text.splitlines()[0].startswith(
        "Usage by hour of tenant team-analytics, model gpt-4o-mini, 2024-03-10 00:00"
    )
    header = next(line for line in text.splitlines() if "Requests" in line).split()
    assert "Tenant" not in header and "Model" not in header


def test_by_tenant_and_by_model_tables() -> None:
    text = render(usage_table(report(by="tenant"), None), 200)
    lines = text.splitlines()
    assert lines[0].startswith("Usage by tenant, ")
    header = next(line for line in lines if "Requests" in line).split()
    assert header[0] == "Tenant" and "Model" not in header and "Hour" not in header
    order = [line.split()[0] for line in lines if line.split() and line.split()[0] in
             ("enterprise", "team-analytics", "free-tier")]  # fmt: skip
    assert order == ["enterprise", "team-analytics", "free-tier"]  # costliest first
    text = render(usage_table(report(by="model"), None), 200)
    assert next(line for line in text.splitlines() if "Requests" in line).split()[0] == "Model"
    day = render(usage_table(report(by="day"), None), 200)
    assert "2024-03-10" in day and "Day" in day


def test_costs_under_a_dollar_keep_four_decimals() -> None:
    cheap = report([Row(T0, "a", "m", CHAT, 1, 0, 10, 0, 5, to_nanos("0.00006")),
                    Row(T0, "b", "m", CHAT, 1, 0, 10, 0, 5, 1),
                    Row(T0, "c", "m", CHAT, 1, 0, 10, 0, 5, 0)])  # fmt: skip
    text = render(usage_table(cheap, None), 200)
    assert "$0.0001" in text  # 0.00006 rounds to 0.0001
    assert "<$0.0001" in text  # one nano-dollar is not shown as nothing
    assert "$0 " in text + " "


@pytest.mark.parametrize("width", [60, 80, 100, 120, 200])
@pytest.mark.parametrize("rows", [ROWS, BIG], ids=["day", "big"])
def test_the_table_fits_the_width_without_wrapping_or_splitting_numbers(
    width: int, rows: list[Row]
) -> None:
    text = render(usage_table(report(rows), width), width)
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines), text
    header = next(line for line in lines if "Requests" in line)
    shown = header.split()
    for name in ("Requests", "Cost"):  # always there, whole words
        assert name in shown
    # one line per bucket and one for the totals: nothing wrapped
    assert sum(1 for line in lines if line.lstrip().startswith("Total")) == 1
    body = [line for line in lines if line.lstrip()[:2] in ("03", "To")]
    assert len(body) == len(report(rows).buckets) + 1, text
    # every cost is whole
    for bucket in report(rows).buckets:
        nanos = bucket.counts.cost_nanos
        if nanos >= 10**9:
            assert f"${Decimal(nanos).scaleb(-9).quantize(Decimal('0.01')):,}" in text
    hidden = text.split("hidden at this width")[0].splitlines()[-1] if "hidden" in text else ""
    for name in ("Cached", "Errors", "Input", "Output"):
        assert (name in shown) != (name in hidden), (name, text)
    if rows is ROWS and width >= 120:
        assert "█" in text and "hidden" not in text


def test_big_numbers_shorten_with_a_note() -> None:
    text = render(usage_table(report(BIG), 140), 140)
    assert "988G" in text and "123G" in text and "45.7G" in text  # input, cached, output
    assert "k = thousand, M = million, G = billion tokens" in text
    assert "$9,876,543.21" in text and "12,345,678" in text  # requests and cost stay whole


# --- CSV -----------------------------------------------------------------------------------------


def test_csv_parses_with_a_header_and_exact_costs() -> None:
    rows = list(csv.DictReader(io.StringIO(usage_csv(report()))))
    assert list(rows[0]) == ["start", "tenant", "model", "requests", "errors", "input_tokens",
                             "cached_input_tokens", "output_tokens", "cost_usd"]  # fmt: skip
    assert rows[0] == {
        "start": "2024-03-10T00:00:00Z", "tenant": "enterprise", "model": "claude-sonnet-4-5",
        "requests": "90", "errors": "0", "input_tokens": "1900000",
        "cached_input_tokens": "1200000", "output_tokens": "88000", "cost_usd": "2.31",
    }  # fmt: skip
    assert [r["cost_usd"] for r in rows] == ["2.31", "0.51", "0.4055", "0.00"]
    assert sum(Decimal(r["cost_usd"]) for r in rows) == Decimal("3.2255")
    by_tenant = list(csv.reader(io.StringIO(usage_csv(report(by="tenant")))))
    assert by_tenant[0][0] == "tenant" and by_tenant[1][0] == "enterprise"
    assert len(by_tenant) == 4  # header + 3 tenants, no totals line


# --- the command, end to end ---------------------------------------------------------------------


@dataclass
class StandIn:
    """A Unix-socket HTTP server answering `GET /usage` with a fixed report (see the module
    docstring), recording the query strings it was sent."""

    socket: Path
    answer: Callable[[web.Request], web.Response]
    queries: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture
async def stand_in(sock_dir: Path) -> AsyncIterator[StandIn]:
    fixed = report().to_dict()
    server = StandIn(sock_dir / "admin.sock", lambda request: web.json_response(fixed))

    async def usage(request: web.Request) -> web.Response:
        server.queries.append(dict(request.query))
        return server.answer(request)

    app = web.Application()
    app.router.add_get("/usage", usage)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.UnixSite(runner, str(server.socket)).start()
    try:
        yield server
    finally:
        await runner.cleanup()


async def aigw(*args: str, columns: int | None = None) -> Any:
    """Run `aigw usage …` in a thread: the AdminClient blocks, the server runs on this loop."""
    app = typer.Typer()
    register(app)
    app.command("noop", hidden=True)(lambda: None)  # keep `usage` a subcommand
    env = {"COLUMNS": str(columns) if columns else None}
    return await asyncio.to_thread(CliRunner().invoke, app, list(args), env=env)


async def test_the_default_query_and_the_table(stand_in: StandIn) -> None:
    result = await aigw("usage", "--admin-socket", str(stand_in.socket), columns=100)
    assert result.exit_code == 0, result.output
    assert stand_in.queries == [{"since": "24h", "by": "hour"}]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Usage by hour, ") and lines[0].endswith(" UTC")
    assert all(len(line) <= 100 for line in lines)
    for text in ("team-analytics", "enterprise", "free-tier", "Total", "$2.31"):
        assert text in result.stdout


async def test_options_become_the_query(stand_in: StandIn) -> None:
    sock = str(stand_in.socket)
    result = await aigw("usage", "--since", "7d", "--by", "tenant", "--tenant", "team-a",
                        "--model", "gpt-4o", "--json", "--admin-socket", sock)  # fmt: skip
    assert result.exit_code == 0, result.output
    await aigw("usage", "--since", "30d", "--json", "--admin-socket", sock)
    assert stand_in.queries == [
        {"since": "7d", "by": "tenant", "tenant": "team-a", "model": "gpt-4o"},
        {"since": "30d", "by": "day"},  # more than 2 days: by day unless asked
    ]


async def test_json_is_the_design_shape(stand_in: StandIn) -> None:
    result = await aigw("usage", "--json", "--admin-socket", str(stand_in.socket))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data == report().to_dict()
    assert set(data) == {"buckets", "totals"}
    assert data["buckets"][0]["start"] == "2024-03-10T00:00:00Z"
    assert data["totals"]["cost_usd"] == 3.2255


async def test_csv_output_parses(stand_in: StandIn) -> None:
    result = await aigw("usage", "--csv", "--admin-socket", str(stand_in.socket))
    assert result.exit_code == 0, result.output
    assert result.stdout == usage_csv(report())
    assert len(list(csv.DictReader(io.StringIO(result.stdout)))) == 4


async def test_nothing_recorded_is_said_in_one_line(stand_in: StandIn) -> None:
    empty = summarise([], T0, "hour").to_dict()
    stand_in.answer = lambda request: web.json_response(empty)
    result = await aigw("usage", "--tenant", "team-a", "--admin-socket", str(stand_in.socket))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "No usage recorded in the last 24h for tenant team-a."


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--json", "--csv"], 2, "--json and --csv cannot be used together"),
        (["--since", "forever"], 2, "--since must be a number with a unit"),
        (["--since", "400d"], 2, "--since is at most 366d"),
        (["--tenant", "bad name"], 1, "invalid tenant name 'bad name'"),
        (["--model", "m" * 300], 2, "--model must be 1 to 256 characters"),
    ],
)
async def test_bad_options_are_one_line_without_a_request(
    stand_in: StandIn, args: list[str], code: int, words: str
) -> None:
    result = await aigw("usage", *args, "--admin-socket", str(stand_in.socket))
    assert result.exit_code == code, result.output
    assert words in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert stand_in.queries == []


async def test_a_bad_choice_is_one_line_from_the_real_entry_point(stand_in: StandIn) -> None:
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "aigw", "usage", "--by", "week", "--admin-socket",
         str(stand_in.socket)],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("error: Invalid value for '--by': 'week' is not one of")
    assert len(done.stderr.strip().splitlines()) == 1
    assert stand_in.queries == []


async def test_an_answer_of_another_shape_is_one_line(stand_in: StandIn) -> None:
    stand_in.answer = lambda request: web.json_response({"buckets": "none"})
    result = await aigw("usage", "--admin-socket", str(stand_in.socket))
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: the daemon's usage answer is not understood: a usage report has buckets "
        "(a list) and totals (an object)"
    )


async def test_the_daemons_error_is_one_line(stand_in: StandIn) -> None:
    message = {"error": {"message": "usage history is off (usage.enabled: false)"}}
    stand_in.answer = lambda request: web.json_response(message, status=404)
    result = await aigw("usage", "--admin-socket", str(stand_in.socket))
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: usage history is off (usage.enabled: false)"


async def test_no_daemon_is_one_line_exit_1(tmp_path: Path) -> None:
    result = await aigw("usage", "--admin-socket", str(tmp_path / "none.sock"))
    assert result.exit_code == 1
    assert "no aigw daemon is running" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# Runs `aigw ARGS...` as the installed entry point does, then lists the imported modules.
PROBE = """\
import json, sys
out, args = sys.argv[1], sys.argv[2:]
sys.argv = ["aigw", *args]
from aigw.cli import main
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code or 0
with open(out, "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""


@pytest.mark.parametrize(
    ("flag", "needs_rich"), [("--json", False), ("--csv", False), (None, True)]
)
async def test_the_real_entry_point_imports_nothing_of_the_daemon(
    stand_in: StandIn, tmp_path: Path, flag: str | None, needs_rich: bool
) -> None:
    out = tmp_path / "modules.json"
    args = ["usage", "--admin-socket", str(stand_in.socket), *([flag] if flag else [])]
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", PROBE, str(out), *args],
        capture_output=True,
        text=True,
        env=cli_env({"COLUMNS": "80"}),
        timeout=60,
    )
    data = json.loads(out.read_text())
    assert data["code"] == 0, done.stderr
    modules = set(data["modules"])
    heavy = {"aiohttp", "aigw.server", "aigw.proxy", "aigw.config", "yaml", "http.client",
             "pydantic"}  # fmt: skip
    assert sorted(m for m in modules if m in heavy or m.split(".")[0] in heavy) == []
    assert "aigw.cli.quota" not in modules and "aigw.cli.lb" not in modules
    assert ("rich.console" in modules) == needs_rich
    if flag == "--json":
        assert json.loads(done.stdout) == report().to_dict()
    if flag is None:
        assert all(len(line) <= 80 for line in done.stdout.splitlines())
