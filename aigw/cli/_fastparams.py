"""Parameter coercion without pydantic for the values the CLI takes most: start-up speed.

Typer 0.2x coerces every parameter through a pydantic `TypeAdapter`, built on first use even
for a parameter left at `None`: importing pydantic and building the adapters costs ~130 ms of
every `aigw` run, more than the rest of a client command together. `install()` puts a light
coercer in front: a plain `str`, an in-range `int`/`float` written as plain digits, an exact
`Literal` choice and `None` are answered here, with the value typer itself would produce;
anything else (a bad value, a path, an unusual spelling) goes to typer's own coercer, built
only then, so errors and their messages stay typer's (less the "Value error, " pydantic puts
before a bad choice).

Typer internals are used (`typer.core._TyperParameter.get_runtime_param`,
`typer._coercion.RuntimeParam`); with a typer that lacks them `install()` does nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal, get_args, get_origin

_INT = re.compile(r"-?(?:0|[1-9][0-9]{0,17})")
_FLOAT = re.compile(r"-?[0-9]{1,15}(?:\.[0-9]{1,15})?")
_DELEGATE = object()  # "not sure": typer's own coercer decides

_installed = False


def _in_range(value: float, info: Any) -> bool:
    if getattr(info, "clamp", False):
        return False  # clamping changes the value: typer's business
    low, high = getattr(info, "min", None), getattr(info, "max", None)
    return (low is None or value >= low) and (high is None or value <= high)


def fast_coerce(annotation: Any, info: Any, value: Any) -> Any:
    """`value` as typer would coerce it to `annotation`, or `_DELEGATE` when unsure."""
    if getattr(info, "parser", None) is not None or getattr(info, "click_type", None) is not None:
        return _DELEGATE
    if annotation is str:
        return value if type(value) is str else _DELEGATE
    if annotation is int:
        if type(value) is str and _INT.fullmatch(value):
            value = int(value)
        if type(value) is int and _in_range(value, info):
            return value
        return _DELEGATE
    if annotation is float:
        if type(value) is str and _FLOAT.fullmatch(value):
            value = float(value)
        if type(value) is float and _in_range(value, info):
            return value
        return _DELEGATE
    if get_origin(annotation) is Literal and getattr(info, "case_sensitive", False):
        choices = get_args(annotation)
        if type(value) is str and all(type(c) is str for c in choices) and value in choices:
            return value
    return _DELEGATE


_PYDANTIC_PREFIX = re.compile(r"^(?:Value|Assertion) error, ")


def _drop_pydantic_prefix(exc: Exception) -> None:
    """typer words a bad choice as pydantic does: "Value error, 'x' is not one of ...". The
    user needs the second half only."""
    message = getattr(exc, "message", None)
    if isinstance(message, str):
        exc.message = _PYDANTIC_PREFIX.sub("", message)  # type: ignore[attr-defined]


def install() -> None:
    """Route typer's parameter coercion through `fast_coerce` first (idempotent)."""
    global _installed
    if _installed:
        return
    try:
        from typer import _coercion
        from typer.core import _TyperParameter
    except ImportError:  # pragma: no cover - another typer: keep its own coercion
        return
    runtime_param = getattr(_coercion, "RuntimeParam", None)
    build = getattr(_coercion, "build_runtime_param", None)
    original = getattr(_TyperParameter, "get_runtime_param", None)
    if runtime_param is None or build is None or original is None:  # pragma: no cover
        return
    build_full: Callable[[Any], Any] = build

    class LightRuntimeParam(runtime_param):  # type: ignore[misc, valid-type]
        """Answers plain values itself; builds typer's coercer only for the rest."""

        def __init__(self, descriptor: Any) -> None:
            super().__init__(descriptor.parameter_info, descriptor.annotation)
            object.__setattr__(self, "_descriptor", descriptor)
            object.__setattr__(self, "_full", None)

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            if getattr(ctx, "token_normalize_func", None) is None:
                result = fast_coerce(self.annotation, self.parameter_info, value)
                if result is not _DELEGATE:
                    return result
            full = self._full
            if full is None:
                full = build_full(self._descriptor)
                object.__setattr__(self, "_full", full)
            try:
                return full._coerce_value(value, param, ctx)
            except Exception as exc:
                _drop_pydantic_prefix(exc)
                raise

    def get_runtime_param(self: Any) -> Any:
        if self._runtime_param is None:
            descriptor = self.type_descriptor
            if descriptor.file_annotation is not None or get_origin(descriptor.annotation) in (
                list,
                tuple,
            ):
                return original(self)  # files and sequences: typer's own, as before
            self._runtime_param = LightRuntimeParam(descriptor)
        return self._runtime_param

    _TyperParameter.get_runtime_param = get_runtime_param  # type: ignore[method-assign]
    _installed = True
