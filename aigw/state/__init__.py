"""State stores: where quota usage, reservations, overrides and (redis) rate-limit buckets live.

The backends are the registry `aigw.choices.STORE_CLASSES`; `open_store()` builds and opens one.
Implementations are imported lazily so importing this package stays cheap.
"""

from __future__ import annotations

import dataclasses
import os

from aigw.choices import STORE_CLASSES, import_string
from aigw.config import StateConfig
from aigw.state.base import Override, ReserveResult, StateStore, UsageCounters, UsageKey


async def open_store(
    config: StateConfig, *, path: str | os.PathLike[str] | None = None
) -> StateStore:
    """Build the configured store and open it (sqlite: creates parent dirs and the file).

    `path` overrides `config.path` (tests, `--state` style flags). The caller owns the store and
    must `await store.close()` at shutdown (that flushes everything).
    """
    if config.backend not in STORE_CLASSES:
        raise ValueError(
            f"state backend {config.backend!r} is not available"
            f" (available: {', '.join(STORE_CLASSES)})"
        )
    if path is not None:
        config = dataclasses.replace(config, path=os.fspath(path))
    store_class: type[StateStore] = import_string(STORE_CLASSES[config.backend])
    store = store_class.from_config(config)
    await store.open()
    return store


__all__ = [
    "Override",
    "ReserveResult",
    "StateStore",
    "UsageCounters",
    "UsageKey",
    "open_store",
]
