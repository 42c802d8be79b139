"""`aigw usage`: the usage history of the running daemon, per hour, day, tenant or model.

A client command: it asks the daemon's admin socket (`GET /usage?since=…&by=…`) through
`AdminClient` (standard library only) and draws the answer with pure renderers:
`usage_table(report, width)` (a rich table with a bar per line, totals and the period covered)
and `usage_csv(report)`. The query and the report are `aigw.usage_history`'s, the same code the
daemon answers with, so the two cannot disagree.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Annotated, Any

import typer

from aigw.cli.common import (
    EXIT_USAGE,
    AdminSocketOption,
    ConfigOption,
    JsonOption,
    console,
    fail,
    output_width,
    print_plain,
)
from aigw.pricing import usd_text
from aigw.usage_history import (
    GroupBy,
    UsageQuery,
    UsageReport,
)

if TYPE_CHECKING:  # rich is imported where it is used: client commands start fast
    from rich.table import Table
    from rich.text import Text

_BAR_WIDTH = 10
_NUMBERS = ("Requests", "Errors", "Input", "Cached", "Output", "Cost")


@dataclass(frozen=True, slots=True)
class _Layout:
    """What a usage table shows: tried in order until one fits the width."""

    bar: int  # width of the bar; 0: no bar
    compact: bool  # token counts as 12.3k / 4.5M instead of every digit
    hidden: tuple[str, ...] = ()
    names: int | None = None  # tenant and model names shortened to this many characters


_LAYOUTS: tuple[_Layout, ...] = (
    _Layout(_BAR_WIDTH, compact=False),
    _Layout(_BAR_WIDTH, compact=True),
    _Layout(_BAR_WIDTH, compact=True, hidden=("Cached",)),
    _Layout(_BAR_WIDTH, compact=True, hidden=("Cached", "Errors")),
    _Layout(_BAR_WIDTH, compact=True, hidden=("Cached", "Errors"), names=16),
    _Layout(_BAR_WIDTH, compact=True, hidden=("Cached", "Errors", "Input"), names=16),
    _Layout(8, compact=True, hidden=("Cached", "Errors", "Input"), names=14),
    _Layout(0, compact=True, hidden=("Cached", "Errors", "Input"), names=14),
    _Layout(0, compact=True, hidden=("Cached", "Errors", "Input", "Output"), names=14),
)
#: Tenant and model names are shortened (`team-analyt…`) down to this many characters.
_MIN_NAME = 6


def usage_table(report: UsageReport, width: int | None = None) -> Table:
    """Render a report as a table no wider than `width` (None: as wide as it needs). Pure: no
    I/O. One line per bucket with a bar of its share of the largest cost (of requests when
    nothing cost anything), a totals line, and the period covered in the title. A tenant or
    model column that holds one value throughout goes into the title instead. Nothing wraps and
    no number is cut: to fit, token counts are shortened (12.3k), then the Cached and Errors
    columns go, long tenant and model names are shortened with `…`, then Input goes, the bar
    narrows and goes, then Output, and last the names are shortened further (to 6 characters;
    narrower than that the table is wider than asked rather than cut). The caption names what
    was left out."""
    layouts = iter(_LAYOUTS)
    table = _build(report, next(layouts))
    if width is None:
        return table
    for layout in layouts:
        if _width_of(table) <= width:
            return table
        table = _build(report, layout)
    names = _LAYOUTS[-1].names or 0
    while _width_of(table) > width and names > _MIN_NAME:
        names -= 1
        table = _build(report, replace(_LAYOUTS[-1], names=names))
    return table


def _build(report: UsageReport, layout: _Layout) -> Table:
    from rich import box
    from rich.table import Table

    buckets = report.buckets
    by = report.by
    # Key columns: the ones the buckets are grouped by, less those with one value throughout.
    keys: list[str] = []
    fixed: list[str] = []
    if by in ("hour", "day"):
        keys.append("Hour" if by == "hour" else "Day")
    for name, attr in (("Tenant", "tenant"), ("Model", "model")):
        values = {getattr(b, attr) for b in buckets}
        if values == {None}:
            continue
        if len(values) == 1 and by in ("hour", "day"):
            fixed.append(f"{name.lower()} {values.pop()}")
            continue
        keys.append(name)
    numbers = [n for n in _NUMBERS if n not in layout.hidden]
    cost_decimals = 2 if max((b.counts.cost_nanos for b in buckets), default=0) >= 10**9 else 4
    by_cost = any(b.counts.cost_nanos for b in buckets)
    peak = max((b.counts.cost_nanos if by_cost else b.counts.requests for b in buckets), default=0)
    rows: list[list[str | Text]] = []
    for bucket in buckets:
        counts = bucket.counts
        cells: dict[str, str | Text] = {
            "Hour": _when(bucket.start, by),
            "Day": _when(bucket.start, by),
            "Tenant": bucket.tenant or "",
            "Model": bucket.model or "",
        }
        cells |= _number_cells(counts, layout.compact, cost_decimals)
        row = [cells[name] for name in (*keys, *numbers)]
        if layout.bar:
            row.append(_bar(counts.cost_nanos if by_cost else counts.requests, peak, layout.bar))
        rows.append(row)
    totals = _number_cells(report.totals, layout.compact, cost_decimals)
    total_row: list[str | Text] = ["Total" if j == 0 else "" for j in range(len(keys))]
    total_row += [totals[name] for name in numbers]
    if layout.bar:
        total_row.append("")

    table = Table(
        title=_title(report, fixed),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
    )
    for name in keys:
        table.add_column(
            name,
            no_wrap=True,
            overflow="ellipsis",
            style="bold" if name != keys[0] or by not in ("hour", "day") else None,
            max_width=layout.names if name in ("Tenant", "Model") else None,
        )
    for j, name in enumerate(numbers, start=len(keys)):
        # A number is never cut: its column is as wide as its widest cell, whatever the width.
        widest = max(len(name), *(len(str(row[j])) for row in (*rows, total_row)))
        table.add_column(name, justify="right", no_wrap=True, min_width=widest)
    if layout.bar:
        table.add_column("", no_wrap=True, min_width=layout.bar)
    for i, row in enumerate(rows):
        table.add_row(*row, end_section=i == len(rows) - 1)
    table.add_row(*total_row, style="bold")
    notes = []
    if layout.hidden or not layout.bar:
        left = [*layout.hidden, *(() if layout.bar else ("the bars",))]
        notes.append(f"{', '.join(left)} hidden at this width (`--json` shows all)")
    if layout.compact:
        notes.append("k = thousand, M = million, G = billion tokens")
    if notes:
        table.caption = "\n".join(notes)
        table.caption_justify = "left"
    return table


def _title(report: UsageReport, fixed: list[str]) -> str:
    title = f"Usage by {report.by}"
    if fixed:
        title += " of " + ", ".join(fixed)
    if report.since is not None:
        until = report.until if report.until is not None else time.time()
        title += f", {_stamp(report.since)} to {_stamp(until)} UTC"
    return title


def _stamp(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(epoch))


def _when(start: int | None, by: str) -> str:
    if start is None:
        return ""
    if by == "day":
        return time.strftime("%Y-%m-%d", time.gmtime(start))
    return time.strftime("%m-%d %H:00", time.gmtime(start))


def _number_cells(counts: Any, compact: bool, cost_decimals: int) -> dict[str, str | Text]:
    show = _compact if compact else _whole
    return {
        "Requests": _whole(counts.requests),
        "Errors": _whole(counts.errors),
        "Input": show(counts.input_tokens),
        "Cached": show(counts.cached_input_tokens),
        "Output": show(counts.output_tokens),
        "Cost": _cost(counts.cost_nanos, cost_decimals),
    }


def _whole(value: int) -> str:
    return f"{value:,}"


def _compact(value: int) -> str:
    """At most 6 characters: 9,999, 12.3k, 123k, 4.56M, 1.2G; exact below 10,000."""
    if value < 10_000:
        return f"{value:,}"
    for unit, size in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if value >= size:
            scaled = value / size
            if scaled >= 1000 and unit == "G":
                return f"{scaled:,.0f}G"
            return f"{scaled:.3g}{unit}" if scaled < 1000 else f"{scaled:.0f}{unit}"
    return f"{value:,}"


def _cost(nanos: int, decimals: int) -> str:
    if nanos == 0:
        return "$0"
    text = usd_text(nanos, decimals=decimals)
    if text.strip("0.") == "":
        return f"<${1 / 10**decimals:.{decimals}f}"
    whole, _, frac = text.partition(".")
    return f"${int(whole):,}.{frac}"


def _bar(value: int, peak: int, width: int) -> Text:
    from rich.text import Text

    filled = 0 if peak <= 0 else round(value * width / peak)
    if value > 0:
        filled = max(filled, 1)  # anything at all shows
    shown = Text()
    shown.append("█" * filled, style="cyan")
    shown.append("░" * (width - filled), style="dim")
    return shown


def _width_of(table: Table) -> int:
    import io

    from rich.console import Console
    from rich.measure import Measurement

    measure = Console(file=io.StringIO(), width=100_000)
    return Measurement.get(measure, measure.options, table).maximum


def usage_csv(report: UsageReport) -> str:
    """The buckets as CSV with a header line: the bucket's keys (`start` as ISO-8601 UTC,
    `tenant`, `model`, whichever the report is grouped by), the counters, and `cost_usd` as
    exact decimal text. No totals line: a script sums the column."""
    import csv
    import io

    keys = {"hour": ["start", "tenant", "model"], "day": ["start", "tenant", "model"]}.get(
        report.by, [report.by]
    )
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [*keys, "requests", "errors", "input_tokens", "cached_input_tokens", "output_tokens",
         "cost_usd"]
    )  # fmt: skip
    for bucket in report.buckets:
        data = bucket.to_dict()
        counts = bucket.counts
        writer.writerow(
            [data.get(key, "") for key in keys]
            + [
                counts.requests,
                counts.errors,
                counts.input_tokens,
                counts.cached_input_tokens,
                counts.output_tokens,
                usd_text(counts.cost_nanos),
            ]
        )
    return out.getvalue()


def _fetch(admin_socket: str | None, config: str | None, query: UsageQuery) -> Any:
    from urllib.parse import urlencode

    from aigw.admin_client import AdminClient
    from aigw.errors import AdminError

    try:
        client = AdminClient.discover(admin_socket, config)
        return client.get_json("/usage?" + urlencode(query.to_params()))
    except AdminError as exc:  # DaemonNotRunning included
        fail(str(exc))


def _check_tenant(tenant: str) -> None:
    from aigw.tenants import is_valid_tenant

    if not is_valid_tenant(tenant):
        shown = tenant if len(tenant) <= 64 else tenant[:64] + "…"
        fail(f"invalid tenant name {shown!r}: use 1-64 characters of A-Z a-z 0-9 . _ -")


def register(app: typer.Typer) -> None:
    @app.command("usage")
    def usage(
        tenant: Annotated[
            str | None, typer.Option("--tenant", metavar="TENANT", help="Only this tenant.")
        ] = None,
        model: Annotated[
            str | None, typer.Option("--model", metavar="MODEL", help="Only this model.")
        ] = None,
        since: Annotated[
            str,
            typer.Option(
                "--since",
                metavar="WINDOW",
                help="How far back: a number of minutes, hours, days or weeks (90m, 24h, 7d, "
                "30d, 2w; at most 366d).",
            ),
        ] = "24h",
        by: Annotated[
            GroupBy | None,
            typer.Option(
                "--by",
                metavar="GROUP",
                help="One line per hour, day, tenant or model (default: hour for up to 2 days, "
                "else day).",
            ),
        ] = None,
        as_json: bool = JsonOption,
        as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV for spreadsheets.")] = False,
        admin_socket: str | None = AdminSocketOption,
        config: str | None = ConfigOption,
    ) -> None:
        """Usage history: requests, tokens (input, cached, output), cost and errors."""
        if as_json and as_csv:
            fail("--json and --csv cannot be used together", EXIT_USAGE)
        if tenant is not None:
            _check_tenant(tenant)
        try:
            query = UsageQuery.make(since, by, tenant, model)
        except ValueError as exc:
            fail(f"--{exc}", EXIT_USAGE)
        now = time.time()
        data = _fetch(admin_socket, config, query)
        try:
            report = UsageReport.from_dict(data, query.by, until=now)
        except ValueError as exc:
            fail(f"the daemon's usage answer is not understood: {exc}")
        report = _with_period(report, now - query.seconds)
        if as_json:
            typer.echo(json.dumps(report.to_dict(), indent=2))
        elif as_csv:
            typer.echo(usage_csv(report), nl=False)
        elif not report.buckets:
            scope = "".join(
                f" for {what} {value}"
                for what, value in (("tenant", tenant), ("model", model))
                if value
            )
            console.print(f"No usage recorded in the last {query.since}{scope}.", markup=False)
        else:
            print_plain(usage_table(report, output_width(console)))


def _with_period(report: UsageReport, since: float) -> UsageReport:
    from dataclasses import replace

    # The daemon sums whole hours: the first one began at or before `since`.
    return replace(report, since=since - since % 3600)
