"""The `aigw` command line: a thin layer of Typer commands over the library and the admin client.

This package is the only place that imports typer and rich. Each module registers its commands;
client commands import nothing heavy (no aiohttp), so they answer fast.

`main()` registers only the command module the first argument names (plus `serve`, which is
cheap and keeps the app a group: typer turns a one-command app into that command). Anything
else (`aigw --help`, a typo, shell completion) gets the full tree, the same one `app` holds;
`aigw --version` gets none. A usage error (a bad option or value) is one line on stderr and
exit 2, as every other error of the CLI is one line.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
from collections.abc import Iterable
from typing import Annotated, Any

import typer

from aigw.cli import _fastparams, _typerfix

_fastparams.install()
_typerfix.install()

#: Command modules, in the order their commands are listed by `aigw --help`.
_MODULES: tuple[str, ...] = ("serve", "validate", "quota", "usage", "lb", "version")
#: First argument -> the module that registers it.
_MODULE_OF: dict[str, str] = {
    "serve": "serve",
    "status": "serve",
    "reload": "serve",
    "validate": "validate",
    "quota": "quota",
    "usage": "usage",
    "lb": "lb",
    "version": "version",
}
#: First arguments that need no command at all: the root's own eager options.
_NO_MODULES = frozenset({"--version", "-V"})

#: One example per command path, shown at the end of its `--help`. tests/test_cli_help.py
#: fails for a command without one.
EXAMPLES: dict[str, str] = {
    "serve": "aigw serve -c ~/.config/aigw/config.yaml --port 8080",
    "status": "aigw status --json",
    "validate": "aigw validate config.yaml --request body.json",
    "reload": "aigw reload",
    "quota": "aigw quota show",
    "quota set": "aigw quota set team-a 100000 --period daily",
    "quota show": "aigw quota show team-a --json",
    "quota reset": "aigw quota reset team-a",
    "usage": "aigw usage --since 7d --by tenant",
    "lb": "aigw lb stats --once",
    "lb stats": "aigw lb stats --model gpt-4o-mini --interval 1",
    "version": "aigw version --json",
}

HELP_OPTION_NAMES = ["-h", "--help"]


def _example(path: str) -> str | None:
    example = EXAMPLES.get(path)
    # Epilogs are rich markup: a literal `[` must not open a tag.
    return None if example is None else "Example: " + example.replace("[", "\\[")


def _add_examples(app: typer.Typer, prefix: str = "") -> None:
    for command in app.registered_commands:
        if command.epilog is None and isinstance(command.name, str):
            command.epilog = _example(prefix + command.name)
    for group in app.registered_groups:
        sub = group.typer_instance
        name = group.name if isinstance(group.name, str) else sub.info.name if sub else None
        if sub is None or not isinstance(name, str):
            continue
        if not isinstance(sub.info.epilog, str):
            sub.info.epilog = _example(prefix + name)
        _add_examples(sub, f"{prefix}{name} ")


def _show_version(value: bool) -> None:
    if value:
        from aigw.cli.version import version_line

        typer.echo(version_line())
        raise typer.Exit()


def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            is_eager=True,
            callback=_show_version,
            help="Print aigw's version and exit.",
        ),
    ] = False,
) -> None:
    """A local AI gateway: OpenAI-compatible proxy with tenants, limits and failover."""


def build_app(modules: Iterable[str] = _MODULES) -> typer.Typer:
    """A Typer app with the commands of `modules` (all by default) registered."""
    wanted = set(modules)
    app = typer.Typer(
        name="aigw",
        help="A local AI gateway: OpenAI-compatible proxy with tenants, limits and failover.",
        no_args_is_help=True,
        add_completion=True,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": HELP_OPTION_NAMES},
    )
    app.callback()(_root)
    for name in _MODULES:
        if name in wanted:
            importlib.import_module(f"aigw.cli.{name}").register(app)
    _add_examples(app)
    return app


def modules_for(args: list[str], environ: Iterable[str] = ()) -> tuple[str, ...]:
    """The command modules a run with these arguments needs: the first argument's own (and
    `serve`), none for `--version`, or all of them when it names no command or a shell is
    asking for completions."""
    if any(k.startswith("_") and k.endswith("_COMPLETE") for k in environ):
        return _MODULES
    if args and args[0] in _NO_MODULES:
        return ()
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


def usage_error_line(exc: Any) -> str:
    """A click usage error as one line: the reason and where to read more."""
    message = " ".join(str(exc.format_message()).split())
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        message += f" (see `{ctx.command_path} -h`)"
    return message


def run(app: typer.Typer, args: list[str] | None = None, prog_name: str | None = None) -> int:
    """Run `app` as the `aigw` program and return its exit code; usage errors are one line."""
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError

    from aigw.cli.common import EXIT_ERROR, print_error

    command = typer.main.get_command(app)
    try:
        result = command.main(args=args, prog_name=prog_name, standalone_mode=False)
    except NoArgsIsHelpError:
        return 2  # the help is already printed, as typer does
    except UsageError as exc:
        print_error(usage_error_line(exc))
        return exc.exit_code
    except ClickException as exc:
        print_error(" ".join(str(exc.format_message()).split()))
        return exc.exit_code
    except typer.Abort:
        print_error("aborted")
        return EXIT_ERROR
    return result if isinstance(result, int) else 0


def main() -> None:
    """Run the CLI. The cyclic garbage collector is off while it starts: start-up allocates
    lots of objects and frees few, and collecting them costs ~10 % of it. A short command ends
    with the collector still off; a long-running one (`serve`, a live `lb stats`) turns it back
    on (`gc.enable()`) before its loop."""
    gc.disable()
    sys.exit(run(build_app(modules_for(sys.argv[1:], os.environ))))
