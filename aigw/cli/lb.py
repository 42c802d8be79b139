"""`aigw lb stats`: the load balancer per model and target, read from the running daemon.

A client command: it talks to the daemon through `AdminClient` (standard library only) and
renders the JSON of `GET /lb/stats`; it never imports aiohttp or the balancer itself, and rich's
table and live display load only when something is drawn.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from aigw.cli.common import AdminSocketOption, ConfigOption, JsonOption, fail, format_uptime

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.table import Table

#: health -> (symbol, colour): unhealthy rows must stand out without colour too.
_HEALTH_LOOK: dict[str, tuple[str, str]] = {
    "healthy": ("✓", "green"),
    "degraded": ("⚠", "yellow"),
    "unhealthy": ("✗", "red"),
}
_UNKNOWN_LOOK = ("?", "magenta")


@dataclass(frozen=True, slots=True)
class _Row:
    model: str  # empty on a model's second and later targets
    strategy: str
    target: dict[str, Any]
    rate: float | None  # requests per second over the interval (or since start)


@dataclass(frozen=True, slots=True)
class _Column:
    header: str
    #: Lower survives longer: columns are dropped from the highest number down to fit.
    priority: int
    cell: Callable[[_Row], str]
    justify: str = "left"
    max_width: int | None = None


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _latency(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    if value < 0.01:
        return f"{value * 1000:.1f}ms"
    if value < 1:
        return f"{value * 1000:.0f}ms"
    return f"{value:.1f}s"


def _probe(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    return "now" if value <= 0 else "in " + format_uptime(value + 0.999)


def _percent(value: Any) -> str:
    return f"{_num(value) * 100:.0f}%"


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _health_cell(row: _Row) -> str:
    return str(row.target.get("health", "?"))


def _target_cell(row: _Row) -> str:
    symbol, _ = _HEALTH_LOOK.get(_health_cell(row), _UNKNOWN_LOOK)
    return f"{symbol} {row.target.get('id', '?')}"


_COLUMNS: tuple[_Column, ...] = (
    _Column("model", 0, lambda r: r.model, max_width=20),
    _Column("strategy", 8, lambda r: r.strategy if r.model else ""),
    _Column("target", 0, _target_cell, max_width=32),
    _Column("health", 6, _health_cell),
    _Column("circuit", 2, lambda r: str(r.target.get("circuit", "?")).replace("_", "-")),
    _Column("w", 10, lambda r: str(r.target.get("weight", "")), justify="right"),
    _Column("infl", 5, lambda r: str(r.target.get("in_flight", 0)), justify="right"),
    _Column("req/s", 1, lambda r: _rate(r.rate), justify="right"),
    _Column("req", 7, lambda r: f"{int(_num(r.target.get('requests'))):,}", justify="right"),
    _Column("err", 9, lambda r: f"{int(_num(r.target.get('errors'))):,}", justify="right"),
    _Column("err%", 3, lambda r: _percent(r.target.get("error_rate")), justify="right"),
    _Column("p50", 11, lambda r: _latency(r.target.get("latency_p50")), justify="right"),
    _Column("p95", 4, lambda r: _latency(r.target.get("latency_p95")), justify="right"),
    _Column("probe", 12, lambda r: _probe(r.target.get("next_probe_in")), justify="right"),
    _Column("last error", 13, lambda r: str(r.target.get("last_error") or ""), max_width=40),
)


def _models(snapshot: dict[str, Any]) -> list[dict[str, Any]]:
    models = snapshot.get("models")
    return [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []


def _targets(model: dict[str, Any]) -> list[dict[str, Any]]:
    targets = model.get("targets")
    return [t for t in targets if isinstance(t, dict)] if isinstance(targets, list) else []


def _elapsed(snapshot: dict[str, Any], previous: dict[str, Any] | None, interval: float) -> float:
    """Seconds between two snapshots, by the daemon's own uptime when it has one."""
    if previous is None:
        return 0.0
    now, before = snapshot.get("uptime"), previous.get("uptime")
    if isinstance(now, int | float) and isinstance(before, int | float):
        return float(now - before) if now > before else 0.0  # a restarted daemon: no rate
    return interval


def _rates(
    snapshot: dict[str, Any], previous: dict[str, Any] | None, interval: float
) -> tuple[dict[tuple[str, str], float | None], float | None]:
    """Per (model, target id) request rate, and the total: over the interval when a previous
    snapshot is given, else the average since the daemon started."""
    elapsed = _elapsed(snapshot, previous, interval)
    before: dict[tuple[str, str], float] = {}
    if previous is not None:
        for model in _models(previous):
            for target in _targets(model):
                key = (str(model.get("name")), str(target.get("id")))
                before[key] = _num(target.get("requests"))
    uptime = _num(snapshot.get("uptime"))
    rates: dict[tuple[str, str], float | None] = {}
    total: float | None = 0.0
    for model in _models(snapshot):
        for target in _targets(model):
            key = (str(model.get("name")), str(target.get("id")))
            requests = _num(target.get("requests"))
            rate: float | None
            if previous is None:
                rate = requests / uptime if uptime > 0 else None
            elif elapsed > 0 and key in before:
                rate = max(requests - before[key], 0.0) / elapsed
            else:
                rate = None  # new since the last snapshot, or the daemon restarted
            rates[key] = rate
            total = None if total is None or rate is None else total + rate
    return rates, total


def lb_header(snapshot: dict[str, Any], previous: dict[str, Any] | None, interval: float) -> str:
    """One line: daemon uptime, total request rate, healthy targets n/m."""
    _, total = _rates(snapshot, previous, interval)
    targets = [t for m in _models(snapshot) for t in _targets(m)]
    healthy = sum(1 for t in targets if t.get("health") == "healthy")
    if previous is None:
        rate = f"{_rate(total)} req/s avg"
    else:
        rate = f"{_rate(total)} req/s over {_elapsed(snapshot, previous, interval):.1f}s"
    return (
        f"aigw lb · uptime {format_uptime(_num(snapshot.get('uptime')))} · {rate}"
        f" · healthy {healthy}/{len(targets)}"
    )


def _rows(snapshot: dict[str, Any], previous: dict[str, Any] | None, interval: float) -> list[_Row]:
    rates, _ = _rates(snapshot, previous, interval)
    rows = []
    for model in _models(snapshot):
        name = str(model.get("name", ""))
        for i, target in enumerate(_targets(model)):
            rows.append(
                _Row(
                    model=name if i == 0 else "",
                    strategy=str(model.get("strategy", "")),
                    target=target,
                    rate=rates.get((name, str(target.get("id")))),
                )
            )
    return rows


def _build_table(rows: list[_Row], columns: list[_Column]) -> Table:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, padding=(0, 0), show_edge=False, header_style="bold")
    for column in columns:
        table.add_column(
            column.header,
            justify="right" if column.justify == "right" else "left",
            no_wrap=True,
            overflow="ellipsis",
            max_width=column.max_width,
        )
    for row in rows:
        health = _health_cell(row)
        _, colour = _HEALTH_LOOK.get(health, _UNKNOWN_LOOK)
        table.add_row(
            *(column.cell(row) for column in columns),
            style=None if health == "healthy" else colour,
        )
    return table


def _natural_width(table: Table) -> int:
    import io

    from rich.console import Console
    from rich.measure import Measurement

    console = Console(file=io.StringIO(), width=10_000)
    return Measurement.get(console, console.options, table).maximum


def lb_table(
    snapshot: dict[str, Any], previous: dict[str, Any] | None, interval: float, width: int
) -> Table:
    """Render a `GET /lb/stats` snapshot. Pure: no I/O. Per-row req/s is over the time between
    `previous` and `snapshot` (else the average since start); columns are dropped by priority
    until the table fits `width`."""
    rows = _rows(snapshot, previous, interval)
    columns = list(_COLUMNS)
    while True:
        table = _build_table(rows, columns)
        droppable = [c for c in columns if c.priority > 0]
        if not droppable or _natural_width(table) <= width:
            return table
        columns.remove(max(droppable, key=lambda c: c.priority))


def filter_model(snapshot: dict[str, Any], model: str | None) -> dict[str, Any]:
    if model is None:
        return snapshot
    return {**snapshot, "models": [m for m in _models(snapshot) if m.get("name") == model]}


def _render(
    snapshot: dict[str, Any], previous: dict[str, Any] | None, interval: float, width: int
) -> RenderableType:
    from rich.console import Group
    from rich.text import Text

    header = Text(lb_header(snapshot, previous, interval), style="bold", overflow="ellipsis")
    header.no_wrap = True
    return Group(header, lb_table(snapshot, previous, interval, width))


def _live(
    console: Console,
    fetch: Callable[[], dict[str, Any]],
    first: dict[str, Any],
    interval: float,
) -> None:
    """Redraw in place every `interval` seconds until Ctrl+C."""
    from rich.live import Live

    current, previous = first, None
    with Live(
        _render(current, previous, interval, console.width),
        console=console,
        auto_refresh=False,
        redirect_stdout=False,
        redirect_stderr=False,
    ) as live:
        try:
            while True:
                time.sleep(interval)
                previous, current = current, fetch()
                live.update(_render(current, previous, interval, console.width), refresh=True)
        except KeyboardInterrupt:
            pass  # the normal way out: leave the last frame on screen, exit 0


def register(app: typer.Typer) -> None:
    lb_app = typer.Typer(
        name="lb", help="Load balancing of the running daemon.", no_args_is_help=True
    )
    lb_app.command("stats")(stats)
    app.add_typer(lb_app, name="lb")


def stats(
    once: Annotated[bool, typer.Option("--once", help="Print one snapshot and exit.")] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.1, help="Seconds between live refreshes.")
    ] = 2.0,
    model: Annotated[str | None, typer.Option("--model", help="Show only this model.")] = None,
    json_: bool = JsonOption,
    admin_socket: str | None = AdminSocketOption,
    config: str | None = ConfigOption,
) -> None:
    """Per model and target: health, circuit, traffic, errors, latency. Live on a terminal."""
    from aigw.admin_client import AdminClient, AdminError

    def fetch() -> dict[str, Any]:
        try:
            data = client.get_json("/lb/stats")
        except AdminError as exc:  # DaemonNotRunning included
            fail(str(exc))
        if not isinstance(data, dict):
            fail("the daemon sent an unexpected answer to GET /lb/stats")
        return filter_model(data, model)

    try:
        client = AdminClient.discover(admin_socket, config)
        snapshot = fetch()
        if model is not None and not snapshot["models"]:
            fail(f"no model named {model!r} on the running daemon")
        if json_:
            typer.echo(json.dumps(snapshot, indent=2))
            return
        from rich.console import Console  # only when drawing: ~40 ms

        console = Console()
        if once or not console.is_terminal:
            console.print(_render(snapshot, None, interval, console.width))
            return
        import gc

        gc.enable()  # main() turned it off for start-up; the live view runs for long
        _live(console, fetch, snapshot, interval)
    except KeyboardInterrupt:  # Ctrl+C before the live view started
        return
