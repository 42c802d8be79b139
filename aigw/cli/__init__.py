"""The `aigw` command line: a thin layer of Typer commands over the library and the admin client.

This package is the only place that imports typer and rich. Each module registers its commands;
client commands import nothing heavy (no aiohttp), so they answer fast.

`main()` registers only the command module the first argument names (plus `serve`, which is
cheap and keeps the app a group: typer turns a one-command app into that command). Anything
else (`aigw --help`, a typo, shell completion) gets the full tree, the same one `app` holds.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
from collections.abc import Iterable

import typer

from aigw.cli import _fastparams

_fastparams.install()

#: Command modules, in the order their commands are listed by `aigw --help`.
_MODULES: tuple[str, ...] = ("serve", "validate", "quota", "lb")
#: First argument -> the module that registers it.
_MODULE_OF: dict[str, str] = {
    "serve": "serve",
    "status": "serve",
    "reload": "serve",
    "validate": "validate",
    "quota": "quota",
    "lb": "lb",
}


def build_app(modules: Iterable[str] = _MODULES) -> typer.Typer:
    """A Typer app with the commands of `modules` (all by default) registered."""
    wanted = set(modules)
    app = typer.Typer(
        name="aigw",
        help="A local AI gateway: OpenAI-compatible proxy with tenants, limits and failover.",
        no_args_is_help=True,
        add_completion=True,
        pretty_exceptions_enable=False,
    )
    for name in _MODULES:
        if name in wanted:
            importlib.import_module(f"aigw.cli.{name}").register(app)
    return app


def modules_for(args: list[str], environ: Iterable[str] = ()) -> tuple[str, ...]:
    """The command modules a run with these arguments needs: the first argument's own (and
    `serve`), or all of them when it names no command or a shell is asking for completions."""
    if any(k.startswith("_") and k.endswith("_COMPLETE") for k in environ):
        return _MODULES
    module = _MODULE_OF.get(args[0]) if args else None
    if module is None:
        return _MODULES
    return tuple(m for m in _MODULES if m in ("serve", module))


def __getattr__(name: str) -> typer.Typer:
    # `app`: the full command tree (docs, completion scripts, tests), built on first use so
    # `aigw quota show` does not pay for the commands it does not run.
    if name == "app":
        app = build_app()
        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    """Run the CLI. The cyclic garbage collector is off while it starts: start-up allocates
    lots of objects and frees few, and collecting them costs ~10 % of it. A short command ends
    with the collector still off; a long-running one (`serve`, a live `lb stats`) turns it back
    on (`gc.enable()`) before its loop."""
    gc.disable()
    build_app(modules_for(sys.argv[1:], os.environ))()
