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
- Money spent per period (`cost_nanos`) is a column of the same rows, written the same way.
- The usage history is the `usage_hourly` table: the gateway's flusher adds its rows every
  `usage.flush_interval` (counters added to the row of the same hour, tenant, model and
  endpoint, capped at 2^63-1), through the same worker thread; `kill -9` loses at most that
  interval of history.
- A file written by an older aigw is brought up to date when it is opened (a `cost_nanos`
  column, overrides that may hold a money budget, the history table).

Faults, and what the store does about them:

- A write that fails (disk full, file made read-only) loses nothing: the usage stays in memory
  and every flush tries again; the first failure and the recovery are logged once each. A
  graceful `close()` tries `CLOSE_ATTEMPTS` times, then logs an ERROR naming how many tenants
  and tokens it could not save.
- Each flush checks that `path` still names the file the connection has open (device and inode).
  When it was deleted or replaced, the store reads everything from its open handle (a deleted
  file lives on while open), opens a new file at `path` and writes back the usage of every
  tenant and every override it knows, with a WARNING.
- A file that cannot be opened at start (read-only, not a database, no directory) is a
  `StateStoreError` naming the file, which the daemon reports as a start-up failure.

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

from aigw.config import StateConfig
from aigw.errors import ServiceUnavailableError, StateStoreError
from aigw.state.base import Override, UsageCounters, UsageKey
from aigw.state.memory import MemoryStore
from aigw.usage_history import Row

log = logging.getLogger("aigw.state")

T = TypeVar("T")

SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    tenant TEXT NOT NULL,
    period TEXT NOT NULL,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    total_tokens INTEGER NOT NULL DEFAULT 0,
    cost_nanos INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, period)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS overrides (
    tenant TEXT PRIMARY KEY,
    tokens INTEGER,
    period TEXT,
    usd_nanos INTEGER
) WITHOUT ROWID;
-- The primary key leads with the hour: it is the index the window reads and the pruning use.
CREATE TABLE IF NOT EXISTS usage_hourly (
    hour INTEGER NOT NULL,
    tenant TEXT NOT NULL,
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    cached_input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cost_nanos INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, tenant, model, endpoint)
) WITHOUT ROWID;
"""
# Version 1 files: usage without cost_nanos, overrides with tokens NOT NULL and no usd_nanos.
_MIGRATE_OVERRIDES = """
CREATE TABLE overrides_v2 (
    tenant TEXT PRIMARY KEY,
    tokens INTEGER,
    period TEXT,
    usd_nanos INTEGER
) WITHOUT ROWID;
INSERT INTO overrides_v2 (tenant, tokens, period) SELECT tenant, tokens, period FROM overrides;
DROP TABLE overrides;
ALTER TABLE overrides_v2 RENAME TO overrides;
"""
_UPSERT_USAGE = """
INSERT INTO usage (tenant, period, input_tokens, output_tokens, total_tokens, cost_nanos)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (tenant, period) DO UPDATE SET
    input_tokens = excluded.input_tokens,
    output_tokens = excluded.output_tokens,
    total_tokens = excluded.total_tokens,
    cost_nanos = excluded.cost_nanos
"""

_SELECT_USAGE = (
    "SELECT input_tokens, output_tokens, total_tokens, cost_nanos FROM usage"
    " WHERE tenant = ? AND period = ?"
)

_SELECT_ALL_USAGE = (
    "SELECT tenant, period, input_tokens, output_tokens, total_tokens, cost_nanos FROM usage"
)

_MAX = "9223372036854775807"
_HISTORY_COUNTERS = (
    "requests",
    "errors",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "cost_nanos",
)
_ADD_HISTORY = (
    "INSERT INTO usage_hourly (hour, tenant, model, endpoint, "
    + ", ".join(_HISTORY_COUNTERS)
    + ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    + " ON CONFLICT (hour, tenant, model, endpoint) DO UPDATE SET "
    # Saturating: a 64-bit counter that reached its end stays there (never turns to REAL).
    + ", ".join(
        f"{c} = CASE WHEN {c} > {_MAX} - excluded.{c} THEN {_MAX} ELSE {c} + excluded.{c} END"
        for c in _HISTORY_COUNTERS
    )
)
_SELECT_HISTORY = (
    "SELECT hour, tenant, model, endpoint, "
    + ", ".join(_HISTORY_COUNTERS)
    + " FROM usage_hourly WHERE hour >= ?"
)

_Row = tuple[int, int, int, int]
_UsageRow = tuple[str, str, int, int, int, int]
_HistoryRow = tuple[int, str, str, str, int, int, int, int, int, int]

#: A graceful close tries this many times, `CLOSE_RETRY_DELAY` seconds apart, to write what is
#: unsaved before it gives up and says what is lost.
CLOSE_ATTEMPTS = 3
CLOSE_RETRY_DELAY = 0.5

_STORAGE_ERRORS = (sqlite3.Error, OSError)

#: The files of one database in WAL mode, by suffix.
_FILES = ("", "-wal", "-shm")


class SqliteStore(MemoryStore):
    name = "sqlite"

    @classmethod
    def from_config(cls, config: StateConfig) -> SqliteStore:
        from aigw.paths import default_state_path

        return cls(config.path or default_state_path(), flush_interval=config.flush_interval)

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
        #: (st_dev, st_ino) of the database, -wal and -shm files the connection has open
        #: (worker thread), to notice that `path` names another file
        self._identity: dict[str, tuple[int, int] | None] = {}
        #: the overrides must be written again (the file was recreated)
        self._overrides_unsaved = False
        #: history rows read from a file that moved, to write to its successor
        self._history_unsaved: list[_HistoryRow] = []
        self._flush_task: asyncio.Task[None] | None = None
        self._flush_failing = False
        self._closed = False
        #: successful flushes (stats)
        self.flushes = 0

    # --- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        """Open (or create) the file and load the overrides; `StateStoreError` when it cannot."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aigw-sqlite")
        try:
            tenants, overrides = await self._run(self._db_open)
        except _STORAGE_ERRORS as exc:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise open_error(self.path, exc) from None
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        self._on_disk = tenants
        self._overrides = overrides
        self._flush_task = asyncio.create_task(self._flush_loop(), name="aigw-sqlite-flush")

    async def close(self) -> None:
        """Flush everything (retrying a failed write a few times), then release the file. Never
        raises for a storage failure: what could not be saved is logged as an ERROR."""
        if self._closed or self._executor is None:
            return
        self._closed = True
        if self._flush_task is not None:
            self._flush_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush_task
            self._flush_task = None
        try:
            await self._flush_before_close()
        finally:
            await self._run(self._db_close)
            self._executor.shutdown(wait=True)
            self._executor = None

    async def flush(self) -> None:
        """Write the usage changed since the last flush. A storage failure is logged (once per
        outage), not raised: the usage stays in memory and the next flush writes it."""
        try:
            await self._flush()
        except _STORAGE_ERRORS as exc:
            self._write_failed(exc)
        else:
            self._write_works()

    async def _flush(self) -> None:
        """One flush; raises when the file cannot be written. First checks that `path` still
        names the file the connection has open, and moves to a new file when it does not."""
        if self._executor is None:
            return
        for _ in range(2):  # the second round writes to the new file after a move
            batch, self._dirty = self._dirty, {}
            rows = [
                (tenant, period_key, c.input_tokens, c.output_tokens, c.total_tokens, c.cost_nanos)
                for (tenant, period_key), c in batch.items()
            ]
            overrides = dict(self._overrides) if self._overrides_unsaved else None
            history, self._history_unsaved = self._history_unsaved, []
            # Marked before the write: a load queued behind it in the one worker thread reads it.
            self._on_disk.update(tenant for tenant, _ in batch)
            try:
                moved = await self._run(self._db_flush, rows, overrides, history)
            except BaseException:
                self._keep_dirty(batch)
                self._history_unsaved = history + self._history_unsaved
                raise
            if moved is None:
                if overrides is not None:
                    self._overrides_unsaved = False
                if rows:
                    self.flushes += 1
                return
            self._history_unsaved = history + self._history_unsaved
            self._keep_dirty(batch)  # nothing was written
            self._adopt(*moved)

    def _keep_dirty(self, batch: dict[UsageKey, UsageCounters]) -> None:
        # Values are absolute, so writing them again next time is exact.
        for key, counters in batch.items():
            self._dirty.setdefault(key, counters)

    def _adopt(self, how: str, saved: list[_UsageRow], history: list[_HistoryRow]) -> None:
        """The file at `path` was deleted or replaced: everything this process knows (the rows
        read from the old file's open handle, the counters in memory, the overrides, the usage
        history) becomes unsaved, to be written to the new file."""
        for tenant, period_key, i, o, t, c in saved:
            key = (tenant, period_key)
            if key not in self._counters and key not in self._dirty:
                self._dirty[key] = UsageCounters(i, o, t, 0, c)
        for key, counters in self._counters.items():
            if key not in self._dirty and (
                counters.input_tokens
                or counters.output_tokens
                or counters.total_tokens
                or counters.cost_nanos
            ):
                self._dirty[key] = counters
        self._overrides_unsaved = True
        self._history_unsaved.extend(history)
        log.warning(
            "state: %s was %s while the gateway ran; writing the usage of %d tenant(s) and "
            "%d override(s) known to this process to a new file there",
            self.path,
            how,
            len({tenant for tenant, _ in self._dirty}),
            len(self._overrides),
        )

    def _write_failed(self, exc: BaseException) -> None:
        if self._flush_failing:  # logged once per outage, not once per interval
            return
        self._flush_failing = True
        log.warning(
            "state: writing usage to %s failed (%s); the usage of %d tenant(s) is kept in "
            "memory and written when it works again",
            self.path,
            _describe(exc),
            len({tenant for tenant, _ in self._dirty}),
        )

    def _write_works(self) -> None:
        if self._flush_failing:
            self._flush_failing = False
            log.warning("state: writing usage to %s works again; nothing was lost", self.path)

    async def _flush_before_close(self) -> None:
        for attempt in range(1, CLOSE_ATTEMPTS + 1):
            try:
                await self._flush()
            except _STORAGE_ERRORS as exc:
                self._write_failed(exc)
                if attempt < CLOSE_ATTEMPTS:
                    await asyncio.sleep(CLOSE_RETRY_DELAY)
                    continue
                await self._report_lost(exc)
            else:
                self._write_works()
            return

    async def _report_lost(self, exc: BaseException) -> None:
        """Say loudly what the last flush could not save: tenants, and tokens beyond what the
        file holds (or the whole counters when the file cannot be read either)."""
        keys = list(self._dirty)
        try:
            rows = await self._run(self._db_read_many, keys)
        except _STORAGE_ERRORS:
            rows = [None] * len(keys)
        tokens = 0
        for key, row in zip(keys, rows, strict=True):
            tokens += max(0, self._dirty[key].total_tokens - (row[2] if row else 0))
        log.error(
            "state: could not save the usage of %d tenant(s) (%d tokens) to %s at shutdown "
            "(%s, %d attempts); that usage is lost",
            len({tenant for tenant, _ in keys}),
            tokens,
            self.path,
            _describe(exc),
            CLOSE_ATTEMPTS,
        )

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                await self.flush()
            except Exception:  # a bug must not stop the flushes: log it, go on
                log.exception("state: flushing %s failed", self.path)

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
        return self._install(key, _counters(row))

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
                    result[i] = _counters(row)
        return result

    async def tenants(self) -> set[str]:
        return self._on_disk | await super().tenants()

    async def reset_usage(self, tenant: str, period_key: str) -> None:
        await super().reset_usage(tenant, period_key)
        try:
            await self._flush()
        except _STORAGE_ERRORS as exc:
            self._write_failed(exc)
            raise ServiceUnavailableError(
                f"The reset applies, but writing it to the state database failed "
                f"({_describe(exc)}); it is retried with the next flush."
            ) from None
        self._write_works()

    async def add_history(self, rows: Sequence[Row], retention: float) -> None:
        if not rows:
            return
        await self._run(self._db_add_history, [(*row.key, *row.counts()) for row in rows])

    async def read_history(
        self, since_hour: int, tenant: str | None = None, model: str | None = None
    ) -> list[Row]:
        try:
            found = await self._run(self._db_read_history, since_hour, tenant, model)
        except _STORAGE_ERRORS as exc:
            raise ServiceUnavailableError(
                f"Reading the usage history from the state database failed ({_describe(exc)})."
            ) from None
        rows = [Row(*values) for values in found]
        # Rows of a file that moved, not written to its successor yet.
        rows.extend(
            Row(*values)
            for values in self._history_unsaved
            if values[0] >= since_hour
            and (tenant is None or values[1] == tenant)
            and (model is None or values[2] == model)
        )
        return rows

    async def prune_history(self, before_hour: int) -> int:
        self._history_unsaved = [r for r in self._history_unsaved if r[0] >= before_hour]
        return await self._run(self._db_prune_history, before_hour)

    async def set_override(self, tenant: str, override: Override | None) -> None:
        try:
            await self._run(self._db_set_override, tenant, override)
        except _STORAGE_ERRORS as exc:
            raise ServiceUnavailableError(
                f"Writing the override to the state database failed ({_describe(exc)}); "
                "nothing was changed."
            ) from None
        await super().set_override(tenant, override)

    # --- worker thread ----------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        if self._executor is None:
            raise ServiceUnavailableError("The state store is closed.")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:  # the file moved and opening its successor failed: try again
            self._db_connect()
        assert self._conn is not None
        return self._conn

    def _db_connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            _migrate(conn)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")  # a write: -wal exists
            identity = {suffix: _file_id(f"{self.path}{suffix}") for suffix in _FILES}
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._identity = identity

    def _db_open(self) -> tuple[set[str], dict[str, Override]]:
        self._db_connect()
        conn = self._db()
        try:
            tenants = {row[0] for row in conn.execute("SELECT DISTINCT tenant FROM usage")}
            overrides = {
                tenant: Override(
                    None if tokens is None else int(tokens),
                    period,
                    None if usd is None else int(usd),
                )
                for tenant, tokens, period, usd in conn.execute(
                    "SELECT tenant, tokens, period, usd_nanos FROM overrides"
                )
            }
        except BaseException:
            self._db_close()
            raise
        return tenants, overrides

    def _db_close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                conn.close()
            except sqlite3.Error as exc:  # e.g. the last checkpoint on a full disk: WAL kept
                log.warning("state: closing %s: %s", self.path, _describe(exc))

    def _db_moved(self) -> str | None:
        """'deleted' or 'replaced' when `path` no longer names the file the connection has
        open; None when it does (or nothing is open)."""
        if self._conn is None:
            return None
        now = _file_id(self.path)
        if now is None:
            return "deleted"
        if now != self._identity.get(""):
            return "replaced"
        return None

    def _db_detach(self) -> tuple[list[_UsageRow], list[_HistoryRow]]:
        """Read every row (usage and history) through the connection to a file that moved,
        close it, and remove its -wal and -shm files if they are still at `path`: SQLite keeps
        them when the database file moved, and the new database at `path` would take them for
        its own."""
        try:
            saved = self._db().execute(_SELECT_ALL_USAGE).fetchall()
        except sqlite3.Error:
            saved = []  # unreadable: what memory holds is all there is
        try:
            history = self._db().execute(_SELECT_HISTORY, (0,)).fetchall()
        except sqlite3.Error:
            history = []
        self._db_close()
        for suffix in _FILES[1:]:
            name = f"{self.path}{suffix}"
            ours = self._identity.get(suffix)
            if ours is not None and _file_id(name) == ours:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name)
        return saved, history

    def _db_flush(
        self,
        rows: list[_UsageRow],
        overrides: dict[str, Override] | None,
        history: list[_HistoryRow],
    ) -> tuple[str, list[_UsageRow], list[_HistoryRow]] | None:
        """Write usage rows (and, after a move, all overrides and the history read from the
        old file) in one transaction. When the file moved, write nothing: read every row from
        the old file's handle, close it and return how it moved with those rows (the next call
        opens a new file)."""
        moved = self._db_moved()
        if moved is not None:
            # Detached before the new file is opened: both would use the same -wal/-shm names.
            return (moved, *self._db_detach())
        conn = self._db()  # opens the new file after a move
        if not rows and overrides is None and not history:
            return None
        conn.execute("BEGIN")
        try:
            conn.executemany(_UPSERT_USAGE, rows)
            if overrides is not None:
                conn.execute("DELETE FROM overrides")
                conn.executemany(
                    "INSERT INTO overrides (tenant, tokens, period, usd_nanos) VALUES (?, ?, ?, ?)",
                    [(t, o.tokens, o.period, o.usd_nanos) for t, o in overrides.items()],
                )
            conn.executemany(_ADD_HISTORY, history)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite may have rolled back already (e.g. disk full)
                conn.execute("ROLLBACK")
            raise
        return None

    def _db_read_usage(self, key: UsageKey) -> _Row | None:
        row = self._db().execute(_SELECT_USAGE, key).fetchone()
        return (int(row[0]), int(row[1]), int(row[2]), int(row[3])) if row else None

    def _db_read_many(self, keys: list[UsageKey]) -> list[_Row | None]:
        return [self._db_read_usage(key) for key in keys]

    def _db_set_override(self, tenant: str, override: Override | None) -> None:
        conn = self._db()
        if override is None:
            conn.execute("DELETE FROM overrides WHERE tenant = ?", (tenant,))
        else:
            conn.execute(
                "INSERT INTO overrides (tenant, tokens, period, usd_nanos) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (tenant) DO UPDATE SET tokens = excluded.tokens,"
                " period = excluded.period, usd_nanos = excluded.usd_nanos",
                (tenant, override.tokens, override.period, override.usd_nanos),
            )

    def _db_add_history(self, rows: list[_HistoryRow]) -> None:
        conn = self._db()
        conn.execute("BEGIN")
        try:
            conn.executemany(_ADD_HISTORY, rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _db_read_history(
        self, since_hour: int, tenant: str | None, model: str | None
    ) -> list[_HistoryRow]:
        sql = _SELECT_HISTORY
        args: list[int | str] = [since_hour]
        if tenant is not None:
            sql += " AND tenant = ?"
            args.append(tenant)
        if model is not None:
            sql += " AND model = ?"
            args.append(model)
        return self._db().execute(sql, args).fetchall()

    def _db_prune_history(self, before_hour: int) -> int:
        return (
            self._db().execute("DELETE FROM usage_hourly WHERE hour < ?", (before_hour,)).rowcount
        )


def _counters(row: _Row | None) -> UsageCounters:
    if row is None:
        return UsageCounters()
    i, o, t, c = row
    return UsageCounters(i, o, t, 0, c)


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a file of an older aigw up to this schema (in place, once)."""
    usage = {row[1] for row in conn.execute("PRAGMA table_info(usage)")}
    if "cost_nanos" not in usage:
        conn.execute("ALTER TABLE usage ADD COLUMN cost_nanos INTEGER NOT NULL DEFAULT 0")
    overrides = {row[1] for row in conn.execute("PRAGMA table_info(overrides)")}
    if "usd_nanos" not in overrides:
        conn.executescript("BEGIN;" + _MIGRATE_OVERRIDES + "COMMIT;")


def open_error(path: Path, exc: BaseException) -> StateStoreError:
    """A start-up failure that names the file and what to check."""
    name = getattr(exc, "sqlite_errorname", "")
    if isinstance(exc, OSError):
        reason = f"cannot create {exc.filename or path.parent}: {exc.strerror or exc}"
    elif name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN")):
        reason = (
            f"cannot write the state database {path} ({exc}): check that the file, its "
            "directory and its -wal/-shm files are writable by this user and the filesystem "
            "is not mounted read-only"
        )
    elif name in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
        reason = f"{path} is not a usable SQLite database ({exc}); move it away or set state.path"
    elif name in ("SQLITE_BUSY", "SQLITE_LOCKED"):
        reason = f"the state database {path} is locked by another process ({exc})"
    else:
        reason = f"cannot open the state database {path}: {exc}"
    return StateStoreError(reason)


def _file_id(name: str | Path) -> tuple[int, int] | None:
    try:
        st = os.stat(name)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
