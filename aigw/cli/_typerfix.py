"""Where typer 0.2x's defaults fall short of aigw's CLI: help that names values, not types, and
negative numbers that are values, not options.

`install()` changes how typer shows parameters in `--help` (for every command, including those
other modules register):

    a flag takes no value, so it shows none (typer: `--json <bool>`);
    an option with `metavar=` shows it; one without shows its name (`--host HOST`), or its
    choices (`debug|info|warning|error`), never a Python type (`<str>`, `<int range>`);
    an argument is named in capitals (`TENANT`), in help, usage and errors, and one of plain
    text shows no type (its name says what it is);
    the usage line names arguments as `TENANT [MODEL]`, not `{tenant} [model]`.

`SignedNumberCommand` is the command class (`cls=`) of a command that takes a number that may be
negative (`aigw quota set t -5`): click would read `-5` as an unknown option; here it is an
argument, so the command can say what is wrong with it.

Typer internals are used (`typer.core.TyperOption.display_type_rich`,
`TyperArgument._usage_display_name`); with a typer that lacks them `install()` does nothing.
"""

from __future__ import annotations

import re
from typing import Any

from typer.core import TyperCommand

_NEGATIVE_NUMBER = re.compile(r"-[0-9][0-9_,.]*")
_installed = False


def _option_type(option: Any, ctx: Any) -> str | None:
    """What follows an option's names in help: nothing for a flag, else its value's name."""
    if option.metavar is not None:
        return option.metavar or None
    if option.is_flag or option.count:
        return None
    descriptor = option.type_descriptor
    if descriptor.is_choice:
        return "|".join(str(getattr(c, "value", c)) for c in descriptor.choices or ())
    return str(option.name or "value").upper()


def _argument_type(argument: Any, ctx: Any, original: Any) -> str | None:
    if argument.type_descriptor.annotation is str:
        return None  # its name says what it is
    shown: str | None = original(argument, ctx)
    return shown


def _argument_name(argument: Any) -> str:
    return str(argument.metavar or argument.name or "value").upper()


def _usage_name(argument: Any) -> str:
    name = _argument_name(argument)
    if not argument.required:
        name = f"[{name}]"
    return name + ("..." if argument.nargs != 1 else "")


def install() -> None:
    """Apply the help display rules above to typer (idempotent)."""
    global _installed
    if _installed:
        return
    from typer import core

    option_cls = getattr(core, "TyperOption", None)
    argument_cls = getattr(core, "TyperArgument", None)
    if option_cls is None or argument_cls is None:  # pragma: no cover - another typer
        return
    original_argument_type = getattr(argument_cls, "display_type_rich", None)
    if (
        not hasattr(option_cls, "display_type_rich")
        or original_argument_type is None
        or not hasattr(argument_cls, "_usage_display_name")
    ):  # pragma: no cover - another typer: keep its own look
        return
    option_cls.display_type_rich = _option_type
    argument_cls.display_type_rich = lambda self, ctx: _argument_type(
        self, ctx, original_argument_type
    )
    argument_cls._usage_display_name = _usage_name
    argument_cls.display_name_raw = property(_argument_name)  # help, errors: `TENANT`
    _installed = True


class SignedNumberCommand(TyperCommand):
    """A command whose arguments may be negative numbers: `-5` is an argument, not an option
    (aigw has no option that looks like a number)."""

    def make_parser(self, ctx: Any) -> Any:
        parser = super().make_parser(ctx)
        process_option = parser._process_opts

        def process(arg: str, state: Any) -> None:
            if _NEGATIVE_NUMBER.fullmatch(arg):
                state.largs.append(arg)
            else:
                process_option(arg, state)

        parser._process_opts = process  # type: ignore[method-assign]
        return parser
