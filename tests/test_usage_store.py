"""The usage history in every state store (memory, sqlite on a real file, redis on a real
redis-server): rows added are summed per key, read back by window, tenant and model, capped at
2^63-1, pruned past the retention; sqlite keeps them across a restart and a replaced file, redis
shares them between instances and lets each hour expire `retention` after it ends."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis

from aigw.config import StateConfig
from aigw.pricing import MAX_NANOS
from aigw.state import StateStore, open_store
from aigw.usage_history import DAY, HOUR, Row, hour_of, merge_rows

STORES = ["memory", "sqlite", "redis"]
T0 = hour_of(time.time()) - 5 * HOUR  # recent hours: redis reads up to now
RETENTION = 90 * DAY

Opener = Callable[[], Awaitable[StateStore]]


@pytest.fixture(params=STORES)
async def opener(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    opened: list[StateStore] = []
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None

    async def _open() -> StateStore:
        state = StateConfig(
            backend=request.param, path=str(tmp_path / "s.db"), url=url, flush_interval=3600.0
        )
        store = await open_store(state)
        opened.append(store)
        return store

    yield _open
    for store in opened:
        await store.close()


def row(hour: int, tenant: str = "t", model: str = "m", endpoint: str = "chat/completions",
        *counts: int) -> Row:  # fmt: skip
    return Row(hour, tenant, model, endpoint, *(counts or (1, 0, 10, 2, 5, 1000)))


def by_key(rows: list[Row]) -> dict[tuple[int, str, str, str], tuple[int, ...]]:
    return {r.key: r.counts() for r in merge_rows(rows)}


async def test_rows_of_one_key_are_summed_and_read_back(opener: Opener) -> None:
    store = await opener()
    await store.add_history([row(T0), row(T0, model="other")], RETENTION)
    await store.add_history(
        [row(T0, "t", "m", "chat/completions", 2, 1, 20, 0, 7, 5), row(T0 + HOUR)], RETENTION
    )
    got = by_key(await store.read_history(T0))
    assert got == {
        (T0, "t", "m", "chat/completions"): (3, 1, 30, 2, 12, 1005),
        (T0, "t", "other", "chat/completions"): (1, 0, 10, 2, 5, 1000),
        (T0 + HOUR, "t", "m", "chat/completions"): (1, 0, 10, 2, 5, 1000),
    }
    assert by_key(await store.read_history(T0 + HOUR)) == {
        (T0 + HOUR, "t", "m", "chat/completions"): (1, 0, 10, 2, 5, 1000)
    }


async def test_reads_filter_by_tenant_and_model(opener: Opener) -> None:
    store = await opener()
    await store.add_history(
        [row(T0, "a", "m1"), row(T0, "a", "m2"), row(T0, "b", "m1"), row(T0, "b", "m\tx")],
        RETENTION,
    )
    assert set(by_key(await store.read_history(T0, tenant="a"))) == {
        (T0, "a", "m1", "chat/completions"),
        (T0, "a", "m2", "chat/completions"),
    }
    assert set(by_key(await store.read_history(T0, model="m1"))) == {
        (T0, "a", "m1", "chat/completions"),
        (T0, "b", "m1", "chat/completions"),
    }
    # A model name with a tab in it is read back whole (redis keys its fields by tabs).
    assert set(by_key(await store.read_history(T0, tenant="b", model="m\tx"))) == {
        (T0, "b", "m\tx", "chat/completions")
    }


async def test_counters_stop_at_the_largest_64_bit_integer(opener: Opener) -> None:
    store = await opener()
    big = (MAX_NANOS - 1, 0, MAX_NANOS, 0, 0, MAX_NANOS - 10)
    await store.add_history([row(T0, "t", "m", "e", *big)], RETENTION)
    await store.add_history([row(T0, "t", "m", "e", 5, 1, 5, 1, 1, 100)], RETENTION)
    got = by_key(await store.read_history(T0))
    assert got == {(T0, "t", "m", "e"): (MAX_NANOS, 1, MAX_NANOS, 1, 1, MAX_NANOS)}


async def test_prune_drops_the_hours_before_the_cutoff(opener: Opener) -> None:
    store = await opener()
    await store.add_history([row(T0 - 2 * HOUR), row(T0 - HOUR), row(T0)], RETENTION)
    await store.prune_history(T0 - HOUR)
    assert {r.hour for r in await store.read_history(T0 - 3 * HOUR)} == {T0 - HOUR, T0}


async def test_another_instance_reads_what_one_wrote(opener: Opener) -> None:
    first = await opener()
    await first.add_history([row(T0)], RETENTION)
    if first.name == "sqlite":
        await first.close()  # one process owns a sqlite file at a time
    elif first.name == "memory":
        pytest.skip("memory stores share nothing")
    second = await opener()
    await second.add_history([row(T0)], RETENTION)
    assert by_key(await second.read_history(T0)) == {
        (T0, "t", "m", "chat/completions"): (2, 0, 20, 4, 10, 2000)
    }


# --- sqlite ------------------------------------------------------------------------------------


async def test_sqlite_writes_the_history_to_its_table(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await open_store(StateConfig(backend="sqlite", path=str(path)))
    try:
        await store.add_history([row(T0), row(T0)], RETENTION)
        with sqlite3.connect(path) as conn:
            got = conn.execute("SELECT * FROM usage_hourly").fetchall()
            plan = conn.execute(
                "EXPLAIN QUERY PLAN SELECT * FROM usage_hourly WHERE hour >= 1"
            ).fetchall()
        assert got == [(T0, "t", "m", "chat/completions", 2, 0, 20, 4, 10, 2000)]
        assert "USING PRIMARY KEY" in str(plan)  # the window read is an index range
    finally:
        await store.close()


async def test_sqlite_keeps_the_history_when_its_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await open_store(StateConfig(backend="sqlite", path=str(path), flush_interval=3600))
    try:
        await store.add_history([row(T0)], RETENTION)
        os.unlink(path)  # e.g. a cleanup job: the daemon moves to a new file at the next flush
        await store.flush()
        assert by_key(await store.read_history(T0)) == {
            (T0, "t", "m", "chat/completions"): (1, 0, 10, 2, 5, 1000)
        }
        await store.flush()
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT requests FROM usage_hourly").fetchall() == [(1,)]
    finally:
        await store.close()


async def test_a_failed_write_raises_so_the_rows_can_be_kept(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await open_store(StateConfig(backend="sqlite", path=str(path)))
    try:
        with sqlite3.connect(path) as conn:
            conn.execute("DROP TABLE usage_hourly")  # the write cannot succeed
        with pytest.raises(sqlite3.Error):
            await store.add_history([row(T0)], RETENTION)
    finally:
        await store.close()


# --- redis -------------------------------------------------------------------------------------


async def test_redis_keeps_one_hash_per_hour_expiring_after_the_retention(redis_url: str) -> None:
    store = await open_store(StateConfig(backend="redis", url=redis_url))
    try:
        await store.add_history([row(T0), row(T0, model="x")], 7 * DAY)
    finally:
        await store.close()
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        assert client.keys("aigw:h:*") == [f"aigw:h:{T0}"]
        fields = client.hgetall(f"aigw:h:{T0}")
        assert fields["t\tm\tchat/completions\tr"] == "1"
        assert fields["t\tx\tchat/completions\tc"] == "1000"
        assert "t\tm\tchat/completions\te" not in fields  # zeros are not written
        expires = client.expiretime(f"aigw:h:{T0}")
    assert expires == T0 + HOUR + 7 * DAY


async def test_redis_unreachable_raises_so_the_rows_can_be_kept(tmp_path: Path) -> None:
    store = await open_store(
        StateConfig(backend="redis", url="redis://127.0.0.1:1/0", on_failure="fail_open")
    )
    try:
        with pytest.raises(Exception, match="unreachable"):
            await store.add_history([row(T0)], RETENTION)
    finally:
        await store.close()
