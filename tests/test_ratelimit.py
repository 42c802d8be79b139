"""Token buckets for requests and tokens, with an injected clock (no sleeps)."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from aigw.config import RateLimitConfig, RateLimitRule
from aigw.errors import RateLimitError
from aigw.limits.ratelimit import (
    UNLIMITED,
    RateLimiter,
    format_duration,
    headers,
    limit_error,
)
from tests.clock import FakeClock as Clock


def limiter(clock: Clock, max_idle: float = 60.0, **kwargs: object) -> RateLimiter:
    return RateLimiter(RateLimitConfig(**kwargs), clock=clock, max_idle=max_idle)  # type: ignore[arg-type]


def test_burst_then_denied_with_exact_retry_after() -> None:
    clock = Clock()
    rl = limiter(clock, requests_per_second=10, burst=20)
    decisions = [rl.check_request("a") for _ in range(20)]
    assert all(d.allowed for d in decisions)
    assert [d.remaining for d in decisions] == list(range(19, -1, -1))
    assert all(d.limit == 20 for d in decisions)
    assert decisions[-1].reset_after == pytest.approx(2.0)

    denied = rl.check_request("a")
    assert not denied.allowed
    assert denied.remaining == 0
    assert denied.retry_after == pytest.approx(0.1, abs=1e-9)
    assert denied.reset_after == pytest.approx(2.0)


def test_refill_after_clock_advance() -> None:
    clock = Clock()
    rl = limiter(clock, requests_per_second=10, burst=20)
    for _ in range(20):
        assert rl.check_request("a").allowed
    denied = rl.check_request("a")
    clock.advance(denied.retry_after)  # waiting exactly retry_after is enough
    assert rl.check_request("a").allowed
    assert not rl.check_request("a").allowed
    clock.advance(0.05)
    assert not rl.check_request("a").allowed
    clock.advance(2.0)  # full again
    assert sum(rl.check_request("a").allowed for _ in range(25)) == 20


def test_tenants_are_isolated_and_overrides_apply() -> None:
    clock = Clock()
    rl = limiter(
        clock,
        requests_per_second=1,
        burst=2,
        tenants={"team-a": RateLimitRule(requests_per_second=50, burst=100)},
    )
    assert [rl.check_request("b").allowed for _ in range(3)] == [True, True, False]
    assert rl.check_request("c").allowed
    first = rl.check_request("team-a")
    assert first.limit == 100 and first.remaining == 99
    assert sum(rl.check_request("team-a").allowed for _ in range(150)) == 99


def test_unlimited_is_a_shared_decision_without_buckets() -> None:
    clock = Clock()
    rl = limiter(clock, tenants={"slow": RateLimitRule(requests_per_second=1, burst=1)})
    assert rl.check_request("a") is UNLIMITED
    assert rl.check_tokens("a", 10**9) is UNLIMITED
    assert rl.bucket_count == 0
    assert headers(UNLIMITED, UNLIMITED) == {}
    # An override can limit one tenant while the default stays unlimited, and vice versa.
    assert rl.check_request("slow").allowed
    assert not rl.check_request("slow").allowed
    rl2 = limiter(clock, requests_per_second=1, tenants={"vip": RateLimitRule()})
    assert rl2.check_request("vip") is UNLIMITED


def test_default_burst_is_max_one_and_rps() -> None:
    clock = Clock()
    assert limiter(clock, requests_per_second=0.5).check_request("a").limit == 1
    assert limiter(clock, requests_per_second=10).check_request("a").limit == 10
    slow = limiter(clock, requests_per_second=0.5)
    assert slow.check_request("a").allowed
    denied = slow.check_request("a")
    assert denied.retry_after == pytest.approx(2.0)


def test_token_bucket_reserve_correct_and_refund() -> None:
    clock = Clock()
    rl = limiter(clock, tokens_per_minute=600)  # 10 tokens/s, bucket 600
    assert rl.check_request("a") is UNLIMITED  # requests unlimited, tokens limited
    first = rl.check_tokens("a", 500)
    assert first.allowed and first.limit == 600 and first.remaining == 100
    denied = rl.check_tokens("a", 200)
    assert not denied.allowed
    assert denied.retry_after == pytest.approx(10.0)  # 100 tokens short at 10/s
    rl.refund_tokens("a", 300)  # actual usage was 200
    assert rl.check_tokens("a", 200).allowed
    rl.add_tokens("a", 400)  # actual usage was higher: debt
    debt = rl.check_tokens("a", 1)
    assert not debt.allowed
    # 500 - 300 + 200 + 400 = 800 held in a 600 bucket: 201 tokens over at 10/s
    assert debt.retry_after == pytest.approx(20.1)
    rl.refund_tokens("a", 10_000)  # back to full: the bucket is forgotten
    assert rl.bucket_count == 0


def test_token_request_larger_than_bucket_waits_for_a_full_bucket() -> None:
    clock = Clock()
    rl = limiter(clock, tokens_per_minute=60)
    big = rl.check_tokens("a", 1_000)
    assert big.allowed and big.remaining == 0
    again = rl.check_tokens("a", 1_000)
    assert not again.allowed
    assert again.retry_after == pytest.approx(60.0)


def test_headers_and_limit_error() -> None:
    clock = Clock()
    rl = limiter(clock, requests_per_second=10, burst=20, tokens_per_minute=6000)
    req = rl.check_request("a")
    tok = rl.check_tokens("a", 1000)
    h = headers(req, tok)
    assert h == {
        "x-ratelimit-limit-requests": "20",
        "x-ratelimit-remaining-requests": "19",
        "x-ratelimit-reset-requests": "100ms",
        "x-ratelimit-limit-tokens": "6000",
        "x-ratelimit-remaining-tokens": "5000",
        "x-ratelimit-reset-tokens": "10s",
    }
    for _ in range(19):
        rl.check_request("a")
    denied = rl.check_request("a")
    err = limit_error("a", denied, None)
    assert isinstance(err, RateLimitError)
    assert err.status == 429 and err.code == "rate_limit_exceeded"
    assert err.headers["retry-after"] == "1"
    assert err.headers["retry-after-ms"] == "100"
    assert err.headers["x-ratelimit-remaining-requests"] == "0"
    assert "'a'" in err.message and "requests" in err.message
    tok_denied = rl.check_tokens("a", 6000)
    err2 = limit_error("a", rl.check_request("b"), tok_denied)
    assert "tokens" in err2.message


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (-1.0, "0s"),
        (0.0001, "1ms"),
        (0.12, "120ms"),
        (0.1 + 1e-12, "100ms"),
        (1.0, "1s"),
        (1.5, "1.5s"),
        (59.999, "59.999s"),
        (60.0, "1m0s"),
        (360.0, "6m0s"),
        (3723.5, "1h2m3.5s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_idle_buckets_are_evicted_and_memory_returns_to_baseline() -> None:
    clock = Clock()
    rl = limiter(clock, max_idle=60.0, requests_per_second=10, burst=20, tokens_per_minute=6000)
    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        for i in range(100_000):
            name = f"tenant-{i}"
            rl.check_request(name)
            rl.check_tokens(name, 100)
        assert rl.bucket_count == 200_000
        busy = tracemalloc.get_traced_memory()[0]
        assert busy - baseline > 5_000_000
        # Before max_idle passed nothing is swept, even though the buckets are full again.
        clock.advance(30.0)
        rl.check_request("tenant-0")
        assert rl.bucket_count == 200_000
        clock.advance(31.0)
        rl.check_request("someone")  # the check path runs the sweep once max_idle passed
        assert rl.bucket_count == 1
        clock.advance(1.0)
        assert rl.evict_idle() == 1
        assert rl.bucket_count == 0
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        assert after - baseline < 100_000
    finally:
        tracemalloc.stop()


def test_busy_buckets_survive_the_sweep() -> None:
    clock = Clock()
    rl = limiter(clock, max_idle=1.0, requests_per_second=1, burst=5)
    for _ in range(5):
        rl.check_request("busy")
    rl.check_request("idle")
    clock.advance(1.5)
    assert rl.evict_idle() == 1  # "idle" is full again; "busy" still owes 3.5 s
    assert rl.bucket_count == 1
    assert rl.check_request("busy").remaining == 0


def test_reload_clamps_buckets_and_drops_unlimited_tenants() -> None:
    clock = Clock()
    rl = limiter(
        clock,
        requests_per_second=10,
        burst=20,
        tenants={"vip": RateLimitRule(requests_per_second=10, burst=20)},
    )
    for _ in range(20):
        rl.check_request("a")
        rl.check_request("vip")
    rl.reload(RateLimitConfig(requests_per_second=10, burst=5, tenants={"vip": RateLimitRule()}))
    assert rl.bucket_count == 1  # vip is unlimited now
    clock.advance(0.1)
    d = rl.check_request("a")  # bucket clamped to the new burst of 5
    assert d.allowed and d.limit == 5 and d.remaining == 0
    assert rl.check_request("vip") is UNLIMITED
