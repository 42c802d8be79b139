"""The `aigw` command line: a thin layer of Typer commands over the library and the admin client.

This package is the only place that imports typer and rich. Each module registers its commands;
client commands import nothing heavy (no aiohttp), so they answer fast.
"""

from __future__ import annotations

import typer

from aigw.cli import _fastparams

_fastparams.install()

app = typer.Typer(
    name="aigw",
    help="A local AI gateway: OpenAI-compatible proxy with tenants, limits and failover.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Imported here so each command module stays importable on its own.
    from aigw.cli import serve, validate

    for module in (serve, validate):
        module.register(app)
    try:  # command groups owned by feature modules, present once those land
        from aigw.cli import lb, quota
    except ImportError:  # pragma: no cover - transitional
        return
    for module in (quota, lb):
        module.register(app)


_register()


def main() -> None:
    app()
