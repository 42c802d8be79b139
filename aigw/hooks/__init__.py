"""Hooks: built-in ones by name (the registry `aigw.choices.HOOK_CLASSES`), user ones from
`"module:Class"`, both resolved with `aigw.choices.import_string`: by `aigw validate`
(`check_hooks`) and by the daemon (`build_hooks`) alike."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from aigw.choices import HOOK_CLASSES, import_string
from aigw.config import HookSpec
from aigw.errors import StartupError
from aigw.hooks.base import Hook


def hook_class(name: str) -> type[Hook]:
    """The class of a built-in name or a `"module:Class"`; ImportError (with the reason) when
    it cannot be had, TypeError when it is not a `Hook`."""
    obj = import_string(HOOK_CLASSES.get(name, name))
    if not (isinstance(obj, type) and issubclass(obj, Hook)):
        raise TypeError(f"'{name}' is not a subclass of aigw.hooks.base.Hook")
    return obj


def build_hooks(
    specs: Collection[HookSpec],
    models: Collection[str],
    reuse: Sequence[tuple[HookSpec, Hook]] = (),
) -> list[tuple[HookSpec | None, Hook]]:
    """The ordered pipeline as (spec, hook) pairs; the built-in validation hook always runs
    first, exactly once. On a reload, `reuse` holds the running pairs: a hook whose spec did not
    change is kept (an audit hook keeps its file and queue) instead of built again.

    A hook that cannot be imported or built is a `StartupError` naming it."""
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
        try:
            hooks.append((spec, hook_class(spec.name)(**spec.options)))
        except (ImportError, TypeError, ValueError) as exc:
            raise StartupError(f"hook '{spec.name}': {exc}") from exc
    return hooks


def check_hooks(specs: Collection[HookSpec]) -> list[tuple[HookSpec, str]]:
    """What `build_hooks` would refuse, without starting anything: every hook is resolved the
    way the daemon resolves it, and the built-in ones are built (their options checked; they
    start nothing until they serve). User hooks are imported, not built: their constructors
    are the daemon's business."""
    problems: list[tuple[HookSpec, str]] = []
    for spec in specs:
        if spec.name == "validation":
            continue
        try:
            cls = hook_class(spec.name)
            if spec.name in HOOK_CLASSES:
                cls(**spec.options)
        except (ImportError, TypeError, ValueError) as exc:
            problems.append((spec, str(exc)))
    return problems
