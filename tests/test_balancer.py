"""Balancer: strategies, passive health, circuit breaker, active probes, stats, reload.

Time comes from a FakeClock and randomness from a seeded random.Random: nothing sleeps.
"""

from __future__ import annotations

import heapq
import itertools
import json
import random
from collections import Counter
from collections.abc import Sequence

import pytest

from aigw.balancer import Balancers, ModelBalancer
from aigw.choices import STRATEGY_CLASSES
from aigw.config import (
    STRATEGIES,
    Config,
    HealthConfig,
    ModelConfig,
    ProviderConfig,
    Secret,
    TargetConfig,
)
from aigw.health import (
    CLOSED,
    DEGRADED,
    HALF_OPEN,
    HEALTHY,
    LATENCY_SAMPLES,
    OPEN,
    UNHEALTHY,
    Lease,
    TargetState,
)
from tests.clock import FakeClock

HEALTH = HealthConfig(
    error_rate_threshold=0.5,
    window=60.0,
    min_requests=10,
    cooldown=30.0,
    max_cooldown=300.0,
    check_interval=0.0,
)


def model(
    name: str,
    strategy: str,
    *targets: tuple[str, str, int],
    fallbacks: tuple[str, ...] = (),
    retries: int | None = None,
) -> ModelConfig:
    return ModelConfig(
        name=name,
        strategy=strategy,
        targets=tuple(TargetConfig(provider=p, model=m, weight=w) for p, m, w in targets),
        fallbacks=fallbacks,
        retries=retries,
    )


def three(strategy: str, weights: Sequence[int] = (1, 1, 1)) -> dict[str, ModelConfig]:
    targets = [(p, "m", w) for p, w in zip(("a", "b", "c"), weights, strict=False)]
    return {"gw": model("gw", strategy, *targets)}


def build(
    models: dict[str, ModelConfig],
    health: HealthConfig = HEALTH,
    clock: FakeClock | None = None,
    seed: int = 1,
) -> tuple[Balancers, FakeClock]:
    clock = clock or FakeClock()
    return Balancers(models, health, clock=clock, rng=random.Random(seed)), clock


def bal(balancers: Balancers, name: str = "gw") -> ModelBalancer:
    mb = balancers.get(name)
    assert mb is not None
    return mb


def take(mb: ModelBalancer, exclude: Sequence[TargetState] = ()) -> Lease:
    lease = mb.acquire(exclude)
    assert lease is not None
    return lease


def spread(mb: ModelBalancer, n: int) -> Counter[str]:
    """n sequential requests, each succeeding at once; how many each provider got."""
    seen: Counter[str] = Counter()
    for _ in range(n):
        lease = take(mb)
        seen[lease.target.provider] += 1
        lease.success()
    return seen


# --- strategies ---------------------------------------------------------------------------


def test_registry_has_one_class_per_configured_strategy() -> None:
    assert set(STRATEGY_CLASSES) == set(STRATEGIES)
    assert len(set(STRATEGY_CLASSES.values())) == len(STRATEGIES)


def test_round_robin_is_exact() -> None:
    balancers, _ = build(three("round_robin"))
    assert spread(bal(balancers), 300) == {"a": 100, "b": 100, "c": 100}


def test_round_robin_rotates_in_order_and_skips_excluded() -> None:
    balancers, _ = build(three("round_robin"))
    mb = bal(balancers)
    order = []
    for _ in range(6):
        lease = take(mb)
        order.append(lease.target.provider)
        lease.success()
    assert order == ["a", "b", "c", "a", "b", "c"]
    first = take(mb)
    second = take(mb, [first.target])
    third = take(mb, [first.target, second.target])
    assert len({first.target, second.target, third.target}) == 3
    assert mb.acquire([first.target, second.target, third.target]) is None


def test_round_robin_honours_weights_smoothly() -> None:
    balancers, _ = build(three("round_robin", (3, 1)))
    mb = bal(balancers)
    picks = []
    for _ in range(400):
        lease = take(mb)
        picks.append(lease.target.provider)
        lease.success()
    assert Counter(picks) == {"a": 300, "b": 100}
    assert "aaaa" not in "".join(picks)  # smooth: never four in a row at 3:1


def test_weighted_random_3_to_1_within_3_points() -> None:
    balancers, _ = build(three("weighted_random", (3, 1)), seed=42)
    seen = spread(bal(balancers), 4000)
    assert abs(seen["a"] / 4000 - 0.75) <= 0.03
    assert seen["a"] + seen["b"] == 4000


def test_random_is_uniform_and_ignores_weights() -> None:
    balancers, _ = build(three("random", (5, 1, 1)), seed=3)
    seen = spread(bal(balancers), 3000)
    for provider in "abc":
        assert abs(seen[provider] / 3000 - 1 / 3) <= 0.03


def test_least_connections_sends_to_the_idlest() -> None:
    balancers, _ = build(three("least_connections"))
    mb = bal(balancers)
    by_provider = {t.provider: t for t in mb.targets}
    held: list[Lease] = []
    # Uneven work: a has 3 requests in flight, b has 1, c has 2.
    for provider, count in (("a", 3), ("b", 1), ("c", 2)):
        for _ in range(count):
            lease = take(mb, [t for t in mb.targets if t.provider != provider])
            held.append(lease)
    assert [by_provider[p].in_flight for p in "abc"] == [3, 1, 2]
    lease = take(mb)
    assert lease.target.provider == "b"  # 1 in flight: the idlest
    # Now b has 2 and c has 2: a tie between the two idlest, and a is never chosen.
    picks = []
    for _ in range(10):
        extra = take(mb)
        picks.append(extra.target.provider)
        extra.neutral()
    assert set(picks) == {"b", "c"}
    for lease_ in held:
        lease_.success()
    lease.success()
    assert all(t.in_flight == 0 for t in mb.targets)


def test_least_connections_breaks_ties_round_robin() -> None:
    balancers, _ = build(three("least_connections"))
    picks = []
    mb = bal(balancers)
    for _ in range(30):
        lease = take(mb)
        picks.append(lease.target.provider)
        lease.success()
    assert Counter(picks) == {"a": 10, "b": 10, "c": 10}
    assert all(x != y for x, y in itertools.pairwise(picks))


def test_least_connections_uses_weights() -> None:
    balancers, _ = build(three("least_connections", (4, 1)))
    mb = bal(balancers)
    held = [take(mb) for _ in range(10)]
    counts = Counter(lease.target.provider for lease in held)
    assert counts == {"a": 8, "b": 2}


def _simulate(
    mb: ModelBalancer, clock: FakeClock, latency: dict[str, float], requests: int, workers: int
) -> Counter[str]:
    """`workers` concurrent clients, each sending its next request when the previous answers."""
    seen: Counter[str] = Counter()
    pending: list[tuple[float, int, Lease]] = []
    seq = 0
    for _ in range(workers):
        lease = take(mb)
        heapq.heappush(pending, (clock.now + latency[lease.target.provider], seq, lease))
        seq += 1
    done = 0
    while done < requests:
        when, _, lease = heapq.heappop(pending)
        clock.now = max(clock.now, when)
        lease.success()
        seen[lease.target.provider] += 1
        done += 1
        nxt = take(mb)
        seq += 1
        heapq.heappush(pending, (clock.now + latency[nxt.target.provider], seq, nxt))
    while pending:
        _, _, lease = heapq.heappop(pending)
        lease.neutral()
    return seen


@pytest.mark.parametrize("workers", [1, 8])
def test_latency_moves_traffic_off_a_slow_target_and_back(workers: int) -> None:
    balancers, clock = build(three("latency"), seed=5)
    mb = bal(balancers)
    latency = {"a": 0.05, "b": 0.05, "c": 0.05}
    before = _simulate(mb, clock, latency, 3000, workers)
    assert before["a"] >= 600  # a fair share to start with

    latency["a"] = 0.5  # 10x slower
    _simulate(mb, clock, latency, 300, workers)  # the strategy notices
    slow = _simulate(mb, clock, latency, 3000, workers)
    assert slow["a"] <= 0.2 * before["a"]  # at least 80% of its traffic moved away

    latency["a"] = 0.05  # recovered
    _simulate(mb, clock, latency, 9000, workers)  # tried again as its cost decays (~1 min)
    after = _simulate(mb, clock, latency, 3000, workers)
    assert after["a"] >= 0.8 * before["a"]


# --- health and circuit breaker ----------------------------------------------------------


def failing_pair(health: HealthConfig = HEALTH) -> tuple[Balancers, FakeClock, ModelBalancer]:
    balancers, clock = build(
        {"gw": model("gw", "round_robin", ("bad", "m", 1), ("good", "m", 1))}, health
    )
    return balancers, clock, bal(balancers)


def drive(mb: ModelBalancer, n: int, clock: FakeClock, step: float = 0.1) -> Counter[str]:
    """n requests; every request to `bad` fails, the rest succeed."""
    seen: Counter[str] = Counter()
    for _ in range(n):
        lease = take(mb)
        seen[lease.target.provider] += 1
        if lease.target.provider == "bad":
            lease.failure("HTTP 500: boom")
        else:
            lease.success()
        clock.advance(step)
    return seen


def target(mb: ModelBalancer, provider: str) -> TargetState:
    return next(t for t in mb.targets if t.provider == provider)


def test_failing_target_trips_after_min_requests_then_probe_and_rejoin() -> None:
    _, clock, mb = failing_pair()
    bad = target(mb, "bad")
    seen = drive(mb, 19, clock)
    assert seen["bad"] == 10  # round robin: bad got every other request
    assert bad.circuit_at(clock.now) == OPEN  # the 10th failure (min_requests) opened it
    assert bad.requests == 10 and bad.errors == 10

    # Cooldown: no traffic at all to the bad target.
    during = drive(mb, 290, clock)  # 29 s < cooldown 30 s
    assert during["bad"] == 0
    assert mb.soonest_recovery() == 0.0  # good is still available

    # Past the cooldown: exactly one request is let through as the probe.
    clock.advance(1.0)
    assert bad.circuit_at(clock.now) == HALF_OPEN
    leases = [take(mb) for _ in range(10)]
    probes = [lease for lease in leases if lease.target is bad]
    assert len(probes) == 1
    for lease in leases:
        if lease is not probes[0]:
            lease.success()
    assert bad.circuit_at(clock.now) == HALF_OPEN
    probes[0].success()
    assert bad.circuit_at(clock.now) == CLOSED

    # Rejoined: back in the rotation.
    rejoined = Counter(spread(mb, 20))
    assert rejoined == {"bad": 10, "good": 10}


def test_failed_probe_reopens_with_doubled_cooldown_up_to_the_cap() -> None:
    health = HealthConfig(
        error_rate_threshold=0.5, window=60, min_requests=4, cooldown=10, max_cooldown=35
    )
    _, clock, mb = failing_pair(health)
    bad = target(mb, "bad")
    drive(mb, 8, clock, step=0.0)
    assert bad.circuit_at(clock.now) == OPEN
    cooldowns = []
    for _ in range(4):
        opened = clock.now
        while bad.circuit_at(clock.now) == OPEN:
            lease = take(mb)
            assert lease.target is not bad
            lease.success()
            clock.advance(0.5)
        cooldowns.append(clock.now - opened)
        probe = take(mb, [target(mb, "good")])
        assert probe.target is bad
        assert mb.acquire([target(mb, "good")]) is None  # one probe at a time
        probe.failure("connect refused")
        assert bad.circuit_at(clock.now) == OPEN
    assert cooldowns == [10.0, 20.0, 35.0, 35.0]


def test_tripping_again_soon_after_recovery_doubles_and_later_resets() -> None:
    health = HealthConfig(min_requests=4, window=60, cooldown=10, max_cooldown=300)
    _, clock, mb = failing_pair(health)
    bad = target(mb, "bad")

    def trip_and_recover() -> float:
        drive(mb, 8, clock, step=0.0)
        assert bad.circuit_at(clock.now) == OPEN
        cooldown = bad._open_until - clock.now
        clock.now = bad._open_until
        probe = take(mb, [target(mb, "good")])
        probe.success()
        assert bad.circuit_at(clock.now) == CLOSED
        return cooldown

    assert trip_and_recover() == 10.0
    assert trip_and_recover() == 20.0  # tripped again within the window of recovering
    clock.advance(61)
    assert trip_and_recover() == 10.0  # stayed healthy a full window: starts over


def test_soonest_recovery_is_the_earliest_open_circuit() -> None:
    health = HealthConfig(min_requests=1, cooldown=30)
    balancers, clock = build(three("round_robin"), health)
    mb = bal(balancers)
    take(mb).failure("x")  # a opens at t=0 → back at 30
    clock.advance(10)
    take(mb).failure("x")  # b opens at t=10 → back at 40
    take(mb).failure("x")  # c opens at t=10 → back at 40
    assert mb.acquire() is None
    assert mb.soonest_recovery() == pytest.approx(20.0)
    clock.advance(20)
    probe = take(mb)
    assert probe.target.provider == "a"
    # the only half-open slot is taken; b and c still cool down for 10 s
    assert mb.acquire() is None
    assert mb.soonest_recovery() == pytest.approx(1.0)  # busy probe: try again shortly


def test_failures_outside_the_window_are_forgotten() -> None:
    _, clock, mb = failing_pair()
    bad = target(mb, "bad")
    # 9 failures: one short of min_requests, so still closed.
    for _ in range(9):
        lease = take(mb, [target(mb, "good")])
        lease.failure("HTTP 503")
    assert bad.circuit_at(clock.now) == CLOSED
    assert bad.health_at(clock.now) == DEGRADED
    clock.advance(61)  # long ago now
    assert bad.health_at(clock.now) == HEALTHY
    assert bad.stats(clock.now).window_requests == 0
    # One more failure does not add up with the forgotten nine.
    take(mb, [target(mb, "good")]).failure("HTTP 503")
    assert bad.circuit_at(clock.now) == CLOSED
    assert bad.errors == 10  # lifetime total kept for stats


def test_window_is_sliding_not_lifetime() -> None:
    _, clock, mb = failing_pair()
    bad = target(mb, "bad")
    exclude = [target(mb, "good")]
    for _ in range(5):  # 5 failures at t=0
        take(mb, exclude).failure("e")
    clock.advance(40)
    for _ in range(5):  # 5 successes at t=40: 10 in the window, 50% → would trip on an error
        take(mb, exclude).success()
    clock.advance(25)  # t=65: the failures at t=0 left the window
    take(mb, exclude).failure("e")  # 6 in the window, 1 error
    assert bad.circuit_at(clock.now) == CLOSED
    assert bad.stats(clock.now).window_requests == 6


def test_neutral_outcomes_never_trip() -> None:
    _, clock, mb = failing_pair(HealthConfig(min_requests=2))
    bad = target(mb, "bad")
    for _ in range(100):
        take(mb, [target(mb, "good")]).neutral()
    assert bad.circuit_at(clock.now) == CLOSED
    assert bad.requests == 100 and bad.errors == 0
    assert bad.health_at(clock.now) == HEALTHY
    assert bad.in_flight == 0
    # Nor do they dilute the error rate: a client's bad requests cannot hide a failing target.
    assert bad.stats(clock.now).window_requests == 0
    for _ in range(2):
        take(mb, [target(mb, "good")]).failure("HTTP 500")
    assert bad.circuit_at(clock.now) == OPEN


def test_neutral_probe_frees_the_half_open_slot() -> None:
    _, clock, mb = failing_pair(HealthConfig(min_requests=1, cooldown=5))
    good = target(mb, "good")
    take(mb, [good]).failure("boom")
    clock.advance(5)
    probe = take(mb, [good])
    assert mb.acquire([good]) is None
    probe.neutral()  # the client went away: no verdict
    assert probe.target.circuit_at(clock.now) == HALF_OPEN
    second = take(mb, [good])
    assert second.target is probe.target
    second.success()
    assert probe.target.circuit_at(clock.now) == CLOSED


def test_outcome_is_reported_once() -> None:
    _, clock, mb = failing_pair(HealthConfig(min_requests=1))
    lease = take(mb, [target(mb, "good")])
    lease.success()
    lease.failure("late")  # ignored
    lease.neutral()
    t = lease.target
    assert (t.requests, t.errors, t.in_flight, t.last_error) == (1, 0, 0, None)
    assert t.circuit_at(clock.now) == CLOSED


# --- active probes --------------------------------------------------------------------------


def test_probes_are_due_per_distinct_upstream_every_interval() -> None:
    models = {
        "one": model("one", "round_robin", ("p", "x", 1), ("q", "y", 1)),
        "two": model("two", "random", ("p", "x", 1)),  # same upstream as one's first target
    }
    balancers, clock = build(models, HealthConfig(check_interval=30))
    due = balancers.targets_for_probe()
    assert sorted(t.id for t in due) == ["p/x", "q/y"]
    assert balancers.targets_for_probe() == []  # handed out: not again before the interval
    clock.advance(29)
    assert balancers.targets_for_probe() == []
    clock.advance(1)
    assert sorted(t.id for t in balancers.targets_for_probe()) == ["p/x", "q/y"]

    off, _ = build(models, HealthConfig(check_interval=0))
    assert off.targets_for_probe() == []


def test_probe_results_feed_the_same_state() -> None:
    health = HealthConfig(min_requests=3, cooldown=30, check_interval=10)
    models = {
        "one": model("one", "round_robin", ("p", "x", 1)),
        "two": model("two", "round_robin", ("p", "x", 1)),
    }
    balancers, clock = build(models, health)
    one, two = target(bal(balancers, "one"), "p"), target(bal(balancers, "two"), "p")
    [probe_target] = balancers.targets_for_probe()

    # Failed probes on a closed target count as errors, in every model using that upstream.
    for _ in range(3):
        balancers.record_probe(probe_target, False, "connection refused")
        clock.advance(1)
    for t in (one, two):
        assert t.circuit_at(clock.now) == OPEN
        assert t.last_error == "probe: connection refused"
        assert (t.requests, t.errors) == (0, 0)  # probes are not client requests

    # Open and cooling down: the next probe is due when the cooldown ends, not before.
    clock.advance(10)
    assert balancers.targets_for_probe() == []
    assert one.next_probe_in(clock.now) == pytest.approx(30 - 11)
    clock.advance(18)
    assert balancers.targets_for_probe() == []
    clock.advance(1)
    [probe_target] = balancers.targets_for_probe()
    balancers.record_probe(probe_target, True, None)
    for t in (one, two):
        assert t.circuit_at(clock.now) == CLOSED
        assert t.health_at(clock.now) == HEALTHY


def test_good_probe_on_open_target_before_cooldown_changes_nothing() -> None:
    health = HealthConfig(min_requests=1, cooldown=30, check_interval=5)
    balancers, clock = build({"gw": model("gw", "round_robin", ("p", "x", 1))}, health)
    mb = bal(balancers)
    take(mb).failure("HTTP 502")
    t = mb.targets[0]
    balancers.record_probe(t, True, None)
    assert t.circuit_at(clock.now) == OPEN


def test_active_probe_closing_a_half_open_target_while_a_probe_request_runs() -> None:
    health = HealthConfig(min_requests=1, cooldown=5, check_interval=5)
    balancers, clock = build({"gw": model("gw", "round_robin", ("p", "x", 1))}, health)
    mb = bal(balancers)
    take(mb).failure("HTTP 502")
    clock.advance(5)
    probe_request = take(mb)
    balancers.record_probe(probe_request.target, True, None)
    t = probe_request.target
    assert t.circuit_at(clock.now) == CLOSED
    extra = take(mb)  # closed: no longer limited to one request
    probe_request.success()
    extra.success()
    assert t.in_flight == 0 and t.circuit_at(clock.now) == CLOSED


# --- latency and stats ----------------------------------------------------------------------


def test_latency_is_measured_to_first_byte_and_bounded() -> None:
    balancers, clock = build({"gw": model("gw", "round_robin", ("p", "x", 1))})
    mb = bal(balancers)
    for ms in range(1, 101):  # 1..100 ms to the first byte, then a long stream
        lease = take(mb)
        clock.advance(ms / 1000)
        lease.first_byte()
        clock.advance(10.0)
        lease.first_byte()  # only the first call counts
        lease.success()
    stats = mb.targets[0].stats(clock.now)
    assert stats.latency_p50 == pytest.approx(0.050)
    assert stats.latency_p95 == pytest.approx(0.095)
    for _ in range(LATENCY_SAMPLES):  # older samples fall out of the ring
        lease = take(mb)
        clock.advance(0.2)
        lease.success()
    stats = mb.targets[0].stats(clock.now)
    assert stats.latency_p50 == pytest.approx(0.2)
    assert stats.latency_p95 == pytest.approx(0.2)
    assert len(mb.targets[0]._latencies._samples) == LATENCY_SAMPLES


def test_snapshot_contents() -> None:
    health = HealthConfig(min_requests=2, cooldown=30, check_interval=0)
    models = {
        "gw": model(
            "gw", "least_connections", ("a", "m1", 3), ("b", "m2", 1), fallbacks=("other",)
        ),
        "other": model("other", "latency", ("c", "", 1)),
    }
    balancers, clock = build(models, health)
    mb = bal(balancers)
    a, b = mb.targets
    held = take(mb, [b])
    for _ in range(2):
        lease = take(mb, [a])
        clock.advance(0.25)
        lease.failure("HTTP 500: upstream exploded\nsecond line")
    ok = take(mb, [b])
    clock.advance(0.1)
    ok.success()

    snap = balancers.snapshot()
    gw, other = snap.models
    assert (gw.name, gw.strategy, gw.fallbacks, gw.retries) == (
        "gw",
        "least_connections",
        ("other",),
        1,
    )
    ta, tb = gw.targets
    assert (ta.id, ta.provider, ta.upstream_model, ta.weight) == ("a/m1", "a", "m1", 3)
    assert (ta.health, ta.circuit, ta.in_flight, ta.requests, ta.errors) == (
        HEALTHY,
        CLOSED,
        1,
        1,
        0,
    )
    assert ta.latency_p50 == pytest.approx(0.1) and ta.next_probe_in is None
    assert (tb.health, tb.circuit, tb.requests, tb.errors, tb.error_rate) == (
        UNHEALTHY,
        OPEN,
        2,
        2,
        1.0,
    )
    assert tb.next_probe_in == pytest.approx(30.0 - 0.1)
    assert tb.last_error == "HTTP 500: upstream exploded second line"
    assert tb.latency_p50 is None  # failures are not latency samples
    assert other.targets[0].id == "c/other"  # upstream model defaults to the gateway name
    assert other.retries == 0

    data = json.loads(json.dumps(snap.to_dict()))
    assert data["models"][0]["targets"][1]["circuit"] == "open"
    assert data["models"][0]["fallbacks"] == ["other"]
    assert set(data["models"][0]["targets"][0]) == {
        "id",
        "provider",
        "upstream_model",
        "weight",
        "health",
        "circuit",
        "next_probe_in",
        "cooling_for",
        "in_flight",
        "requests",
        "errors",
        "throttles",
        "window_requests",
        "window_errors",
        "error_rate",
        "latency_p50",
        "latency_p95",
        "last_error",
    }
    held.success()


def test_no_secret_in_stats_and_last_error_is_capped() -> None:
    secret = "sk-live-very-secret-value-1234567890"
    config = Config(
        providers={"openai": ProviderConfig(name="openai", api_key=Secret(secret))},
        models={"gw": model("gw", "round_robin", ("openai", "gpt", 1))},
    )
    balancers, _ = build(config.models, config.health)
    mb = bal(balancers)
    take(mb).failure("x" * 1000)
    snap = balancers.snapshot()
    text = json.dumps(snap.to_dict()) + repr(snap) + repr(mb.targets[0])
    assert secret not in text
    last = snap.models[0].targets[0].last_error
    assert last is not None and len(last) == 200


# --- reload -------------------------------------------------------------------------------


def test_reload_keeps_surviving_targets_and_in_flight_leases() -> None:
    balancers, _ = build(three("round_robin"))
    mb = bal(balancers)
    spread(mb, 30)
    a, b, c = mb.targets
    in_flight = take(mb, [b, c])
    assert in_flight.target is a

    new_models = {
        "gw": model("gw", "least_connections", ("a", "m", 5), ("b", "m", 1), ("d", "m", 1)),
        "more": model("more", "random", ("a", "m", 1)),
    }
    reloaded = balancers.reload(new_models, HealthConfig(min_requests=3))
    new_mb = bal(reloaded)
    na, nb, nd = new_mb.targets
    assert na is a and nb is b  # same provider + upstream model: same state
    assert (na.requests, na.weight, na.in_flight) == (10, 5, 1)
    assert nd.requests == 0
    assert bal(reloaded, "more").targets[0] is not a  # another gateway model: its own state
    assert new_mb.strategy == "least_connections"

    in_flight.success()  # the lease taken before the reload lands in the same counters
    assert (na.requests, na.in_flight) == (11, 0)
    snap = reloaded.snapshot()
    assert [t.id for t in snap.models[0].targets] == ["a/m", "b/m", "d/m"]
    assert snap.models[0].targets[0].requests == 11
    # The old set still serves the requests that hold it.
    assert bal(balancers).acquire() is not None


def test_reload_keeps_an_open_circuit_open() -> None:
    clock = FakeClock()
    balancers = Balancers(
        {"gw": model("gw", "round_robin", ("bad", "m", 1), ("good", "m", 1))},
        HealthConfig(min_requests=1),
        clock=clock,
    )
    mb = bal(balancers)
    take(mb, [target(mb, "good")]).failure("down")
    reloaded = balancers.reload(
        {"gw": model("gw", "round_robin", ("bad", "m", 1), ("good", "m", 1))},
        HealthConfig(min_requests=1),
    )
    assert target(bal(reloaded), "bad").circuit_at(clock.now) == OPEN
    assert {take(bal(reloaded)).target.provider for _ in range(4)} == {"good"}


# --- upstream 429: a pause, never a circuit trip ---------------------------------------------


@pytest.mark.parametrize("strategy", sorted(STRATEGY_CLASSES))
def test_a_burst_of_429s_cools_the_target_for_its_retry_after_and_never_opens_the_circuit(
    strategy: str,
) -> None:
    balancers, clock = build(three(strategy))
    mb = bal(balancers)
    a = mb.targets[0]
    for _ in range(50):  # far past min_requests, 100 % "errors" if they counted
        lease = take(mb, [t for t in mb.targets if t is not a])
        assert lease.target is a
        lease.throttled(0.0, "HTTP 429: slow down")
    stats = a.stats(clock())
    assert (stats.circuit, stats.errors, stats.throttles, stats.window_requests) == (
        CLOSED,
        0,
        50,
        0,
    )
    lease = take(mb, [t for t in mb.targets if t is not a])
    lease.throttled(20.0, "HTTP 429: Rate limit reached")
    for _ in range(30):  # skipped while it cools: the other targets serve
        other = take(mb)
        assert other.target is not a
        other.success()
    assert a.stats(clock()).cooling_for == pytest.approx(20.0)
    assert a.stats(clock()).health == DEGRADED
    clock.advance(19.999)
    assert mb.acquire([t for t in mb.targets if t is not a]) is None
    clock.advance(0.001)
    assert take(mb, [t for t in mb.targets if t is not a]).target is a  # exactly that long
    assert a.stats(clock()).cooling_for is None


def test_when_every_target_cools_the_soonest_pause_is_what_the_client_waits_for() -> None:
    balancers, clock = build(three("round_robin"))
    mb = bal(balancers)
    pauses = {"a": 7.0, "b": 3.0, "c": 12.0}
    for _ in range(3):
        lease = take(mb, [t for t in mb.targets if t.provider in _cooling(mb, clock())])
        lease.throttled(pauses[lease.target.provider], "HTTP 429")
    assert mb.acquire() is None
    assert mb.soonest_recovery() == pytest.approx(3.0)
    cooling = mb.cooling_target()
    assert cooling is not None and cooling.provider == "b"


def test_an_open_circuit_that_recovers_first_is_a_503_not_the_cooling_429() -> None:
    health = HealthConfig(min_requests=1, cooldown=2.0, check_interval=0.0)
    balancers, _ = build({"gw": model("gw", "round_robin", ("a", "m", 1), ("b", "m", 1))}, health)
    mb = bal(balancers)
    a, b = mb.targets
    take(mb, [b]).failure("HTTP 500")  # a opens for 2 s
    take(mb, [a]).throttled(60.0, "HTTP 429")  # b cools for 60 s
    assert mb.acquire() is None
    assert mb.soonest_recovery() == pytest.approx(2.0)
    assert mb.cooling_target() is None


def test_a_pause_is_capped_at_max_cooldown() -> None:
    balancers, clock = build(three("random"))
    mb = bal(balancers)
    lease = take(mb)
    lease.throttled(86400.0, "HTTP 429")
    assert lease.target.stats(clock()).cooling_for == pytest.approx(HEALTH.max_cooldown)


def test_a_half_open_probe_answered_429_frees_the_probe_slot_after_the_pause() -> None:
    health = HealthConfig(min_requests=1, cooldown=1.0, check_interval=0.0)
    balancers, clock = build({"gw": model("gw", "round_robin", ("a", "m", 1))}, health)
    mb = bal(balancers)
    take(mb).failure("HTTP 500")
    clock.advance(1.0)
    probe = take(mb)
    probe.throttled(5.0, "HTTP 429")
    assert mb.acquire() is None
    clock.advance(5.0)
    probe = take(mb)  # the next request after the pause is the probe
    probe.success()
    assert probe.target.stats(clock()).circuit == CLOSED


def _cooling(mb: ModelBalancer, now: float) -> set[str]:
    return {t.provider for t in mb.targets if t.cooling_until > now}
