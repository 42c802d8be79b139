"""State store contract tests, run over every store; then sqlite durability (close/reopen, kill -9).

Every store in STORES runs the contract; redis runs against a real redis-server (skipped when
it is not installed). Redis-only behaviour (expiry, crashed instances, outages) is in
test_redis.py.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from aigw.config import StateConfig
from aigw.errors import ServiceUnavailableError
from aigw.paths import default_state_path
from aigw.state import StateStore, open_store
from aigw.state.base import Override, UsageCounters
from aigw.state.memory import MemoryStore
from aigw.state.sqlite import SqliteStore

STORES = ["memory", "sqlite", "redis"]
IN_PROCESS = ["memory", "sqlite"]
REPO = Path(__file__).resolve().parent.parent

Opener = Callable[[], Awaitable[StateStore]]


def _state_config(backend: str, tmp_path: Path, url: str | None = None) -> StateConfig:
    return StateConfig(
        backend=backend, path=str(tmp_path / "state.db"), url=url, flush_interval=3600.0
    )


@pytest.fixture(params=STORES)
async def opener(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens stores of one backend on the same location; closes them all at the end."""
    opened: list[StateStore] = []
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None

    async def _open() -> StateStore:
        store = await open_store(_state_config(request.param, tmp_path, url))
        opened.append(store)
        return store

    yield _open
    for store in opened:
        await store.close()


@pytest.fixture
async def store(opener: Opener) -> StateStore:
    return await opener()


async def _usage(store: StateStore, tenant: str, period_key: str) -> UsageCounters:
    return (await store.get_usage([(tenant, period_key)]))[0]


# --- contract ----------------------------------------------------------------------------------


async def test_reserve_allows_up_to_the_limit_and_refusal_changes_nothing(
    store: StateStore,
) -> None:
    first = await store.reserve("a", "p1", 600, 1000, reservation_id=1, ttl=60)
    assert (first.allowed, first.used, first.reserved) == (True, 0, 600)
    second = await store.reserve("a", "p1", 400, 1000, reservation_id=2, ttl=60)
    assert second.allowed and second.reserved == 1000
    refused = await store.reserve("a", "p1", 1, 1000, reservation_id=3, ttl=60)
    assert (refused.allowed, refused.used, refused.reserved) == (False, 0, 1000)
    assert await _usage(store, "a", "p1") == UsageCounters(0, 0, 0, 1000)


async def test_limit_zero_or_less_means_no_limit(store: StateStore) -> None:
    result = await store.reserve("a", "p1", 10**12, 0, reservation_id=1, ttl=60)
    assert result.allowed


async def test_commit_replaces_reservation_by_usage(store: StateStore) -> None:
    await store.reserve("a", "p1", 500, 1000, reservation_id=1, ttl=60)
    await store.commit("a", "p1", 500, 100, 50, 150, reservation_id=1)
    assert await _usage(store, "a", "p1") == UsageCounters(100, 50, 150, 0)
    # Room again: 150 used, 850 left.
    assert (await store.reserve("a", "p1", 850, 1000, reservation_id=2, ttl=60)).allowed
    assert not (await store.reserve("a", "p1", 1, 1000, reservation_id=3, ttl=60)).allowed


async def test_release_drops_reservation_without_usage(store: StateStore) -> None:
    await store.reserve("a", "p1", 700, 1000, reservation_id=1, ttl=60)
    await store.release("a", "p1", 700, reservation_id=1)
    assert await _usage(store, "a", "p1") == UsageCounters()
    assert (await store.reserve("a", "p1", 1000, 1000, reservation_id=2, ttl=60)).allowed


async def test_add_usage_and_get_usage_order_and_unknown_keys(store: StateStore) -> None:
    await store.add_usage("a", "p1", 1, 2, 3)
    await store.add_usage("a", "p1", 1, 2, 3)
    await store.add_usage("b", "p1", 10, 20, 30)
    got = await store.get_usage([("b", "p1"), ("nobody", "p1"), ("a", "p1"), ("a", "p2")])
    assert got == [
        UsageCounters(10, 20, 30),
        UsageCounters(),
        UsageCounters(2, 4, 6),
        UsageCounters(),
    ]
    assert await store.tenants() >= {"a", "b"}
    assert "nobody" not in await store.tenants()


async def test_get_usage_returns_snapshots(store: StateStore) -> None:
    await store.add_usage("a", "p1", 1, 1, 2)
    snapshot = await _usage(store, "a", "p1")
    snapshot.total_tokens = 999
    assert (await _usage(store, "a", "p1")).total_tokens == 2


async def test_tenants_and_periods_are_isolated(store: StateStore) -> None:
    assert (await store.reserve("a", "p1", 100, 100, reservation_id=1, ttl=60)).allowed
    assert (await store.reserve("b", "p1", 100, 100, reservation_id=2, ttl=60)).allowed
    assert (await store.reserve("a", "p2", 100, 100, reservation_id=3, ttl=60)).allowed
    assert not (await store.reserve("a", "p2", 1, 100, reservation_id=4, ttl=60)).allowed


async def test_reset_zeroes_usage_and_keeps_reservations(store: StateStore) -> None:
    await store.add_usage("a", "p1", 10, 20, 30)
    await store.reserve("a", "p1", 40, 100, reservation_id=1, ttl=60)
    await store.reset_usage("a", "p1")
    assert await _usage(store, "a", "p1") == UsageCounters(0, 0, 0, 40)
    await store.commit("a", "p1", 40, 5, 5, 10, reservation_id=1)
    assert await _usage(store, "a", "p1") == UsageCounters(5, 5, 10, 0)


async def test_late_commit_into_a_previous_period(store: StateStore) -> None:
    """A request reserved in one period and finished in the next charges the period it
    reserved in; the new period starts at zero."""
    await store.add_usage("a", "day1", 0, 0, 50)
    await store.reserve("a", "day1", 100, 1000, reservation_id=1, ttl=60)
    assert (await store.reserve("a", "day2", 10, 1000, reservation_id=2, ttl=60)).reserved == 10
    await store.commit("a", "day1", 100, 30, 30, 60, reservation_id=1)
    await store.commit("a", "day2", 10, 5, 5, 10, reservation_id=2)
    day1, day2 = await store.get_usage([("a", "day1"), ("a", "day2")])
    assert day2 == UsageCounters(5, 5, 10, 0)
    # The memory store keeps only current periods; every other store keeps past ones.
    if type(store) is not MemoryStore:
        assert day1 == UsageCounters(30, 30, 110, 0)


async def test_overrides_set_get_list_delete(store: StateStore) -> None:
    assert await store.get_override("a") is None
    await store.set_override("a", Override(500))
    await store.set_override("b", Override(0, "monthly"))
    await store.set_override("a", Override(600, "hourly"))
    assert await store.get_override("a") == Override(600, "hourly")
    assert store.overrides["b"] == Override(0, "monthly")
    assert await store.list_overrides() == {
        "a": Override(600, "hourly"),
        "b": Override(0, "monthly"),
    }
    await store.set_override("a", None)
    assert await store.get_override("a") is None
    assert set(await store.list_overrides()) == {"b"}


async def test_concurrent_reservations_never_overshoot(store: StateStore) -> None:
    """200 tasks, 100 tokens each, 10,000 left: exactly 100 fit, and the sum never passes."""
    await store.add_usage("a", "p1", 0, 0, 10_000)
    rng = random.Random(7)
    limit = 20_000

    async def one(i: int) -> bool:
        for _ in range(rng.randrange(3)):
            await asyncio.sleep(0)
        result = await store.reserve("a", "p1", 100, limit, reservation_id=i, ttl=60)
        if result.allowed:
            assert result.used + result.reserved <= limit
        return result.allowed

    results = await asyncio.gather(*(one(i) for i in range(1, 201)))
    assert sum(results) == 100
    assert await _usage(store, "a", "p1") == UsageCounters(0, 0, 10_000, 10_000)


async def test_flush_and_close_are_idempotent(
    opener: Opener, request: pytest.FixtureRequest
) -> None:
    store = await opener()
    await store.add_usage("a", "p1", 1, 1, 2)
    await store.flush()
    await store.flush()  # a second flush must not write the same usage again
    assert (await _usage(store, "a", "p1")).total_tokens == 2
    await store.close()
    await store.close()
    if request.node.callspec.params["opener"] != "memory":  # persistent: count it once on disk
        reopened = await opener()
        assert (await _usage(reopened, "a", "p1")).total_tokens == 2


# --- memory bounds ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", IN_PROCESS)
async def test_old_period_counters_leave_memory(backend: str, tmp_path: Path) -> None:
    store = await open_store(_state_config(backend, tmp_path))
    assert isinstance(store, MemoryStore)
    try:
        for day in range(30):  # reserve() tells the store which period is current
            await store.reserve("a", f"daily:{day}", 0, 0, reservation_id=day, ttl=60)
            await store.add_usage("a", f"daily:{day}", 1, 1, 2)
        assert store.loaded_keys == 1
        # A key still held by a reservation stays until it is settled.
        await store.reserve("a", "daily:30", 5, 100, reservation_id=30, ttl=60)
        await store.reserve("a", "daily:31", 0, 0, reservation_id=31, ttl=60)
        assert store.loaded_keys == 2
        await store.commit("a", "daily:30", 5, 1, 1, 2, reservation_id=30)
        assert store.loaded_keys == 1
        await store.add_usage("a", "daily:29", 1, 1, 2)  # late usage does not stay
        assert store.loaded_keys == 1
    finally:
        await store.close()


# --- sqlite durability -----------------------------------------------------------------------


async def test_sqlite_usage_and_overrides_survive_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "state.db"
    store = SqliteStore(path, flush_interval=3600)
    await store.open()
    await store.add_usage("team-a", "daily:2024-03-10", 100, 50, 150)
    await store.set_override("team-a", Override(500, "monthly"))
    await store.reserve("team-a", "daily:2024-03-10", 300, 1000, reservation_id=1, ttl=60)
    await store.close()  # graceful: flushes; the reservation is not persisted

    again = SqliteStore(path, flush_interval=3600)
    await again.open()
    try:
        assert await _usage(again, "team-a", "daily:2024-03-10") == UsageCounters(100, 50, 150, 0)
        assert again.overrides == {"team-a": Override(500, "monthly")}
        assert await again.tenants() == {"team-a"}
        # Loaded from disk on first use, then enforced from memory.
        assert (
            await again.reserve("team-a", "daily:2024-03-10", 850, 1000, reservation_id=2, ttl=60)
        ).allowed
        assert not (
            await again.reserve("team-a", "daily:2024-03-10", 1, 1000, reservation_id=3, ttl=60)
        ).allowed
    finally:
        await again.close()


async def test_sqlite_file_is_wal_and_parents_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "state.db"
    store = await open_store(StateConfig(backend="sqlite", path=str(path)))
    await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


async def test_sqlite_default_path_comes_from_platformdirs() -> None:
    # conftest points XDG_DATA_HOME into tmp_path.
    store = await open_store(StateConfig(backend="sqlite"))
    try:
        assert isinstance(store, SqliteStore)
        assert store.path == default_state_path()
        assert store.path.exists()
    finally:
        await store.close()


async def test_open_store_rejects_unknown_backend_and_redis_without_url() -> None:
    with pytest.raises(ValueError, match="not available"):
        await open_store(StateConfig(backend="etcd"))
    with pytest.raises(ValueError, match=r"needs state\.url"):
        await open_store(StateConfig(backend="redis"))


async def test_sqlite_simulated_crash_loses_only_unflushed_usage(tmp_path: Path) -> None:
    """Skip close(): a second store opened on the file sees exactly what was flushed."""
    path = tmp_path / "state.db"
    crashed = SqliteStore(path, flush_interval=3600)
    await crashed.open()
    await crashed.add_usage("a", "p", 10, 10, 20)
    await crashed.flush()
    await crashed.add_usage("a", "p", 1, 1, 2)  # never flushed before the "crash"

    survivor = SqliteStore(path, flush_interval=3600)
    await survivor.open()
    try:
        assert await _usage(survivor, "a", "p") == UsageCounters(10, 10, 20, 0)
    finally:
        await survivor.close()
        await crashed.close()


async def test_sqlite_kill_9_loses_at_most_the_unflushed_window(tmp_path: Path) -> None:
    """A real SIGKILL: flushed usage and overrides survive, reservations do not, and the loss
    is exactly the usage recorded after the last flush."""
    path = tmp_path / "state.db"
    script = textwrap.dedent(
        """
        import asyncio, sys
        from aigw.state.base import Override
        from aigw.state.sqlite import SqliteStore

        async def main():
            store = SqliteStore(sys.argv[1], flush_interval=3600)
            await store.open()
            await store.set_override("team-a", Override(5000, "monthly"))
            for _ in range(100):
                await store.add_usage("team-a", "monthly:2024-03", 2, 1, 3)
            await store.flush()
            await store.reserve("team-a", "monthly:2024-03", 400, 5000, reservation_id=1, ttl=60)
            for _ in range(7):
                await store.add_usage("team-a", "monthly:2024-03", 2, 1, 3)
            print("ready", flush=True)
            await asyncio.Event().wait()

        asyncio.run(main())
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(path), stdout=subprocess.PIPE, env=env, cwd=REPO
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line.strip() == b"ready"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL

    store = SqliteStore(path, flush_interval=3600)
    await store.open()
    try:
        usage = await _usage(store, "team-a", "monthly:2024-03")
        recorded_total = (100 + 7) * 3
        lost = recorded_total - usage.total_tokens
        assert lost == 7 * 3  # exactly what was recorded after the last flush
        assert usage == UsageCounters(200, 100, 300, 0)  # no stuck reservation
        assert store.overrides == {"team-a": Override(5000, "monthly")}
    finally:
        await store.close()


async def test_sqlite_periodic_flush_writes_in_the_background(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(path, flush_interval=0.001)
    await store.open()
    try:
        await store.add_usage("a", "p", 1, 2, 3)
        for _ in range(5000):  # the flusher runs on its own timer; wait for its first write
            if store.flushes:
                break
            await asyncio.sleep(0.001)
        assert store.flushes >= 1
        with sqlite3.connect(path) as conn:
            row = conn.execute("SELECT total_tokens FROM usage WHERE tenant = 'a'").fetchone()
        conn.close()
        assert row == (3,)
    finally:
        await store.close()


async def test_sqlite_concurrent_first_loads_of_a_tenant_on_disk(tmp_path: Path) -> None:
    """Many requests of a tenant whose row is only on disk: one load, no overshoot."""
    path = tmp_path / "state.db"
    first = SqliteStore(path, flush_interval=3600)
    await first.open()
    await first.add_usage("a", "p", 0, 0, 9_000)
    await first.close()

    store = SqliteStore(path, flush_interval=3600)
    await store.open()
    try:
        results = await asyncio.gather(
            *(store.reserve("a", "p", 100, 10_000, reservation_id=i, ttl=60) for i in range(50))
        )
        assert sum(r.allowed for r in results) == 10
        assert await _usage(store, "a", "p") == UsageCounters(0, 0, 9_000, 1_000)
    finally:
        await store.close()


async def test_sqlite_counters_dropped_before_flush_are_not_lost(tmp_path: Path) -> None:
    """Rolling to a new period drops the old counters from memory before they were flushed;
    reading them again must see the unflushed values, not the stale disk row."""
    store = SqliteStore(tmp_path / "state.db", flush_interval=3600)
    await store.open()
    try:
        await store.reserve("a", "day1", 0, 0, reservation_id=1, ttl=60)
        await store.add_usage("a", "day1", 1, 1, 2)
        await store.flush()
        await store.add_usage("a", "day1", 1, 1, 2)  # dirty, not flushed
        await store.reserve("a", "day2", 0, 0, reservation_id=2, ttl=60)  # day1 leaves memory
        assert store.loaded_keys == 1
        assert await _usage(store, "a", "day1") == UsageCounters(2, 2, 4)
        await store.add_usage("a", "day1", 1, 1, 2)  # on top of the pending write, not the disk
        assert store.loaded_keys == 1
        await store.flush()
        assert await _usage(store, "a", "day1") == UsageCounters(3, 3, 6)
    finally:
        await store.close()


async def test_sqlite_closed_store_refuses_io(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db", flush_interval=3600)
    await store.open()
    await store.close()
    with pytest.raises(ServiceUnavailableError):
        await store.set_override("a", Override(1))


async def test_late_usage_for_a_past_period_keeps_the_current_one(store: StateStore) -> None:
    """Usage arriving for a period the tenant already left (a request that spanned midnight)
    must not push the current period's counters out."""
    await store.reserve("a", "day1", 0, 0, reservation_id=1, ttl=60)
    await store.reserve("a", "day2", 0, 0, reservation_id=2, ttl=60)
    await store.commit("a", "day2", 0, 5, 5, 10, reservation_id=2)
    await store.commit("a", "day1", 0, 1, 1, 2, reservation_id=1)  # late, day1 left memory
    await store.add_usage("a", "day1", 1, 1, 2)
    assert await _usage(store, "a", "day2") == UsageCounters(5, 5, 10, 0)
    assert (await store.reserve("a", "day2", 90, 100, reservation_id=3, ttl=60)).allowed
    assert not (await store.reserve("a", "day2", 1, 100, reservation_id=4, ttl=60)).allowed


async def test_sqlite_concurrent_late_commits_for_a_period_on_disk(tmp_path: Path) -> None:
    """Several requests that spanned midnight settle at once into yesterday, whose row is only
    on disk: every one of them counts."""
    path = tmp_path / "state.db"
    first = SqliteStore(path, flush_interval=3600)
    await first.open()
    await first.add_usage("a", "day1", 0, 0, 100)
    await first.close()

    store = SqliteStore(path, flush_interval=3600)
    await store.open()
    try:
        await store.reserve("a", "day2", 0, 0, reservation_id=1, ttl=60)
        await asyncio.gather(*(store.add_usage("a", "day1", 1, 1, 2) for _ in range(20)))
        assert await _usage(store, "a", "day1") == UsageCounters(20, 20, 140)
        await store.flush()
        assert store.loaded_keys == 1  # only day2: this read comes from the file
        assert await _usage(store, "a", "day1") == UsageCounters(20, 20, 140)
    finally:
        await store.close()
