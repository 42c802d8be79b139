"""User hooks for tests: a nested class (resolved by dotted attribute), and a module-level
marker that shows whether this module was imported."""

from __future__ import annotations

from aigw.hooks.base import Hook

IMPORTED = True


class Outer:
    class Inner(Hook):
        """A hook nested in another class: `tests.user_hooks:Outer.Inner`."""

        deterministic = True


Broken = 42  # not a Hook
