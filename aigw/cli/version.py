"""`aigw version` (and the root's `--version`): which aigw this is. The client's own version;
`aigw status` asks the running daemon for its."""

from __future__ import annotations

import json
import sys

import typer

from aigw import __version__
from aigw.cli.common import JsonOption


def version_line() -> str:
    return f"aigw {__version__}"


def version_info() -> dict[str, str]:
    """What `aigw version --json` prints: aigw's version and the Python it runs on."""
    import platform  # here: `aigw --version` needs only the line above

    return {
        "version": __version__,
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "platform": f"{platform.system()}-{platform.machine()}".lower(),
    }


def register(app: typer.Typer) -> None:
    app.command("version")(version)


def version(as_json: bool = JsonOption) -> None:
    """Print aigw's version (and, with --json, the Python it runs on)."""
    if as_json:
        typer.echo(json.dumps(version_info(), indent=2))
    else:
        info = version_info()
        typer.echo(f"{version_line()} (Python {info['python']}, {info['platform']})")
