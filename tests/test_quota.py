"""Quota manager: the origin's quota cases, calendar periods, concurrency, estimates.

Manager tests run over every store (STORES, as in test_state.py; redis on a real redis-server)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from aigw.config import QuotaConfig, StateConfig
from aigw.errors import GatewayError, QuotaExceededError
from aigw.hooks.base import Usage
from aigw.limits.quota import (
    InvalidTenantName,
    QuotaManager,
    period_window,
    validate_tenant,
)
from aigw.state import StateStore, open_store
from tests.clock import FakeClock as Clock

STORES = ["memory", "sqlite", "redis"]


def ts(text: str) -> float:
    """Epoch seconds of an ISO time with offset, e.g. '2024-03-10T12:00:00-04:00'."""
    return datetime.fromisoformat(text).timestamp()


def iso_utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


Factory = Callable[..., Awaitable[QuotaManager]]


@pytest.fixture(params=STORES)
async def make_manager(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Factory]:
    stores: list[StateStore] = []
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None

    async def factory(clock: Clock | None = None, **quota: Any) -> QuotaManager:
        state = StateConfig(
            backend=request.param, path=str(tmp_path / "state.db"), url=url, flush_interval=3600.0
        )
        store = await open_store(state)
        stores.append(store)
        return QuotaManager(
            store, QuotaConfig(**quota), clock=clock or Clock(ts("2024-03-10T12:00:00+00:00"))
        )

    yield factory
    for store in stores:
        await store.close()


def usage(prompt: int, completion: int) -> Usage:
    return Usage(prompt, completion, prompt + completion)


# --- acceptance 1: the origin's quota cases --------------------------------------------------


async def test_record_within_quota_is_allowed_and_counted(make_manager: Factory) -> None:
    qm = await make_manager(default=1000)
    r = await qm.reserve("team-a", 150)
    await qm.commit(r, usage(100, 50))
    [status] = await qm.status("team-a")
    assert (status.input_tokens, status.output_tokens, status.total_tokens) == (100, 50, 150)
    assert status.limit == 1000 and status.percent_used == 15.0 and status.reserved == 0
    assert status.source == "config" and status.period == "daily"


async def test_record_over_quota_is_denied(make_manager: Factory) -> None:
    qm = await make_manager(default=100)
    with pytest.raises(QuotaExceededError) as info:
        await qm.reserve("team-a", 150)
    err = info.value
    assert err.status == 429 and err.code == "insufficient_quota"
    assert err.headers["x-should-retry"] == "false"
    assert "team-a" in err.message and "100" in err.message
    [status] = await qm.status("team-a")
    assert status.total_tokens == 0 and status.reserved == 0


async def test_a_refusal_only_for_reservations_in_flight_may_be_retried(
    make_manager: Factory,
) -> None:
    qm = await make_manager(default=100)
    held = await qm.reserve("team-a", 80)
    with pytest.raises(QuotaExceededError) as info:  # 0 used + 30 fits; the 80 held does not
        await qm.reserve("team-a", 30)
    err = info.value
    assert "x-should-retry" not in err.headers and err.headers["retry-after"] == "1"
    assert "Retry once the requests in flight have finished" in err.message
    await qm.commit(held, usage(40, 40))
    with pytest.raises(QuotaExceededError) as info:  # 80 used + 30 cannot fit, ever
        await qm.reserve("team-a", 30)
    assert info.value.headers["x-should-retry"] == "false"
    assert "retry-after" not in info.value.headers


async def test_limit_zero_is_unlimited_and_usage_still_recorded(make_manager: Factory) -> None:
    qm = await make_manager(default=100, tenants={"enterprise": 0})
    r = await qm.reserve("enterprise", 10**9)
    assert r.tokens == 0  # nothing held in the store
    await qm.commit(r, usage(700, 300))
    [status] = await qm.status("enterprise")
    assert status.limit == 0 and status.total_tokens == 1000 and status.percent_used == 0.0
    with pytest.raises(QuotaExceededError):
        await qm.reserve("other", 101)  # the default still applies to others


async def test_disabled_quota_always_allows(make_manager: Factory) -> None:
    qm = await make_manager()  # no quota section: default 0
    for _ in range(5):
        r = await qm.reserve("anyone", 10**12)
        await qm.commit(r, usage(10**6, 10**6))
    [status] = await qm.status("anyone")
    assert status.total_tokens == 5 * 2 * 10**6


async def test_runtime_override_wins_over_default(make_manager: Factory) -> None:
    qm = await make_manager(default=100)
    await qm.set_limit("team-a", 500)
    r = await qm.reserve("team-a", 450)
    await qm.commit(r, usage(400, 50))
    with pytest.raises(QuotaExceededError):
        await qm.reserve("team-a", 51)
    [status] = await qm.status("team-a")
    assert (status.limit, status.source, status.total_tokens) == (500, "override", 450)
    await qm.set_limit("team-a", 0)  # 0 = unlimited at runtime too
    await qm.reserve("team-a", 10**9)
    await qm.store.set_override("team-a", None)  # the override goes: the config is back
    with pytest.raises(QuotaExceededError):
        await qm.reserve("team-a", 1)  # back to the default of 100, already 450 used


async def test_override_with_period(make_manager: Factory) -> None:
    qm = await make_manager(default=100, period="daily")
    await qm.set_limit("team-a", 500, "monthly")
    [status] = await qm.status("team-a")
    assert status.period == "monthly"
    assert status.next_reset == "2024-04-01T00:00:00Z"
    with pytest.raises(ValueError, match="period"):
        await qm.set_limit("team-a", 500, "yearly")
    with pytest.raises(ValueError, match="tokens"):
        await qm.set_limit("team-a", -1)


async def test_reset_zeroes_usage(make_manager: Factory) -> None:
    qm = await make_manager(default=1000)
    r = await qm.reserve("team-a", 900)
    await qm.commit(r, usage(800, 100))
    with pytest.raises(QuotaExceededError):
        await qm.reserve("team-a", 200)
    await qm.reset("team-a")
    [status] = await qm.status("team-a")
    assert (status.input_tokens, status.output_tokens, status.total_tokens) == (0, 0, 0)
    await qm.reserve("team-a", 1000)


async def test_two_tenants_are_isolated(make_manager: Factory) -> None:
    qm = await make_manager(default=1000)
    r = await qm.reserve("team-a", 1000)
    await qm.commit(r, usage(500, 500))
    with pytest.raises(QuotaExceededError):
        await qm.reserve("team-a", 1)
    r2 = await qm.reserve("team-b", 1000)
    await qm.commit(r2, usage(1, 1))
    statuses = {s.tenant: s for s in await qm.status()}
    assert statuses["team-a"].total_tokens == 1000
    assert statuses["team-b"].total_tokens == 2


async def test_release_and_idempotent_commit(make_manager: Factory) -> None:
    qm = await make_manager(default=1000)
    r = await qm.reserve("a", 600)
    [status] = await qm.status("a")
    assert status.reserved == 600
    await qm.release(r)
    await qm.release(r)
    await qm.commit(r, usage(10, 10))  # already settled: ignored
    [status] = await qm.status("a")
    assert (status.reserved, status.total_tokens) == (0, 0)
    r2 = await qm.reserve("a", 600)
    await qm.commit(r2, usage(100, 100))
    await qm.commit(r2, usage(100, 100))
    [status] = await qm.status("a")
    assert (status.reserved, status.total_tokens) == (0, 200)


async def test_commit_without_usage_charges_the_reservation(make_manager: Factory) -> None:
    qm = await make_manager(default=1000)
    r = await qm.reserve("a", 300)
    await qm.commit(r, None)
    [status] = await qm.status("a")
    assert status.total_tokens == 300


async def test_new_period_starts_at_zero_and_late_commits_stay_in_their_period(
    make_manager: Factory,
) -> None:
    clock = Clock(ts("2024-03-10T23:59:00+00:00"))
    qm = await make_manager(clock, default=1000)
    done = await qm.reserve("a", 900)
    await qm.commit(done, usage(900, 0))
    late = await qm.reserve("a", 100)
    clock.now = ts("2024-03-11T00:00:00+00:00")  # midnight UTC: a new day
    [status] = await qm.status("a")
    assert (status.total_tokens, status.reserved) == (0, 0)
    assert status.next_reset == "2024-03-12T00:00:00Z"
    await qm.commit(late, usage(50, 50))  # charged to yesterday, not today
    await qm.reserve("a", 1000)


async def test_status_lists_config_override_and_used_tenants_sorted(
    make_manager: Factory,
) -> None:
    qm = await make_manager(default=100, tenants={"free-tier": 10})
    await qm.set_limit("vip", 5000)
    await qm.commit(await qm.reserve("zeta", 1), usage(1, 0))
    statuses = await qm.status()
    assert [s.tenant for s in statuses] == ["free-tier", "vip", "zeta"]
    assert [s.limit for s in statuses] == [10, 5000, 100]
    assert statuses[0].to_dict()["next_reset"] == "2024-03-11T00:00:00Z"


async def test_reload_keeps_usage_and_applies_new_limits(make_manager: Factory) -> None:
    qm = await make_manager(default=1000)
    await qm.commit(await qm.reserve("a", 500), usage(250, 250))
    qm.reload(replace(qm.config, default=400))
    with pytest.raises(QuotaExceededError):
        await qm.reserve("a", 1)
    [status] = await qm.status("a")
    assert (status.total_tokens, status.limit) == (500, 400)


async def test_next_reset_is_in_the_future_after_a_record(make_manager: Factory) -> None:
    clock = Clock(ts("2024-02-29T13:37:00+00:00"))
    for period in ("hourly", "daily", "weekly", "monthly"):
        qm = await make_manager(clock, default=10_000, period=period, timezone="Europe/Berlin")
        await qm.commit(await qm.reserve("a", 10), usage(5, 5))
        [status] = await qm.status("a")
        assert status.next_reset is not None
        assert datetime.fromisoformat(status.next_reset).timestamp() > clock.now
    qm = await make_manager(clock, default=10_000, period="never")
    [status] = await qm.status("a")
    assert status.next_reset is None


# --- acceptance 1: next reset for every period ------------------------------------------------

NY = "America/New_York"
BERLIN = "Europe/Berlin"


@pytest.mark.parametrize(
    ("zone", "period", "now", "start", "end", "key"),
    [
        # month ends
        ("UTC", "daily", "2024-01-31T15:00:00+00:00", "2024-01-31T00:00:00Z",
         "2024-02-01T00:00:00Z", "daily:2024-01-31"),
        ("UTC", "monthly", "2024-01-31T23:59:59+00:00", "2024-01-01T00:00:00Z",
         "2024-02-01T00:00:00Z", "monthly:2024-01"),
        ("UTC", "monthly", "2023-04-30T10:00:00+00:00", "2023-04-01T00:00:00Z",
         "2023-05-01T00:00:00Z", "monthly:2023-04"),
        ("UTC", "monthly", "2024-12-31T23:59:59+00:00", "2024-12-01T00:00:00Z",
         "2025-01-01T00:00:00Z", "monthly:2024-12"),
        # leap day
        ("UTC", "daily", "2024-02-29T12:00:00+00:00", "2024-02-29T00:00:00Z",
         "2024-03-01T00:00:00Z", "daily:2024-02-29"),
        ("UTC", "monthly", "2024-02-29T12:00:00+00:00", "2024-02-01T00:00:00Z",
         "2024-03-01T00:00:00Z", "monthly:2024-02"),
        ("UTC", "monthly", "2023-02-28T12:00:00+00:00", "2023-02-01T00:00:00Z",
         "2023-03-01T00:00:00Z", "monthly:2023-02"),
        ("UTC", "weekly", "2024-02-29T12:00:00+00:00", "2024-02-26T00:00:00Z",
         "2024-03-04T00:00:00Z", "weekly:2024-02-26"),
        # weeks start on Monday, also across a year end
        ("UTC", "weekly", "2024-03-10T23:00:00+00:00", "2024-03-04T00:00:00Z",
         "2024-03-11T00:00:00Z", "weekly:2024-03-04"),
        ("UTC", "weekly", "2024-03-11T00:00:00+00:00", "2024-03-11T00:00:00Z",
         "2024-03-18T00:00:00Z", "weekly:2024-03-11"),
        ("UTC", "weekly", "2024-12-31T08:00:00+00:00", "2024-12-30T00:00:00Z",
         "2025-01-06T00:00:00Z", "weekly:2024-12-30"),
        ("UTC", "hourly", "2024-03-10T10:59:59.999+00:00", "2024-03-10T10:00:00Z",
         "2024-03-10T11:00:00Z", "hourly:2024-03-10T10:00+00:00"),
        # New York, spring forward (2024-03-10 02:00 -> 03:00): a 23-hour day
        (NY, "daily", "2024-03-10T12:00:00-04:00", "2024-03-10T05:00:00Z",
         "2024-03-11T04:00:00Z", "daily:2024-03-10"),
        (NY, "hourly", "2024-03-10T01:30:00-05:00", "2024-03-10T06:00:00Z",
         "2024-03-10T07:00:00Z", "hourly:2024-03-10T01:00-05:00"),
        (NY, "weekly", "2024-03-10T23:00:00-04:00", "2024-03-04T05:00:00Z",
         "2024-03-11T04:00:00Z", "weekly:2024-03-04"),
        (NY, "monthly", "2024-03-31T23:30:00-04:00", "2024-03-01T05:00:00Z",
         "2024-04-01T04:00:00Z", "monthly:2024-03"),
        # New York, fall back (2024-11-03 02:00 -> 01:00): a 25-hour day, 01:00 happens twice
        (NY, "daily", "2024-11-03T23:00:00-05:00", "2024-11-03T04:00:00Z",
         "2024-11-04T05:00:00Z", "daily:2024-11-03"),
        (NY, "hourly", "2024-11-03T01:30:00-04:00", "2024-11-03T05:00:00Z",
         "2024-11-03T06:00:00Z", "hourly:2024-11-03T01:00-04:00"),
        (NY, "hourly", "2024-11-03T01:30:00-05:00", "2024-11-03T06:00:00Z",
         "2024-11-03T07:00:00Z", "hourly:2024-11-03T01:00-05:00"),
        # Berlin, spring forward 2024-03-31 and fall back 2024-10-27
        (BERLIN, "daily", "2024-03-31T12:00:00+02:00", "2024-03-30T23:00:00Z",
         "2024-03-31T22:00:00Z", "daily:2024-03-31"),
        (BERLIN, "monthly", "2024-03-15T12:00:00+01:00", "2024-02-29T23:00:00Z",
         "2024-03-31T22:00:00Z", "monthly:2024-03"),
        (BERLIN, "monthly", "2024-10-31T23:59:00+01:00", "2024-09-30T22:00:00Z",
         "2024-10-31T23:00:00Z", "monthly:2024-10"),
        (BERLIN, "weekly", "2024-10-27T12:00:00+01:00", "2024-10-20T22:00:00Z",
         "2024-10-27T23:00:00Z", "weekly:2024-10-21"),
        (BERLIN, "daily", "2024-02-29T00:30:00+01:00", "2024-02-28T23:00:00Z",
         "2024-02-29T23:00:00Z", "daily:2024-02-29"),
        # a zone whose midnight is skipped by DST (Santiago, 2024-09-08 00:00 -> 01:00)
        ("America/Santiago", "daily", "2024-09-08T12:00:00-03:00", "2024-09-08T04:00:00Z",
         "2024-09-09T03:00:00Z", "daily:2024-09-08"),
        # half-hour offset: hours start at :30 UTC
        ("Asia/Kolkata", "hourly", "2024-03-10T10:15:00+05:30", "2024-03-10T04:30:00Z",
         "2024-03-10T05:30:00Z", "hourly:2024-03-10T10:00+05:30"),
    ],
)  # fmt: skip
def test_period_window(zone: str, period: str, now: str, start: str, end: str, key: str) -> None:
    window = period_window(period, ts(now), ZoneInfo(zone))
    assert (iso_utc(window.start), iso_utc(window.end), window.key) == (start, end, key)
    assert window.start <= ts(now) < window.end
    assert window.next_reset() == end


def test_period_never_and_unknown() -> None:
    window = period_window("never", ts("2024-03-10T00:00:00+00:00"), ZoneInfo("UTC"))
    assert (window.key, window.next_reset()) == ("never", None)
    with pytest.raises(ValueError, match="yearly"):
        period_window("yearly", 0.0, ZoneInfo("UTC"))


def test_consecutive_periods_tile_time_across_dst() -> None:
    """Every period's end is the next one's start: no gap, no overlap, over a DST year."""
    tz = ZoneInfo(NY)
    for period in ("hourly", "daily", "weekly", "monthly"):
        t = ts("2024-01-01T00:00:00-05:00")
        window = period_window(period, t, tz)
        keys = set()
        while window.start < ts("2025-01-01T00:00:00-05:00"):
            following = period_window(period, window.end, tz)
            assert following.start == window.end
            assert following.key not in keys
            keys.add(window.key)
            window = following
        expected = {"hourly": 366 * 24, "daily": 366, "weekly": 53, "monthly": 12}[period]
        assert len(keys) == expected


# --- acceptance 2 at library level: concurrency ----------------------------------------------


async def test_200_concurrent_requests_never_exceed_quota(make_manager: Factory) -> None:
    """10,000 tokens left, 200 requests with max_tokens 100: recorded usage never passes the
    quota and every request either succeeds or gets insufficient_quota."""
    qm = await make_manager(default=20_000)
    await qm.commit(await qm.reserve("team-a", 10_000), usage(5_000, 5_000))
    rng = random.Random(42)
    outcomes: list[str] = []

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
    estimate = qm.estimate_tokens("chat/completions", body)
    assert estimate == 3 + 4 + 1 + 100

    async def request(i: int) -> None:
        try:
            reservation = await qm.reserve("team-a", qm.estimate_tokens("chat/completions", body))
        except QuotaExceededError:
            outcomes.append("429")
            return
        for _ in range(rng.randrange(4)):  # upstream latency: other tasks run meanwhile
            await asyncio.sleep(0)
        completion = rng.randrange(1, 101)
        await qm.commit(reservation, Usage(8, completion, 8 + completion))
        [status] = await qm.status("team-a")
        assert status.total_tokens <= 20_000
        outcomes.append("ok")

    await asyncio.gather(*(request(i) for i in range(200)))
    assert len(outcomes) == 200
    assert set(outcomes) <= {"ok", "429"}
    assert outcomes.count("ok") >= 10_000 // estimate  # the first ones always fit
    [status] = await qm.status("team-a")
    assert status.total_tokens <= 20_000
    assert status.reserved == 0


async def test_concurrent_worst_case_usage_admits_exactly_what_fits(
    make_manager: Factory,
) -> None:
    qm = await make_manager(default=10_000)

    async def request() -> bool:
        try:
            reservation = await qm.reserve("a", 100)
        except QuotaExceededError:
            return False
        await asyncio.sleep(0)
        await qm.commit(reservation, usage(0, 100))
        return True

    results = await asyncio.gather(*(request() for _ in range(200)))
    assert sum(results) == 100
    [status] = await qm.status("a")
    assert status.total_tokens == 10_000


# --- tenant names -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "team-a", "A.b_c-1", "x" * 64, "0"])
def test_valid_tenant_names(name: str) -> None:
    assert validate_tenant(name) == name


@pytest.mark.parametrize("name", ["", "x" * 65, "a b", "ü", "a/b", "a\n", "team:a"])
async def test_invalid_tenant_names(name: str, make_manager: Factory) -> None:
    with pytest.raises(InvalidTenantName) as info:
        validate_tenant(name)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, GatewayError) and info.value.status == 400
    assert "\n" not in str(info.value).replace("\\n", "")
    qm = await make_manager(default=10)
    for call in (
        qm.reserve(name, 1),
        qm.set_limit(name, 1),
        qm.reset(name),
        qm.status(name),
    ):
        with pytest.raises(InvalidTenantName):
            await call


# --- estimates --------------------------------------------------------------------------------


async def test_estimate_chat(make_manager: Factory) -> None:
    qm = await make_manager(default_max_tokens=1000)
    body: dict[str, Any] = {
        "messages": [
            {"role": "system", "content": "x" * 40},  # 10 tokens
            {"role": "user", "content": [{"type": "text", "text": "y" * 40},
                                         {"type": "image_url", "image_url": {"url": "u"}}]},
        ],
        "max_tokens": 50,
    }  # fmt: skip
    prompt = 3 + 2 * 4 + 85 + 20
    assert qm.estimate_prompt_tokens("chat/completions", body) == prompt
    assert qm.estimate_tokens("chat/completions", body) == prompt + 50
    body["max_completion_tokens"] = 70  # wins over max_tokens
    body["n"] = 2
    assert qm.estimate_tokens("chat/completions", body) == prompt + 140
    del body["max_completion_tokens"], body["max_tokens"], body["n"]
    assert qm.estimate_tokens("chat/completions", body) == prompt + 1000


async def test_estimate_counts_tools_and_tool_calls(make_manager: Factory) -> None:
    qm = await make_manager()
    bare = {"messages": [{"role": "assistant", "content": None}]}
    with_tools = {
        "messages": [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"function": {"name": "f", "arguments": "z" * 400}}],
            }
        ],
        "tools": [{"type": "function", "function": {"name": "g", "description": "d" * 400}}],
    }
    extra = qm.estimate_prompt_tokens("chat/completions", with_tools) - qm.estimate_prompt_tokens(
        "chat/completions", bare
    )
    assert extra >= 200


async def test_estimate_completions_and_embeddings(make_manager: Factory) -> None:
    qm = await make_manager(default_max_tokens=16)
    assert qm.estimate_tokens("completions", {"prompt": "a" * 8, "max_tokens": 5}) == 2 + 5
    assert qm.estimate_tokens("completions", {"prompt": [1, 2, 3]}) == 3 + 16
    assert qm.estimate_tokens("completions", {"prompt": ["ab", "cd"], "max_tokens": 1}) == 1 + 1
    assert qm.estimate_tokens("embeddings", {"input": "a" * 9, "max_tokens": 99}) == 3
    assert qm.estimate_tokens("embeddings", {"input": [[1, 2], [3]]}) == 3
    # Malformed fields never crash the estimate (validation reports them separately).
    assert qm.estimate_tokens("chat/completions", {"messages": "nope", "max_tokens": "x"}) == 19
    assert qm.estimate_tokens("chat/completions", {"max_tokens": True}) == 3 + 16


# --- durability through the manager -----------------------------------------------------------


async def test_usage_and_overrides_survive_restart_with_sqlite(tmp_path: Path) -> None:
    state = StateConfig(backend="sqlite", path=str(tmp_path / "s.db"), flush_interval=3600.0)
    clock = Clock(ts("2024-03-10T12:00:00+00:00"))
    store = await open_store(state)
    qm = QuotaManager(store, QuotaConfig(default=100), clock=clock)
    await qm.set_limit("team-a", 500)
    await qm.commit(await qm.reserve("team-a", 300), usage(200, 100))
    pending = await qm.reserve("team-a", 150)  # in flight at shutdown: not persisted
    assert pending.tokens == 150
    await qm.close()
    await store.close()

    store = await open_store(state)
    try:
        qm = QuotaManager(store, QuotaConfig(default=100), clock=clock)
        [status] = await qm.status("team-a")
        assert (status.limit, status.source, status.total_tokens, status.reserved) == (
            500,
            "override",
            300,
            0,
        )
        await qm.reserve("team-a", 200)
        with pytest.raises(QuotaExceededError):
            await qm.reserve("team-a", 1)
    finally:
        await store.close()
