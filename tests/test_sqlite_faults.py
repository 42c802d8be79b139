"""The sqlite store under storage faults: a full disk (a real tmpfs filled to ENOSPC, so SQLite
answers SQLITE_FULL), a database file deleted or replaced under the running gateway, and a
read-only filesystem at start. Nothing recorded may be lost without the store saying so, and
nothing may end in a traceback.

The store runs in process on real files; two tests run `aigw serve` itself for the exit code
and the log of a graceful stop."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from aigw.config import StateConfig
from aigw.errors import ServiceUnavailableError, StateStoreError
from aigw.state import open_store
from aigw.state.base import Override, UsageCounters
from aigw.state.sqlite import SqliteStore
from tests.conftest import Daemon, cli_env
from tests.tmpfs import Tmpfs
from tests.upstream import Upstream

PERIOD = "daily:2024-03-10"


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Tmpfs]:
    disk = Tmpfs(tmp_path / "disk").mount()
    yield disk
    disk.unmount()


@pytest.fixture
async def stores() -> AsyncIterator[Callable[[Path], SqliteStore]]:
    """SqliteStores that flush only when told (the test decides when the disk is full)."""
    opened: list[SqliteStore] = []

    def make(path: Path) -> SqliteStore:
        store = SqliteStore(path, flush_interval=3600)
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


def usage_in_file(path: Path) -> dict[tuple[str, str], tuple[int, int, int]]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT tenant, period, input_tokens, output_tokens, total_tokens FROM usage"
        ).fetchall()
    return {(t, p): (i, o, total) for t, p, i, o, total in rows}


def state_messages(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "aigw.state"]


async def record(store: SqliteStore, tenants: range, tokens: int) -> None:
    for n in tenants:
        await store.add_usage(f"t{n}", PERIOD, tokens, tokens, 2 * tokens)


# --- a full disk ------------------------------------------------------------------------------


async def test_a_full_disk_keeps_usage_in_memory_and_writes_it_when_space_returns(
    tmpfs: Tmpfs, stores: Callable[[Path], SqliteStore], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aigw.state")
    path = tmpfs.path / "state.db"
    store = stores(path)
    await store.open()
    await record(store, range(200), 10)
    await store.flush()
    tmpfs.fill()
    await record(store, range(200), 5)
    for _ in range(3):  # every flush fails, none raises, one warning for the whole outage
        await store.flush()
    assert state_messages(caplog) == [
        (
            "WARNING",
            f"state: writing usage to {path} failed (database or disk is full); the usage of "
            "200 tenant(s) is kept in memory and written when it works again",
        )
    ]
    assert usage_in_file(path)[("t7", PERIOD)] == (10, 10, 20)
    # The requests go on being counted meanwhile.
    [counters] = await store.get_usage([("t7", PERIOD)])
    assert counters == UsageCounters(15, 15, 30)

    tmpfs.free()
    await store.flush()
    assert state_messages(caplog)[-1] == (
        "WARNING",
        f"state: writing usage to {path} works again; nothing was lost",
    )
    on_disk = usage_in_file(path)
    assert len(on_disk) == 200
    assert set(on_disk.values()) == {(15, 15, 30)}


async def test_close_on_a_full_disk_says_what_it_could_not_save_and_does_not_raise(
    tmpfs: Tmpfs, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmpfs.path / "state.db"
    store = SqliteStore(path, flush_interval=3600)
    await store.open()
    await record(store, range(10), 100)
    await store.flush()
    tmpfs.fill()
    await record(store, range(3), 7)  # 3 tenants, 3 * 14 tokens written nowhere yet
    await asyncio.wait_for(store.close(), 30)  # a graceful stop: no exception
    [error] = [m for level, m in state_messages(caplog) if level == "ERROR"]
    assert error == (
        f"state: could not save the usage of 3 tenant(s) (42 tokens) to {path} at shutdown "
        "(database or disk is full, 3 attempts); that usage is lost"
    )
    tmpfs.free()
    assert usage_in_file(path)[("t0", PERIOD)] == (100, 100, 200)  # the saved part is intact


async def test_close_retries_and_saves_everything_when_space_returns_meanwhile(
    tmpfs: Tmpfs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aigw.state")
    path = tmpfs.path / "state.db"
    store = SqliteStore(path, flush_interval=3600)
    await store.open()
    await record(store, range(5), 1)
    await store.flush()
    tmpfs.fill()
    await record(store, range(5), 1)
    closing = asyncio.create_task(store.close())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not state_messages(caplog):  # the first attempt failed (and said so)
        assert loop.time() < deadline, "the first write at close never failed"
        await asyncio.sleep(0.01)
    tmpfs.free()
    await asyncio.wait_for(closing, 30)
    assert [level for level, _ in state_messages(caplog)] == ["WARNING", "WARNING"]
    assert "works again; nothing was lost" in state_messages(caplog)[-1][1]
    assert set(usage_in_file(path).values()) == {(2, 2, 4)}


async def test_a_reset_that_cannot_be_written_is_a_clear_503_and_is_kept(
    tmpfs: Tmpfs, stores: Callable[[Path], SqliteStore]
) -> None:
    path = tmpfs.path / "state.db"
    store = stores(path)
    await store.open()
    await record(store, range(1), 50)
    await store.flush()
    tmpfs.fill()
    with pytest.raises(ServiceUnavailableError, match="database or disk is full"):
        await store.reset_usage("t0", PERIOD)
    with pytest.raises(ServiceUnavailableError, match="nothing was changed"):
        await store.set_override("t0", Override(5))
    assert store.overrides == {}
    tmpfs.free()
    await store.flush()
    assert usage_in_file(path)[("t0", PERIOD)] == (0, 0, 0)


# --- the file deleted or replaced under the running store --------------------------------------


def delete_file(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):  # what `rm state.db*` does
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def delete_database_only(path: Path) -> None:
    path.unlink()  # its -wal and -shm stay: a new file there must not take them for its own


def delete_directory(path: Path) -> None:
    shutil.rmtree(path.parent)


def replace_file(path: Path) -> None:
    other = path.with_name("restored.db")
    with sqlite3.connect(other) as conn:
        conn.execute(
            "CREATE TABLE usage (tenant TEXT, period TEXT, input_tokens INTEGER, "
            "output_tokens INTEGER, total_tokens INTEGER, PRIMARY KEY (tenant, period))"
        )
        conn.execute("INSERT INTO usage VALUES ('t0', ?, 1, 1, 2)", (PERIOD,))
        conn.execute("INSERT INTO usage VALUES ('stranger', ?, 3, 3, 6)", (PERIOD,))
        conn.execute(
            "CREATE TABLE overrides (tenant TEXT PRIMARY KEY, tokens INTEGER, period TEXT)"
        )
        conn.execute("INSERT INTO overrides VALUES ('stranger', 1, NULL)")
    conn.close()
    os.replace(other, path)


@pytest.mark.parametrize(
    ("fault", "how"),
    [
        (delete_file, "deleted"),
        (delete_database_only, "deleted"),
        (delete_directory, "deleted"),
        (replace_file, "replaced"),
    ],
    ids=["files-deleted", "database-deleted", "directory-deleted", "file-replaced"],
)
async def test_a_deleted_or_replaced_file_gets_everything_written_back(
    tmp_path: Path,
    stores: Callable[[Path], SqliteStore],
    caplog: pytest.LogCaptureFixture,
    fault: Callable[[Path], None],
    how: str,
) -> None:
    path = tmp_path / "state" / "state.db"
    earlier = stores(path)  # a previous run recorded 200 tenants
    await earlier.open()
    await record(earlier, range(200), 10)
    await earlier.set_override("t1", Override(5000, "monthly"))
    await earlier.close()

    store = stores(path)
    await store.open()
    await record(store, range(20), 1)  # this run touches 20 of them
    await store.flush()
    fault(path)
    await record(store, range(5), 1)
    await store.flush()
    warnings = [m for level, m in state_messages(caplog) if level == "WARNING"]
    assert warnings == [
        f"state: {path} was {how} while the gateway ran; writing the usage of 200 tenant(s) "
        "and 1 override(s) known to this process to a new file there"
    ]
    assert len(usage_in_file(path)) >= 200  # written at once, not only at close
    await record(store, range(1), 1)
    await store.close()

    after = stores(path)
    await after.open()
    usage = await after.get_usage([(f"t{n}", PERIOD) for n in range(200)])
    assert usage[0] == UsageCounters(13, 13, 26)
    assert usage[1:5] == [UsageCounters(12, 12, 24)] * 4
    assert usage[5:20] == [UsageCounters(11, 11, 22)] * 15
    assert usage[20:] == [UsageCounters(10, 10, 20)] * 180
    assert after.overrides == {"t1": Override(5000, "monthly")}


async def test_a_file_deleted_while_idle_is_written_back_at_close(
    tmp_path: Path, stores: Callable[[Path], SqliteStore], caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    store = stores(path)
    await store.open()
    await record(store, range(200), 10)
    await store.flush()
    delete_file(path)
    await store.close()  # nothing changed since the last flush: the file is checked anyway
    assert "was deleted" in caplog.text
    assert len(usage_in_file(path)) == 200


# --- cannot open at start ----------------------------------------------------------------------


async def test_a_read_only_filesystem_at_start_is_a_clear_error(tmpfs: Tmpfs) -> None:
    wal = tmpfs.path / "state.db"
    store = SqliteStore(wal)
    await store.open()
    await store.close()
    rollback = tmpfs.path / "legacy.db"  # a file in rollback-journal mode (made by some tool)
    sqlite3.connect(rollback).execute("CREATE TABLE x (y)").connection.close()
    tmpfs.read_only()
    for path in (wal, rollback):
        with pytest.raises(StateStoreError) as info:
            await open_store(StateConfig(backend="sqlite", path=str(path)))
        message = str(info.value)
        assert message.startswith(f"cannot write the state database {path} (")
        assert "writable by this user and the filesystem is not mounted read-only" in message
    with pytest.raises(StateStoreError, match=r"cannot create .*/sub: Read-only file system"):
        await open_store(StateConfig(backend="sqlite", path=str(tmpfs.path / "sub" / "s.db")))


async def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_text("not a database, " * 100)
    with pytest.raises(StateStoreError, match=f"^{path} is not a usable SQLite database"):
        await open_store(StateConfig(backend="sqlite", path=str(path)))


# --- `aigw serve` -----------------------------------------------------------------------------

CONFIG = """\
version: 1
server: {{shutdown_timeout: 10s}}
state: {{backend: sqlite, path: "{path}", flush_interval: 1h}}
providers:
  up: {{type: openai, base_url: "{upstream}", timeout: 5s}}
models:
  gpt-test:
    targets: [{{provider: up, model: up-model}}]
quota: {{default: 1000000}}
"""


def test_serve_on_a_read_only_filesystem_exits_3_with_one_line(
    tmpfs: Tmpfs, tmp_path: Path
) -> None:
    path = tmpfs.path / "state.db"
    sqlite3.connect(path).close()
    tmpfs.read_only()
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(path=path, upstream="http://127.0.0.1:9"))
    done = subprocess.run(
        [sys.executable, "-m", "aigw", "serve", "--config", str(config), "--port", "0",
         "--admin-socket", str(tmp_path / "admin.sock")],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr
    assert f"error: cannot write the state database {path}" in done.stderr


@pytest.mark.slow
async def test_graceful_stop_on_a_full_disk_logs_what_is_lost_without_a_traceback(
    tmpfs: Tmpfs, upstream: Upstream, daemon_factory: Callable[..., Daemon]
) -> None:
    path = tmpfs.path / "state.db"
    daemon = await asyncio.to_thread(
        daemon_factory, CONFIG.format(path=path, upstream=upstream.url)
    )
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.post(daemon.v1 + "/chat/completions", json=body) as resp:
                assert resp.status == 200
                total = (await resp.json())["usage"]["total_tokens"]
    tmpfs.fill()
    daemon.proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(daemon.proc.wait, 60)
    output = daemon.output()
    assert "Traceback" not in output, output
    assert code == 0, output
    assert (
        f"ERROR aigw.state: state: could not save the usage of 1 tenant(s) ({3 * total} tokens) "
        f"to {path} at shutdown (database or disk is full, 3 attempts); that usage is lost"
    ) in output
