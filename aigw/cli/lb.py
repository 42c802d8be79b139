"""`aigw lb stats`: the load balancer per model and target, read from the running daemon.

A client command: it talks to the daemon through `AdminClient` (standard library only) and
renders the JSON of `GET /lb/stats`; it never imports aiohttp or the balancer itself, and rich's
table and live display load only when something is drawn.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from aigw.cli.common import (
    AdminSocketOption,
    ConfigOption,
    JsonOption,
    fail,
    format_uptime,
    output_width,
    print_plain,
)

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


def _percent(part: float, whole: float) -> str:
    return f"{part / whole * 100:.0f}%" if whole > 0 else "-"


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _health(row: _Row) -> str:
    return str(row.target.get("health", "?"))


def _health_cell(row: _Row) -> str:
    cooling = row.target.get("cooling_for")
    if isinstance(cooling, int | float) and cooling > 0:
        # The upstream answered 429 and asked for a pause: skipped until it ends.
        return "429 " + format_uptime(cooling + 0.999)
    return _health(row)


def _target_cell(row: _Row) -> str:
    symbol, _ = _HEALTH_LOOK.get(_health(row), _UNKNOWN_LOOK)
    return f"{symbol} {row.target.get('id', '?')}"


def _window_errors(target: dict[str, Any]) -> int:
    """Errors inside the health window: the daemon's `window_errors` when it sends it, else
    what its `error_rate` (window errors / window_requests) says."""
    sent = target.get("window_errors")
    if isinstance(sent, int):
        return sent
    return round(_num(target.get("error_rate")) * _num(target.get("window_requests")))


def _window_cell(row: _Row) -> str:
    attempts = int(_num(row.target.get("window_requests")))
    return f"{_window_errors(row.target)}/{attempts}" if attempts else "-"


def _error_share(row: _Row) -> str:
    # err and req are both client requests since start: err% is the one from the other two.
    return _percent(_num(row.target.get("errors")), _num(row.target.get("requests")))


_LAST_ERROR = "last error"
#: model and target are never dropped; past what fits they are shortened (with `…`) to these.
_MIN_WIDTH = {"model": 8, "target": 16}

_COLUMNS: tuple[_Column, ...] = (
    _Column("model", 0, lambda r: r.model),
    _Column("strategy", 8, lambda r: r.strategy if r.model else ""),
    _Column("target", 0, _target_cell),
    _Column("health", 6, _health_cell),
    _Column("circuit", 2, lambda r: str(r.target.get("circuit", "?")).replace("_", "-")),
    _Column("w", 10, lambda r: str(r.target.get("weight", "")), justify="right"),
    _Column("infl", 5, lambda r: str(r.target.get("in_flight", 0)), justify="right"),
    _Column("req/s", 1, lambda r: _rate(r.rate), justify="right"),
    _Column("req", 7, lambda r: f"{int(_num(r.target.get('requests'))):,}", justify="right"),
    _Column("err", 9, lambda r: f"{int(_num(r.target.get('errors'))):,}", justify="right"),
    _Column("err%", 3, _error_share, justify="right"),
    _Column("window", 4, _window_cell, justify="right"),
    _Column("p50", 11, lambda r: _latency(r.target.get("latency_p50")), justify="right"),
    _Column("p95", 4, lambda r: _latency(r.target.get("latency_p95")), justify="right"),
    _Column("probe", 12, lambda r: _probe(r.target.get("next_probe_in")), justify="right"),
    _Column(_LAST_ERROR, 0, lambda r: str(r.target.get("last_error") or "")),
)

#: What the columns mean, for `aigw lb stats --help`.
COLUMNS_HELP = (
    "req, err and err% count client requests since the daemon started (probes never count);"
    " req/s is over the last refresh; window is errors/attempts in the health window that"
    " decides health (active probes included); probe is when the next probe is due;"
    " health '429 20s' is a pause the upstream asked for (its 429 and retry-after)."
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


def _upstream_health(snapshot: dict[str, Any]) -> dict[str, str]:
    """Health per distinct upstream (target id): one upstream serves several gateway models
    with a breaker each, and counts as healthy only when every one of them is."""
    rank = {"healthy": 0, "degraded": 1, "unhealthy": 2}
    worst: dict[str, str] = {}
    for model in _models(snapshot):
        for target in _targets(model):
            key, health = str(target.get("id")), str(target.get("health", "?"))
            seen = worst.get(key)
            if seen is None or rank.get(health, 3) > rank.get(seen, 3):
                worst[key] = health
    return worst


def lb_header(snapshot: dict[str, Any], previous: dict[str, Any] | None, interval: float) -> str:
    """One line: daemon uptime, total request rate, healthy upstreams n/m."""
    _, total = _rates(snapshot, previous, interval)
    upstreams = _upstream_health(snapshot)
    healthy = sum(1 for health in upstreams.values() if health == "healthy")
    if previous is None:
        rate = f"{_rate(total)} req/s avg"
    else:
        rate = f"{_rate(total)} req/s over {_elapsed(snapshot, previous, interval):.1f}s"
    return (
        f"aigw lb · uptime {format_uptime(_num(snapshot.get('uptime')))} · {rate}"
        f" · healthy {healthy}/{len(upstreams)} upstreams"
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


def _build_table(
    rows: list[_Row], columns: list[_Column], max_widths: dict[str, int] | None = None
) -> Table:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, padding=(0, 0), show_edge=False, header_style="bold")
    for column in columns:
        table.add_column(
            column.header,
            justify="right" if column.justify == "right" else "left",
            no_wrap=True,
            overflow="ellipsis",
            max_width=(max_widths or {}).get(column.header),
        )
    for row in rows:
        health = _health(row)
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

    console = Console(file=io.StringIO(), width=100_000)
    return Measurement.get(console, console.options, table).maximum


@dataclass(frozen=True, slots=True)
class LbFrame:
    """One drawing of `GET /lb/stats`, laid out for a width: what `lb_frame()` returns."""

    header: str
    table: Table
    #: (health, target id, last error) of each target whose last error did not fit as a
    #: column: listed in full under the table instead.
    errors: tuple[tuple[str, str, str], ...]
    #: Columns left out to fit the width, in table order.
    hidden: tuple[str, ...]


def lb_frame(
    snapshot: dict[str, Any], previous: dict[str, Any] | None, interval: float, width: int | None
) -> LbFrame:
    """Lay a `GET /lb/stats` snapshot out for `width` columns (None: as wide as it needs).
    Pure: no I/O. Per-row req/s is over the time between `previous` and `snapshot` (else the
    average since start).

    To fit, in this order: the last errors leave the table for lines of their own under it
    (in full: they are what matters when something is down); then columns are dropped by
    priority (and named in `hidden`); then model and target names are shortened with `…`.
    Nothing is cut or left empty when the width allows the whole table."""
    rows = _rows(snapshot, previous, interval)
    columns = list(_COLUMNS)
    if not any(row.target.get("last_error") for row in rows):
        columns = [c for c in columns if c.header != _LAST_ERROR]
    errors: tuple[tuple[str, str, str], ...] = ()
    table = _build_table(rows, columns)
    if width is None:
        return LbFrame(lb_header(snapshot, previous, interval), table, errors, ())
    if _natural_width(table) > width and any(c.header == _LAST_ERROR for c in columns):
        columns = [c for c in columns if c.header != _LAST_ERROR]
        errors = _errors_below(rows)
        table = _build_table(rows, columns)
    dropped: set[str] = set()
    while _natural_width(table) > width:
        droppable = [c for c in columns if c.priority > 0]
        if not droppable:
            break
        column = max(droppable, key=lambda c: c.priority)
        columns.remove(column)
        dropped.add(column.header)
        table = _build_table(rows, columns)
    excess = _natural_width(table) - width
    if excess > 0:  # shorten the names: target last, it is what a row is about
        widths = {c.header: _column_width(rows, c) for c in columns if c.header in _MIN_WIDTH}
        for name in ("model", "target"):
            cut = min(excess, max(widths[name] - _MIN_WIDTH[name], 0))
            widths[name] -= cut
            excess -= cut
        table = _build_table(rows, columns, widths)
    hidden = tuple(c.header for c in _COLUMNS if c.header in dropped)
    return LbFrame(lb_header(snapshot, previous, interval), table, errors, hidden)


def _column_width(rows: list[_Row], column: _Column) -> int:
    from rich.cells import cell_len

    return max([cell_len(column.header), *(cell_len(column.cell(row)) for row in rows)])


def _errors_below(rows: list[_Row]) -> tuple[tuple[str, str, str], ...]:
    seen: dict[tuple[str, str], str] = {}
    for row in rows:
        message = row.target.get("last_error")
        if message:
            seen.setdefault((str(row.target.get("id", "?")), str(message)), _health(row))
    return tuple((health, target, message) for (target, message), health in seen.items())


def lb_table(
    snapshot: dict[str, Any], previous: dict[str, Any] | None, interval: float, width: int
) -> Table:
    """The table of `lb_frame()`."""
    return lb_frame(snapshot, previous, interval, width).table


def filter_model(snapshot: dict[str, Any], model: str | None) -> dict[str, Any]:
    if model is None:
        return snapshot
    return {**snapshot, "models": [m for m in _models(snapshot) if m.get("name") == model]}


#: The live view's footer: how to leave it.
QUIT_HINT = "q, Esc or Ctrl+C quits"


def _render(frame: LbFrame, width: int | None, footer: str = "") -> RenderableType:
    """The frame as rich renderables: header, table, last errors, the columns hidden to fit
    `width`, and `footer` (the live view's key hint)."""
    from rich.console import Group
    from rich.text import Text

    header = Text(frame.header, style="bold", overflow="ellipsis")
    header.no_wrap = True
    parts: list[RenderableType] = [header, frame.table]
    if frame.errors:
        parts.append(Text("last errors:", style="bold"))
        for health, target, message in frame.errors:
            symbol, colour = _HEALTH_LOOK.get(health, _UNKNOWN_LOOK)
            line = Text(f"  {symbol} {target}: ", style="" if health == "healthy" else colour)
            line.append(message)
            parts.append(line)
    if frame.hidden:
        hidden = ", ".join(frame.hidden)
        parts.append(Text(f"hidden to fit {width} columns: {hidden} (or use --json)", style="dim"))
    if footer:
        parts.append(Text(footer, style="dim"))
    return Group(*parts)


class _Keys:
    """Keys typed on the terminal while the live view runs. The terminal is in cbreak mode
    meanwhile (each key at once, no echo, so typing does not scribble over the frame; Ctrl+C
    still interrupts) and is restored on the way out, however that happens."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._saved: list[Any] | None = None

    @classmethod
    def of_stdin(cls) -> _Keys | None:
        """Keys of standard input, or None when it is not a terminal (then only Ctrl+C quits)."""
        import sys

        try:
            fd = sys.stdin.fileno()
        except (AttributeError, OSError, ValueError):
            return None
        return cls(fd) if os.isatty(fd) else None

    def __enter__(self) -> _Keys:
        import termios
        import tty

        self._saved = termios.tcgetattr(self._fd)
        tty.setcbreak(self._fd, termios.TCSANOW)
        return self

    def __exit__(self, *exc: object) -> None:
        import termios

        if self._saved is not None:
            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def quit_within(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds; True as soon as q, Q, Esc (alone) or Ctrl+C (should
        it arrive as a key) is typed. Other keys, arrows and the like, are read and ignored."""
        import select

        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([self._fd], [], [], left)[0]:
                return False
            data = os.read(self._fd, 64)
            if not data:  # the terminal went away: nobody can type q any more
                time.sleep(max(deadline - time.monotonic(), 0))
                return False
            if data == b"\x1b" and select.select([self._fd], [], [], 0.05)[0]:
                data += os.read(self._fd, 64)  # an escape sequence (an arrow), not Esc
            if data == b"\x1b" or (data[:1] != b"\x1b" and any(k in data for k in b"qQ\x03")):
                return True
        return False


def _live(
    console: Console,
    fetch: Callable[[], dict[str, Any]],
    first: dict[str, Any],
    interval: float,
) -> str | None:
    """Redraw in place every `interval` seconds until a quit key or Ctrl+C. Returns the error
    of a daemon that went away (printed by the caller, under the last frame), else None."""
    from contextlib import nullcontext

    from rich.live import Live

    from aigw.errors import AdminError

    keys = _Keys.of_stdin()
    hint = QUIT_HINT if keys is not None else "Ctrl+C quits"

    def draw(footer: str) -> RenderableType:
        width = console.width
        return _render(lb_frame(current, previous, interval, width), width, footer)

    current, previous = first, None
    error: str | None = None
    with (
        keys or nullcontext(),
        Live(
            draw(hint),
            console=console,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
        ) as live,
    ):
        try:
            while True:
                if keys is not None and keys.quit_within(interval):
                    break
                if keys is None:
                    time.sleep(interval)
                try:
                    snapshot = fetch()
                except AdminError as exc:
                    error = str(exc)
                    break
                previous, current = current, snapshot
                live.update(draw(hint), refresh=True)
        except KeyboardInterrupt:
            pass  # the normal way out: leave the last frame on screen, exit 0
        live.update(draw(""), refresh=True)  # the last frame stays: without the key hint
    return error


def register(app: typer.Typer) -> None:
    lb_app = typer.Typer(
        name="lb", help="Load balancing of the running daemon.", no_args_is_help=True
    )
    lb_app.command("stats", help=_STATS_HELP)(stats)
    app.add_typer(lb_app, name="lb")


_STATS_HELP = (
    "Per model and target: health, circuit, traffic, errors, latency. Live on a terminal"
    f" ({QUIT_HINT}); one snapshot with --once or when piped.\n\n{COLUMNS_HELP}"
)


def stats(
    once: Annotated[bool, typer.Option("--once", help="Print one snapshot and exit.")] = False,
    interval: Annotated[
        float,
        typer.Option(
            "--interval", min=0.1, metavar="SECONDS", help="Seconds between live refreshes."
        ),
    ] = 2.0,
    model: Annotated[
        str | None, typer.Option("--model", metavar="NAME", help="Show only this model.")
    ] = None,
    json_: bool = JsonOption,
    admin_socket: str | None = AdminSocketOption,
    config: str | None = ConfigOption,
) -> None:
    from aigw.admin_client import AdminClient
    from aigw.errors import AdminError

    def fetch() -> dict[str, Any]:
        data = client.get_json("/lb/stats")
        if not isinstance(data, dict):
            raise AdminError("the daemon sent an unexpected answer to GET /lb/stats")
        return filter_model(data, model)

    try:
        try:
            client = AdminClient.discover(admin_socket, config)
            snapshot = fetch()
        except AdminError as exc:  # DaemonNotRunning included
            fail(str(exc))
        if model is not None and not snapshot["models"]:
            fail(f"no model named {model!r} on the running daemon")
        if json_:
            typer.echo(json.dumps(snapshot, indent=2))
            return
        from rich.console import Console  # only when drawing: ~40 ms

        console = Console()
        if once or not console.is_terminal:
            width = output_width(console)
            print_plain(_render(lb_frame(snapshot, None, interval, width), width), console)
            return
        import gc

        gc.enable()  # main() turned it off for start-up; the live view runs for long
        error = _live(console, fetch, snapshot, interval)
        if error is not None:
            fail(error)
    except KeyboardInterrupt:  # Ctrl+C before the live view started
        return
