"""Hooks: built-in ones by name, user ones from "module:Class". `build_hooks()` is the registry."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection, Sequence
from typing import Any

from aigw.config import HookSpec
from aigw.hooks.base import Hook


def _content_filter(options: dict[str, Any], models: Collection[str]) -> Hook:
    from aigw.hooks.content_filter import ContentFilterHook

    return ContentFilterHook(**options)


def _audit(options: dict[str, Any], models: Collection[str]) -> Hook:
    from aigw.hooks.audit import AuditHook

    return AuditHook(**options)


BUILTIN: dict[str, Callable[[dict[str, Any], Collection[str]], Hook]] = {
    "content_filter": _content_filter,
    "audit": _audit,
}


def load_hook_class(spec: str) -> type[Hook]:
    """Import "module:Class"; raises ImportError/AttributeError/TypeError with a clear message."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"'{spec}' is not of the form 'module:Class'")
    obj = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(obj, type) and issubclass(obj, Hook)):
        raise TypeError(f"'{spec}' is not a subclass of aigw.hooks.base.Hook")
    return obj


def build_hooks(
    specs: Collection[HookSpec],
    models: Collection[str],
    reuse: Sequence[tuple[HookSpec, Hook]] = (),
) -> list[tuple[HookSpec | None, Hook]]:
    """The ordered pipeline as (spec, hook) pairs; the built-in validation hook always runs
    first, exactly once. On a reload, `reuse` holds the running pairs: a hook whose spec did not
    change is kept (an audit hook keeps its file and queue) instead of built again."""
    from aigw.hooks.validation import ValidationHook

    hooks: list[tuple[HookSpec | None, Hook]] = [(None, ValidationHook(frozenset(models)))]
    available = list(reuse)
    for spec in specs:
        if spec.name == "validation":
            continue
        kept = next((pair for pair in available if pair[0] == spec), None)
        if kept is not None:
            available.remove(kept)
            hooks.append(kept)
            continue
        factory = BUILTIN.get(spec.name)
        if factory is not None:
            hooks.append((spec, factory(dict(spec.options), models)))
        else:
            hooks.append((spec, load_hook_class(spec.name)(**spec.options)))
    return hooks
