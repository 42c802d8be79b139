"""Helpers every CLI command shares: one-line errors, exit codes, socket discovery."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, NoReturn, cast

import typer

if TYPE_CHECKING:
    from rich.console import Console

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_STARTUP = 3


class _LazyConsole:
    """A rich `Console` made on first use: importing rich.console costs ~40 ms, which a client
    command printing JSON (or nothing) should not pay."""

    __slots__ = ("_console", "_stderr")

    def __init__(self, *, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def __getattr__(self, name: str) -> Any:
        made = self._console
        if made is None:
            from rich.console import Console

            made = self._console = Console(stderr=self._stderr)
        return getattr(made, name)


console = cast("Console", _LazyConsole(stderr=False))
err_console = cast("Console", _LazyConsole(stderr=True))


def print_error(message: str) -> None:
    """`error: <message>` on stderr, on one line. The message is plain text: a tenant name or a
    daemon's answer with `[` in it is printed as it is, never read as rich markup."""
    from rich.text import Text

    line = Text()
    line.append("error:", style="red")
    line.append(" " + " ".join(message.split()))
    err_console.print(line, highlight=False, soft_wrap=True)


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print a one-line reason to stderr and exit; never a traceback for user errors."""
    print_error(message)
    raise typer.Exit(code)


def output_width(out: Console) -> int | None:
    """The width to lay a table out in: the terminal's; into a pipe or file, `$COLUMNS` when
    set, else None (as wide as the table needs: nothing hidden, nothing cut)."""
    if out.is_terminal:
        return out.width
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else None


def print_plain(renderable: Any, out: Console | None = None) -> None:
    """Print `renderable` (a table) on a terminal as it is; into a pipe or file at
    `output_width()` and without the spaces rich pads lines with, so the text diffs and greps
    cleanly."""
    out = out or console
    if out.is_terminal:
        out.print(renderable)
        return
    import io

    from rich.console import Console

    buffer = io.StringIO()
    Console(file=buffer, width=output_width(out) or 100_000, color_system=None).print(renderable)
    text = "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())
    out.file.write(text + "\n")


AdminSocketOption = typer.Option(
    None,
    "--admin-socket",
    metavar="PATH",
    help="Admin socket path (default: $AIGW_ADMIN_SOCKET, then the config's, then the default).",
)
ConfigOption = typer.Option(
    None,
    "--config",
    "-c",
    metavar="PATH",
    help="Config file (default: $AIGW_CONFIG, then the user config).",
)
JsonOption = typer.Option(False, "--json", help="Print JSON for scripts.")


def env_admin_socket() -> str | None:
    return os.environ.get("AIGW_ADMIN_SOCKET") or None


def format_uptime(seconds: float) -> str:
    """`3d 4h`, `2h 05m`, `7m 09s`, `42s`: how long something has been running."""
    s = int(max(seconds, 0))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {s:02d}s"
    return f"{s}s"
