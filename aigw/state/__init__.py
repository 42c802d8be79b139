"""State stores shared by quotas and (redis) rate limits.

`STORE_BACKENDS` is the one registry of backends; `open_store()` builds and opens one.
Implementations are imported lazily so importing this package stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from aigw.config import StateConfig
from aigw.state.base import Override, ReserveResult, StateStore, UsageCounters, UsageKey


def _memory(config: StateConfig, path: str | os.PathLike[str] | None) -> StateStore:
    from aigw.state.memory import MemoryStore

    return MemoryStore()


def _sqlite(config: StateConfig, path: str | os.PathLike[str] | None) -> StateStore:
    from aigw.paths import default_state_path
    from aigw.state.sqlite import SqliteStore

    where = path or config.path or default_state_path()
    return SqliteStore(where, flush_interval=config.flush_interval)


def _redis(config: StateConfig, path: str | os.PathLike[str] | None) -> StateStore:
    from aigw.state.redis import RedisStore

    if not config.url:
        raise ValueError("state backend 'redis' needs state.url (redis://host:port/db)")
    return RedisStore(config.url, on_failure=config.on_failure)


STORE_BACKENDS: dict[str, Callable[[StateConfig, str | os.PathLike[str] | None], StateStore]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "redis": _redis,
}


async def open_store(
    config: StateConfig, *, path: str | os.PathLike[str] | None = None
) -> StateStore:
    """Build the configured store and open it (sqlite: creates parent dirs and the file).

    `path` overrides `config.path` (tests, `--state` style flags). The caller owns the store and
    must `await store.close()` at shutdown (that flushes everything).
    """
    factory = STORE_BACKENDS.get(config.backend)
    if factory is None:
        raise ValueError(
            f"state backend {config.backend!r} is not available"
            f" (available: {', '.join(STORE_BACKENDS)})"
        )
    store = factory(config, path)
    await store.open()
    return store


__all__ = [
    "STORE_BACKENDS",
    "Override",
    "ReserveResult",
    "StateStore",
    "UsageCounters",
    "UsageKey",
    "open_store",
]
