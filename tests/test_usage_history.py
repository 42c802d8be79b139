"""aigw/usage_history.py: the hourly rollup (record, drain, restore, bounded memory, injected
clock), the query (`UsageQuery`) and `summarise()` producing DESIGN §9's JSON."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal

import pytest

from aigw.exchange import Usage
from aigw.pricing import MAX_NANOS
from aigw.usage_history import (
    DAY,
    HOUR,
    OVERFLOW,
    Row,
    UsageQuery,
    UsageReport,
    UsageRollup,
    expires_at,
    hour_of,
    merge_rows,
    parse_since,
    retention_cutoff,
    summarise,
)
from tests.clock import FakeClock

#: 2024-03-10 00:00:00 UTC, a midnight.
T0 = int(datetime.fromisoformat("2024-03-10T00:00:00+00:00").timestamp())
CHAT = "chat/completions"
COUNTER_KEYS = {"requests", "errors", "input_tokens", "cached_input_tokens", "output_tokens",
                "cost_usd"}  # fmt: skip


# --- the rollup --------------------------------------------------------------------------------


def test_record_sums_one_hour_of_one_key() -> None:
    rollup = UsageRollup()
    rollup.record("a", "m", CHAT, Usage(100, 20, 120, cached_tokens=30), 1_500, at=T0 + 10)
    rollup.record("a", "m", CHAT, Usage(50, 5, 55), Decimal("0.000002"), at=T0 + 3599.5)
    rollup.record("a", "m", CHAT, None, 0, error=True, at=T0 + 60)  # failed before usage
    assert rollup.drain() == [Row(T0, "a", "m", CHAT, 3, 1, 150, 30, 25, 3_500)]
    assert rollup.drain() == []  # drained means empty


def test_keys_split_by_hour_tenant_model_and_endpoint() -> None:
    rollup = UsageRollup()
    usage = Usage(1, 1, 2)
    rollup.record("a", "m", CHAT, usage, 1, at=T0 + HOUR - 0.001)
    rollup.record("a", "m", CHAT, usage, 1, at=T0 + HOUR)  # the next hour
    rollup.record("b", "m", CHAT, usage, 1, at=T0)
    rollup.record("a", "n", CHAT, usage, 1, at=T0)
    rollup.record("a", "m", "embeddings", usage, 1, at=T0)
    keys = sorted(row.key for row in rollup.drain())
    assert keys == [
        (T0, "a", "m", CHAT),
        (T0, "a", "m", "embeddings"),
        (T0, "a", "n", CHAT),
        (T0, "b", "m", CHAT),
        (T0 + HOUR, "a", "m", CHAT),
    ]


def test_the_clock_is_injected() -> None:
    clock = FakeClock(T0 + 5 * HOUR + 1)
    rollup = UsageRollup(clock=clock)
    rollup.record("a", "m", CHAT, None)
    clock.advance(HOUR)
    rollup.record("a", "m", CHAT, None)
    assert [row.hour for row in sorted(rollup.drain(), key=lambda r: r.hour)] == [
        T0 + 5 * HOUR,
        T0 + 6 * HOUR,
    ]


def test_rows_peeks_and_restore_puts_a_failed_flush_back() -> None:
    rollup = UsageRollup()
    rollup.record("a", "m", CHAT, Usage(10, 1, 11), 7, at=T0)
    assert rollup.rows() == [Row(T0, "a", "m", CHAT, 1, 0, 10, 0, 1, 7)]
    assert len(rollup) == 1  # still there
    flushed = rollup.drain()
    rollup.record("a", "m", CHAT, Usage(5, 5, 10), 3, at=T0)  # while the write failed
    rollup.restore(flushed)
    assert rollup.drain() == [Row(T0, "a", "m", CHAT, 2, 0, 15, 0, 6, 10)]


def test_memory_is_bounded_and_nothing_is_lost() -> None:
    rollup = UsageRollup(max_keys=3)
    for i in range(10):
        rollup.record(f"t{i}", "m", CHAT, Usage(10, 1, 11), 5, at=T0)
    rollup.record("t0", "m", CHAT, Usage(10, 1, 11), 5, at=T0)  # a known key still counts
    rows = {row.tenant: row for row in rollup.drain()}
    assert set(rows) == {"t0", "t1", "t2", OVERFLOW}
    assert rows["t0"].requests == 2
    assert rows[OVERFLOW].requests == 7 and rows[OVERFLOW].model == OVERFLOW
    assert sum(row.requests for row in rows.values()) == 11
    assert sum(row.cost_nanos for row in rows.values()) == 55
    assert rollup.folded == 7


def test_counters_are_capped_at_what_a_store_holds() -> None:
    rollup = UsageRollup()
    rollup.record("a", "m", CHAT, None, MAX_NANOS, at=T0)
    rollup.record("a", "m", CHAT, None, MAX_NANOS, at=T0)
    [row] = rollup.drain()
    assert row.cost_nanos == MAX_NANOS
    [merged] = merge_rows([row, row])
    assert merged.cost_nanos == MAX_NANOS and merged.requests == 4


def test_merge_rows_sums_the_same_key_from_several_flushes() -> None:
    a = Row(T0, "a", "m", CHAT, 1, 0, 10, 2, 3, 100)
    b = Row(T0, "a", "m", CHAT, 2, 1, 20, 0, 6, 200)
    c = Row(T0 + HOUR, "a", "m", CHAT, 1, 0, 1, 0, 1, 1)
    assert sorted(merge_rows([a, b, c]), key=lambda r: r.hour) == [
        Row(T0, "a", "m", CHAT, 3, 1, 30, 2, 9, 300),
        c,
    ]
    assert Row.from_key(a.key, a.counts()) == a
    assert a.to_dict()["cost_nanos"] == 100


def test_retention_helpers() -> None:
    now = T0 + 10 * DAY + 1800
    assert hour_of(now) == T0 + 10 * DAY
    assert retention_cutoff(now, 90 * DAY) == T0 + 10 * DAY - 90 * DAY
    assert expires_at(T0, 90 * DAY) == T0 + HOUR + 90 * DAY


# --- the query -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90m", 5400),
        ("24h", DAY),
        ("7d", 7 * DAY),
        ("30d", 30 * DAY),
        ("2w", 14 * DAY),
        (" 1h ", HOUR),
        ("366d", 366 * DAY),
    ],
)
def test_parse_since(text: str, seconds: int) -> None:
    assert parse_since(text) == seconds


@pytest.mark.parametrize("text", ["", "24", "1.5h", "0h", "367d", "-1d", "1y", "24 hours", "h"])
def test_parse_since_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="since"):
        parse_since(text)


def test_query_defaults_and_round_trip() -> None:
    assert UsageQuery.make() == UsageQuery("24h", "hour", None, None)
    assert UsageQuery.make("48h").by == "hour"
    assert UsageQuery.make("3d").by == "day"
    query = UsageQuery.make("7d", "tenant", "team-a", "gpt-4o")
    assert UsageQuery.from_params(query.to_params()) == query
    assert UsageQuery.from_params({}) == UsageQuery.make()


@pytest.mark.parametrize(
    ("params", "word"),
    [
        ({"since": "forever"}, "since"),
        ({"by": "week"}, "by"),
        ({"tenant": ""}, "tenant"),
        ({"model": "m" * 300}, "model"),
        ({"sinse": "24h"}, "unknown parameter 'sinse'"),
    ],
)
def test_query_refuses_bad_parameters(params: dict[str, str], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        UsageQuery.from_params(params)


# --- summarise ---------------------------------------------------------------------------------

ROWS = [
    Row(T0 - HOUR, "a", "m", CHAT, 100, 0, 1000, 0, 100, 10**9),  # before the window
    Row(T0, "a", "m", CHAT, 1, 0, 100, 40, 10, 2_000),
    Row(T0, "a", "m", "embeddings", 2, 1, 50, 0, 0, 500),
    Row(T0, "b", "m", CHAT, 3, 0, 30, 0, 3, 9_000),
    Row(T0 + HOUR, "a", "n", CHAT, 4, 2, 400, 100, 40, 1_000),
    Row(T0 + DAY, "b", "n", CHAT, 5, 0, 500, 0, 50, 5_000),
    Row(T0 + 2 * DAY, "a", "m", CHAT, 9, 0, 9, 0, 9, 9),  # at `until`: out
]


def test_by_hour_sums_endpoints_and_keeps_the_design_shape() -> None:
    report = summarise(ROWS, T0 + 1800, "hour", until=T0 + 2 * DAY)
    data = report.to_dict()
    assert set(data) == {"buckets", "totals"}
    assert data["buckets"] == [
        {"start": "2024-03-10T00:00:00Z", "tenant": "a", "model": "m", "requests": 3,
         "errors": 1, "input_tokens": 150, "cached_input_tokens": 40, "output_tokens": 10,
         "cost_usd": 0.0000025},
        {"start": "2024-03-10T00:00:00Z", "tenant": "b", "model": "m", "requests": 3,
         "errors": 0, "input_tokens": 30, "cached_input_tokens": 0, "output_tokens": 3,
         "cost_usd": 0.000009},
        {"start": "2024-03-10T01:00:00Z", "tenant": "a", "model": "n", "requests": 4,
         "errors": 2, "input_tokens": 400, "cached_input_tokens": 100, "output_tokens": 40,
         "cost_usd": 0.000001},
        {"start": "2024-03-11T00:00:00Z", "tenant": "b", "model": "n", "requests": 5,
         "errors": 0, "input_tokens": 500, "cached_input_tokens": 0, "output_tokens": 50,
         "cost_usd": 0.000005},
    ]  # fmt: skip
    assert data["totals"] == {"requests": 15, "errors": 3, "input_tokens": 1080,
                              "cached_input_tokens": 140, "output_tokens": 103,
                              "cost_usd": 0.0000175}  # fmt: skip
    # the hour that began before `since` is in: the period covered starts at it
    assert report.since == T0 and report.until == T0 + 2 * DAY


def test_by_day_buckets_by_utc_day() -> None:
    report = summarise(ROWS, T0, "day", until=T0 + 2 * DAY)
    starts = [(b["start"], b["tenant"], b["model"]) for b in report.to_dict()["buckets"]]
    assert starts == [
        ("2024-03-10T00:00:00Z", "a", "m"),
        ("2024-03-10T00:00:00Z", "a", "n"),
        ("2024-03-10T00:00:00Z", "b", "m"),
        ("2024-03-11T00:00:00Z", "b", "n"),
    ]


def test_by_tenant_and_by_model_sum_over_time_and_leave_start_out() -> None:
    by_tenant = summarise(ROWS, T0, "tenant", until=T0 + 2 * DAY).to_dict()["buckets"]
    assert [(b["tenant"], b["requests"], b["cost_usd"]) for b in by_tenant] == [
        ("b", 8, 0.000014),  # costliest first
        ("a", 7, 0.0000035),
    ]
    assert all(set(b) == COUNTER_KEYS | {"tenant"} for b in by_tenant)
    by_model = summarise(ROWS, T0, "model", until=T0 + 2 * DAY).to_dict()["buckets"]
    assert [(b["model"], b["requests"]) for b in by_model] == [("m", 6), ("n", 9)]
    assert all(set(b) == COUNTER_KEYS | {"model"} for b in by_model)


def test_filters_by_tenant_and_model() -> None:
    report = summarise(ROWS, T0, "hour", tenant="a", model="m", until=T0 + 2 * DAY)
    assert [(b.tenant, b.model, b.counts.requests) for b in report.buckets] == [("a", "m", 3)]
    assert report.totals.requests == 3
    assert summarise(ROWS, T0, "hour", tenant="nobody").to_dict() == {
        "buckets": [],
        "totals": {k: 0 for k in COUNTER_KEYS},
    }


def test_summarise_sums_rows_of_the_same_key_from_store_and_memory() -> None:
    stored = [Row(T0, "a", "m", CHAT, 1, 0, 10, 0, 1, 10)]
    unflushed = [Row(T0, "a", "m", CHAT, 2, 0, 20, 0, 2, 20)]
    [bucket] = summarise(stored + unflushed, T0, "hour").buckets
    assert (bucket.counts.requests, bucket.counts.cost_nanos) == (3, 30)


def test_the_report_reads_back_from_its_json_exactly() -> None:
    report = summarise(ROWS, T0, "hour", until=T0 + 2 * DAY)
    text = json.dumps(report.to_dict())
    back = UsageReport.from_dict(json.loads(text), "hour", since=T0, until=T0 + 2 * DAY)
    assert back == report
    for by in ("tenant", "model", "day"):
        one = summarise(ROWS, T0, by, until=T0 + 2 * DAY)  # type: ignore[arg-type]
        assert UsageReport.from_dict(one.to_dict(), one.by, since=T0, until=T0 + 2 * DAY) == one


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"buckets": {}, "totals": {}},
        {"buckets": [], "totals": {"requests": 1}},
        {"buckets": [1], "totals": {}},
        {
            "buckets": [
                {
                    "start": "yesterday",
                    "requests": 1,
                    "errors": 0,
                    "input_tokens": 0,
                    "cached_input_tokens": 0,
                    "output_tokens": 0,
                    "cost_usd": 0,
                }
            ],
            "totals": {
                "requests": 1,
                "errors": 0,
                "input_tokens": 0,
                "cached_input_tokens": 0,
                "output_tokens": 0,
                "cost_usd": 0,
            },
        },
        {
            "buckets": [],
            "totals": {
                "requests": -1,
                "errors": 0,
                "input_tokens": 0,
                "cached_input_tokens": 0,
                "output_tokens": 0,
                "cost_usd": 0,
            },
        },
        {
            "buckets": [],
            "totals": {
                "requests": 1,
                "errors": 0,
                "input_tokens": 0,
                "cached_input_tokens": 0,
                "output_tokens": 0,
                "cost_usd": "lots",
            },
        },
    ],
)
def test_a_report_of_another_shape_is_refused(data: object) -> None:
    with pytest.raises(ValueError):
        UsageReport.from_dict(data, "hour")
