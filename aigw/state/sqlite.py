"""SQLite state store: the embedded default. One process owns the file.

How it works, and what survives what:

- The authoritative counters live in memory (see `MemoryStore`); reservations never leave memory,
  so a crash can never leave one stuck.
- Usage is write-behind: every `flush_interval` (default 1 s) the counters changed since the last
  flush are written in one transaction, as absolute values (a retried write is harmless), by a
  single worker thread that owns the connection. The event loop never blocks on the disk.
- The file is in WAL mode with `synchronous=NORMAL`: a committed flush survives a process crash
  (`kill -9`); only an OS crash or power loss may lose the last committed transactions.
- A graceful `close()` flushes everything, so a normal restart loses nothing.
- `kill -9` loses at most the usage recorded since the last flush: one `flush_interval`.
- Overrides (`aigw quota set`) and resets are rare and are written before the call returns.
- Counters are read from disk on first use per (tenant, period); tenants never seen on disk
  start at zero without any I/O.

Two gateways must not share one file: each would trust its own in-memory counters. Use the redis
backend for several instances.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from aigw.errors import ServiceUnavailableError
from aigw.state.base import Override, UsageCounters, UsageKey
from aigw.state.memory import MemoryStore

log = logging.getLogger("aigw.state")

T = TypeVar("T")

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    tenant TEXT NOT NULL,
    period TEXT NOT NULL,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    total_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, period)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS overrides (
    tenant TEXT PRIMARY KEY,
    tokens INTEGER NOT NULL,
    period TEXT
) WITHOUT ROWID;
"""
_UPSERT_USAGE = """
INSERT INTO usage (tenant, period, input_tokens, output_tokens, total_tokens)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (tenant, period) DO UPDATE SET
    input_tokens = excluded.input_tokens,
    output_tokens = excluded.output_tokens,
    total_tokens = excluded.total_tokens
"""

_SELECT_USAGE = (
    "SELECT input_tokens, output_tokens, total_tokens FROM usage WHERE tenant = ? AND period = ?"
)

_Row = tuple[int, int, int]


class SqliteStore(MemoryStore):
    name = "sqlite"

    def __init__(self, path: str | os.PathLike[str], *, flush_interval: float = 1.0) -> None:
        super().__init__()
        self.path = Path(path).expanduser()
        self.flush_interval = flush_interval
        #: counters changed since the last flush (the objects themselves: always current values)
        self._dirty: dict[UsageKey, UsageCounters] = {}
        #: tenants with at least one row in the file; others start at zero without I/O
        self._on_disk: set[str] = set()
        self._loading: dict[UsageKey, asyncio.Future[_Row | None]] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # touched only by the worker thread
        self._flush_task: asyncio.Task[None] | None = None
        self._flush_failing = False
        self._closed = False
        #: successful flushes (stats)
        self.flushes = 0

    # --- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aigw-sqlite")
        try:
            tenants, overrides = await self._run(self._db_open)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        self._on_disk = tenants
        self._overrides = overrides
        self._flush_task = asyncio.create_task(self._flush_loop(), name="aigw-sqlite-flush")

    async def close(self) -> None:
        if self._closed or self._executor is None:
            return
        self._closed = True
        if self._flush_task is not None:
            self._flush_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush_task
            self._flush_task = None
        try:
            await self.flush()
        finally:
            await self._run(self._db_close)
            self._executor.shutdown(wait=True)
            self._executor = None

    async def flush(self) -> None:
        if not self._dirty or self._executor is None:
            return
        batch, self._dirty = self._dirty, {}
        rows = [
            (tenant, period_key, c.input_tokens, c.output_tokens, c.total_tokens)
            for (tenant, period_key), c in batch.items()
        ]
        # Marked before the write: a load queued behind it in the one worker thread reads it.
        self._on_disk.update(tenant for tenant, _ in batch)
        try:
            await self._run(self._db_write_usage, rows)
        except BaseException:
            # Values are absolute, so writing them again next time is exact.
            for key, counters in batch.items():
                self._dirty.setdefault(key, counters)
            raise
        self.flushes += 1

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                await self.flush()
            except Exception:
                # Logged once per outage, not once per interval.
                if not self._flush_failing:
                    log.warning(
                        "state: writing usage to %s failed; will retry", self.path, exc_info=True
                    )
                    self._flush_failing = True
            else:
                if self._flush_failing:
                    log.warning("state: writing usage to %s works again", self.path)
                    self._flush_failing = False

    # --- MemoryStore hooks ------------------------------------------------------------------

    def _touched(self, key: UsageKey, counters: UsageCounters) -> None:
        self._dirty[key] = counters

    async def _load(self, key: UsageKey) -> UsageCounters:
        pending = self._dirty.get(key)
        if pending is not None:  # dropped from memory but not flushed yet
            return self._install(key, pending)
        if key[0] not in self._on_disk:
            return self._install(key, UsageCounters())
        future = self._loading.get(key)
        if future is None:
            future = asyncio.ensure_future(self._run(self._db_read_usage, key))
            self._loading[key] = future
            future.add_done_callback(lambda _f: self._loading.pop(key, None))
        try:
            # Shielded: one cancelled request must not fail the others waiting for this row.
            row = await asyncio.shield(future)
        except (sqlite3.Error, OSError) as exc:
            raise ServiceUnavailableError("The state store is unavailable.") from exc
        # Another waiter may have installed, changed and dropped the counters meanwhile: its
        # values (pending in _dirty) are newer than the row we read.
        pending = self._dirty.get(key)
        if pending is not None:
            return self._install(key, pending)
        return self._install(key, UsageCounters(*row) if row else UsageCounters())

    async def _get_missing(self, keys: Sequence[UsageKey]) -> list[UsageCounters]:
        result: list[UsageCounters] = []
        to_read: list[tuple[int, UsageKey]] = []
        for key in keys:
            pending = self._dirty.get(key)
            if pending is not None:
                result.append(pending.copy())
                continue
            result.append(UsageCounters())
            if key[0] in self._on_disk:
                to_read.append((len(result) - 1, key))
        if to_read:
            rows = await self._run(self._db_read_many, [key for _, key in to_read])
            for (i, _), row in zip(to_read, rows, strict=True):
                if row is not None:
                    result[i] = UsageCounters(*row)
        return result

    async def tenants(self) -> set[str]:
        return self._on_disk | await super().tenants()

    async def reset_usage(self, tenant: str, period_key: str) -> None:
        await super().reset_usage(tenant, period_key)
        await self.flush()

    async def set_override(self, tenant: str, override: Override | None) -> None:
        await self._run(self._db_set_override, tenant, override)
        await super().set_override(tenant, override)

    # --- worker thread ----------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        if self._executor is None:
            raise ServiceUnavailableError("The state store is closed.")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _db(self) -> sqlite3.Connection:
        assert self._conn is not None
        return self._conn

    def _db_open(self) -> tuple[set[str], dict[str, Override]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            tenants = {row[0] for row in conn.execute("SELECT DISTINCT tenant FROM usage")}
            overrides = {
                tenant: Override(int(tokens), period)
                for tenant, tokens, period in conn.execute(
                    "SELECT tenant, tokens, period FROM overrides"
                )
            }
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return tenants, overrides

    def _db_close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _db_write_usage(self, rows: list[tuple[str, str, int, int, int]]) -> None:
        conn = self._db()
        conn.execute("BEGIN")
        try:
            conn.executemany(_UPSERT_USAGE, rows)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _db_read_usage(self, key: UsageKey) -> _Row | None:
        row = self._db().execute(_SELECT_USAGE, key).fetchone()
        return (int(row[0]), int(row[1]), int(row[2])) if row else None

    def _db_read_many(self, keys: list[UsageKey]) -> list[_Row | None]:
        return [self._db_read_usage(key) for key in keys]

    def _db_set_override(self, tenant: str, override: Override | None) -> None:
        conn = self._db()
        if override is None:
            conn.execute("DELETE FROM overrides WHERE tenant = ?", (tenant,))
        else:
            conn.execute(
                "INSERT INTO overrides (tenant, tokens, period) VALUES (?, ?, ?)"
                " ON CONFLICT (tenant) DO UPDATE SET tokens = excluded.tokens,"
                " period = excluded.period",
                (tenant, override.tokens, override.period),
            )
