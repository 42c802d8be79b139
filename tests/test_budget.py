"""Money budgets at the library level: the prices of a config (`Pricing`, the worst-case
reservation price), and the quota manager's money half over every store (memory, sqlite on a
real file, redis on a real redis-server): reserve, refuse, settle to the real cost, overrides,
status, reset, and concurrency that never overshoots. The pipeline and the CLI are in
tests/test_budget_e2e.py."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from aigw.config import Config, ModelConfig, PriceConfig, QuotaConfig, StateConfig, TargetConfig
from aigw.errors import QuotaExceededError
from aigw.exchange import Usage
from aigw.limits.budget import Pricing, reservation_prices
from aigw.limits.quota import QuotaManager
from aigw.pricing import Price, PriceTable, cost_nanos, estimate_nanos, to_nanos
from aigw.state import StateStore, open_store
from aigw.state.base import Override
from aigw.state.redis import RedisStore
from tests.clock import FakeClock as Clock
from tests.redis_server import RedisServer

STORES = ["memory", "sqlite", "redis"]
NOW = datetime.fromisoformat("2024-03-10T12:00:00+00:00").timestamp()
USD = 10**9  # nano-dollars in a dollar

Factory = Callable[..., Awaitable[QuotaManager]]


@pytest.fixture(params=STORES)
async def make_manager(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Factory]:
    """`await make_manager(**quota)`: a manager over a fresh store of the backend; every call
    opens another store on the same file / redis (another instance)."""
    stores: list[StateStore] = []
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None

    async def factory(**quota: Any) -> QuotaManager:
        state = StateConfig(
            backend=request.param, path=str(tmp_path / "state.db"), url=url, flush_interval=3600.0
        )
        store = await open_store(state)
        stores.append(store)
        return QuotaManager(store, QuotaConfig(**quota), clock=Clock(NOW))

    yield factory
    for store in stores:
        await store.close()


def config(**kw: Any) -> Config:
    """Models `a` (targets a1 and a2, fallback b) and `b` (target b1), priced by `prices`."""
    models = {
        "a": ModelConfig(
            name="a",
            targets=(
                TargetConfig(provider="p", model="a1"),
                TargetConfig(provider="p", model="a2"),
            ),
            fallbacks=("b",),
        ),
        "b": ModelConfig(name="b", targets=(TargetConfig(provider="p", model="b1"),)),
        "free": ModelConfig(name="free", targets=(TargetConfig(provider="p", model="local-llm"),)),
    }
    return Config(models=models, **kw)


def price(input: str, output: str, **kw: str) -> PriceConfig:
    return PriceConfig(
        input=Decimal(input), output=Decimal(output), **{k: Decimal(v) for k, v in kw.items()}
    )


# --- prices of a config ----------------------------------------------------------------------


def test_the_reservation_price_is_the_worst_of_every_target_and_fallback_per_kind() -> None:
    pricing = Pricing(
        config(
            prices={
                "a1": price("1", "10"),
                "a2": price("2", "4", cache_write="2.5"),
                "b1": price("0.5", "12"),
            }
        )
    )
    # prompt: the highest of any prompt price (a2's cache writes), output: b1's (a fallback)
    assert pricing.reservation_price("a") == Price.of("2.5", "12")
    assert pricing.reservation_price("b") == Price.of("0.5", "12")
    assert pricing.reservation_price("free") is None  # no target priced
    assert pricing.estimate("a", 100, 50) == estimate_nanos(100, 50, Price.of("2.5", "12"))
    assert pricing.estimate("a", 100, 50) == (100 * 2500 + 50 * 12000)
    assert pricing.estimate("free", 10**6, 10**6) == 0
    assert pricing.estimate("nobody-knows", 10, 10) == 0


def test_a_reservation_covers_whichever_target_answers() -> None:
    """Whatever target of `a` answers and however its prompt splits into cached and written
    tokens, the real cost never passes the reservation of the same token counts."""
    prices = {"a1": price("3", "15", cached_input="0.3", cache_write="3.75"), "a2": price("1", "4")}
    cfg = config(prices=prices)
    pricing = Pricing(cfg)
    table = PriceTable.build(cfg.prices)
    held = pricing.estimate("a", 1000, 500)
    for upstream in ("a1", "a2"):
        up = table.lookup(upstream)
        assert up is not None
        for cached, written in ((0, 0), (1000, 0), (0, 1000), (300, 700)):
            used = Usage(1000, 500, 1500, cached_tokens=cached, cache_write_tokens=written)
            assert cost_nanos(used, up) <= held


def test_shipped_prices_are_used_and_config_prices_replace_them_on_reload() -> None:
    cfg = config(prices={})
    cfg = replace(
        cfg, models={"m": ModelConfig(name="m", targets=(TargetConfig("p", "gpt-4o-mini"),))}
    )
    pricing = Pricing(cfg)
    shipped = pricing.lookup("gpt-4o-mini")
    assert shipped is not None  # from aigw/prices/default.json
    usage = Usage(1000, 1000, 2000)
    assert pricing.cost("gpt-4o-mini", usage) == cost_nanos(usage, shipped)
    assert pricing.cost("gpt-4o-mini-2024-07-18", usage) == cost_nanos(usage, shipped)
    assert pricing.cost("no-such-model", usage) is None
    assert pricing.cost(None, usage) is None

    pricing.reload(replace(cfg, prices={"gpt-4o-mini": price("1", "1")}))
    assert pricing.cost("gpt-4o-mini", usage) == 2000 * 1000
    assert pricing.reservation_price("m") == Price.of("1", "1")


def test_reservation_prices_leave_out_unknown_fallbacks() -> None:
    table = PriceTable({"x": Price.of("1", "2")})
    models = {
        "m": ModelConfig(name="m", targets=(TargetConfig("p", "x"),), fallbacks=("gone",)),
    }
    assert reservation_prices(models, table) == {"m": Price.of("1", "2")}


# --- the money half of the quota manager, over every store -------------------------------------


async def test_a_budget_refuses_once_spent_and_settles_to_the_real_cost(
    make_manager: Factory,
) -> None:
    qm = await make_manager(tenants_usd={"team-a": Decimal("1")})
    held = await qm.reserve("team-a", 100, nanos=USD // 2)
    assert held.nanos == USD // 2
    [status] = await qm.status("team-a")
    assert status.budget_usd == 1.0 and status.cost_usd == 0.0
    assert status.reserved == 100  # a tenant with a budget holds its tokens too

    # In flight: half the budget is held, so 0.6 does not fit now, but may after a retry.
    with pytest.raises(QuotaExceededError) as refused:
        await qm.reserve("team-a", 10, nanos=USD * 6 // 10)
    assert refused.value.retryable
    assert "has spent $0.00 of its $1.00 daily budget" in refused.value.message
    assert "(+$0.50 reserved by requests in flight)" in refused.value.message
    assert "may cost up to $0.60" in refused.value.message

    await qm.commit(held, Usage(10, 90, 100), cost_nanos=USD * 4 // 10)  # really cost $0.40
    [status] = await qm.status("team-a")
    assert (status.cost_usd, status.reserved, status.total_tokens) == (0.4, 0, 100)
    ok = await qm.reserve("team-a", 10, nanos=USD * 6 // 10)  # exactly the rest
    await qm.commit(ok, Usage(5, 5, 10), cost_nanos=USD * 6 // 10)

    with pytest.raises(QuotaExceededError) as spent:
        await qm.reserve("team-a", 1, nanos=1)
    assert not spent.value.retryable  # nothing in flight: it will not fit before the reset
    assert "has spent $1.00 of its $1.00 daily budget" in spent.value.message
    assert "It resets at 2024-03-11T00:00:00Z." in spent.value.message
    assert spent.value.status == 429


async def test_a_spent_budget_refuses_even_a_request_that_costs_nothing(
    make_manager: Factory,
) -> None:
    """A tenant with a budget holds at least a nano-dollar: a request on an unpriced model
    (0 to reserve) is still refused once the budget is spent to the last nano-dollar."""
    qm = await make_manager(default_usd=Decimal("0.000000002"))
    free = await qm.reserve("t", 10, nanos=0)
    assert free.nanos == 1
    await qm.commit(free, Usage(1, 1, 2), cost_nanos=2)
    with pytest.raises(QuotaExceededError):
        await qm.reserve("t", 0, nanos=0)


async def test_either_limit_refuses_and_a_refusal_takes_nothing(make_manager: Factory) -> None:
    qm = await make_manager(tenants={"t": 1000}, tenants_usd={"t": Decimal("1")})
    with pytest.raises(QuotaExceededError) as by_tokens:
        await qm.reserve("t", 1001, nanos=1)
    assert "token daily quota" in by_tokens.value.message
    with pytest.raises(QuotaExceededError) as by_money:
        await qm.reserve("t", 1, nanos=USD + 1)
    assert "budget" in by_money.value.message and not by_money.value.retryable
    [status] = await qm.status("t")
    assert (status.reserved, status.cost_usd, status.total_tokens) == (0, 0.0, 0)
    assert (await qm.store.get_usage([("t", qm.window("daily").key)]))[0].reserved_nanos == 0


async def test_without_a_budget_nothing_is_held_and_the_cost_is_still_recorded(
    make_manager: Factory,
) -> None:
    qm = await make_manager()
    r = await qm.reserve("t", 10**9, nanos=10**15)
    assert (r.tokens, r.nanos) == (0, 0)
    await qm.commit(r, Usage(10, 10, 20), cost_nanos=1234)
    [status] = await qm.status("t")
    assert status.budget_usd == 0.0 and status.cost_usd == 0.000001234
    assert status.budget_source == "config"


async def test_release_gives_the_money_back(make_manager: Factory) -> None:
    qm = await make_manager(default_usd=Decimal("1"))
    r = await qm.reserve("t", 10, nanos=USD)
    await qm.release(r)
    await qm.commit(await qm.reserve("t", 10, nanos=USD), Usage(1, 1, 2), cost_nanos=USD)


async def test_a_runtime_budget_wins_and_keeps_the_token_quota(make_manager: Factory) -> None:
    qm = await make_manager(tenants={"t": 500}, default_usd=Decimal("5"))
    await qm.set_limit("t", 700, "monthly")
    await qm.set_budget("t", 2 * USD)
    assert qm.store.overrides["t"] == Override(700, "monthly", 2 * USD)
    assert qm.policy("t") == (700, "monthly", "override")
    assert qm.budget("t") == (2 * USD, "override")
    await qm.set_limit("t", 800)  # the budget stays
    assert qm.store.overrides["t"] == Override(800, "monthly", 2 * USD)

    # A budget override alone leaves the tokens to the config; 0 means no budget at all.
    await qm.set_budget("u", 0, "hourly")
    assert qm.policy("u") == (0, "hourly", "config")
    assert qm.budget("u") == (0, "override")
    [status] = await qm.status("u")
    assert (status.budget_usd, status.budget_source, status.source) == (0.0, "override", "config")
    r = await qm.reserve("u", 10, nanos=10**15)  # way above the configured $5: no budget
    assert r.nanos == 0

    # Another instance on the same store sees it (sqlite: after reopening the file).
    other = await make_manager(default_usd=Decimal("5"))
    await other.store.refresh_overrides()
    if other.store.name != "memory":
        assert other.budget("t") == (2 * USD, "override")
        assert other.policy("t") == (800, "monthly", "override")


@pytest.mark.parametrize("bad", [-1, True, 10**18 + 1])
async def test_a_bad_budget_is_refused(make_manager: Factory, bad: int) -> None:
    qm = await make_manager()
    with pytest.raises(ValueError):
        await qm.set_budget("t", bad)
    with pytest.raises(ValueError):
        await qm.set_budget("t", 5, "yearly")


async def test_reset_zeroes_the_spending(make_manager: Factory) -> None:
    qm = await make_manager(default_usd=Decimal("1"))
    await qm.commit(await qm.reserve("t", 10, nanos=USD), Usage(1, 1, 2), cost_nanos=USD)
    await qm.reset("t")
    [status] = await qm.status("t")
    assert status.cost_usd == 0.0
    await qm.reserve("t", 10, nanos=USD)


async def test_status_lists_tenants_with_a_configured_budget(make_manager: Factory) -> None:
    qm = await make_manager(tenants_usd={"rich": Decimal("1000.5")})
    [status] = await qm.status()
    assert (status.tenant, status.budget_usd, status.limit) == ("rich", 1000.5, 0)
    await qm.reset("rich")  # known by its budget: not a typo


@pytest.mark.parametrize("held", [1, 7_000_000])
async def test_200_concurrent_reservations_never_pass_the_budget(
    make_manager: Factory, held: int
) -> None:
    """200 requests at once, each holding `held` nano-dollars and really costing a little
    less; money already spent: spent + reserved never passes the budget, and what was spent
    in the end is within it (overshoot 0)."""
    budget = 100 * 7_000_000
    qm = await make_manager(tenants_usd={"t": Decimal(budget) / USD})
    await qm.commit(await qm.reserve("t", 0), Usage(1, 1, 2), cost_nanos=held * 3)
    key = ("t", qm.window("daily").key)
    peaks: list[int] = []

    async def one() -> bool:
        try:
            r = await qm.reserve("t", 10, nanos=held)
        except QuotaExceededError:
            return False
        [counters] = await qm.store.get_usage([key])
        peaks.append(counters.cost_nanos + counters.reserved_nanos)
        await asyncio.sleep(0)
        await qm.commit(r, Usage(5, 5, 10), cost_nanos=held - held // 10)
        return True

    results = await asyncio.gather(*(one() for _ in range(200)))
    [status] = await qm.status("t")
    spent = to_nanos(Decimal(repr(status.cost_usd)))
    assert spent <= budget and max(peaks) <= budget
    assert sum(results) >= min(200, (budget - held * 3) // held)  # the budget was used up


async def test_two_instances_on_one_redis_share_one_budget(redis_url: str) -> None:
    """Two stores (two gateway instances) reserving concurrently against one budget."""
    state = StateConfig(backend="redis", url=redis_url)
    stores = [await open_store(state) for _ in range(2)]
    try:
        budget = 50 * USD // 100
        managers = [
            QuotaManager(s, QuotaConfig(tenants_usd={"t": Decimal("0.5")}), clock=Clock(NOW))
            for s in stores
        ]

        async def one(qm: QuotaManager) -> int:
            try:
                r = await qm.reserve("t", 10, nanos=USD // 100)
            except QuotaExceededError:
                return 0
            await qm.commit(r, Usage(5, 5, 10), cost_nanos=USD // 100)
            return 1

        admitted = await asyncio.gather(*(one(managers[i % 2]) for i in range(200)))
        [status] = await managers[1].status("t")
        assert sum(admitted) == 50
        assert to_nanos(Decimal(repr(status.cost_usd))) == budget
    finally:
        for store in stores:
            await store.close()


# --- sqlite: money survives, old files are brought up to date ------------------------------------


async def test_sqlite_keeps_the_spending_and_the_budget_override(tmp_path: Path) -> None:
    state = StateConfig(backend="sqlite", path=str(tmp_path / "s.db"), flush_interval=3600.0)
    store = await open_store(state)
    qm = QuotaManager(store, QuotaConfig(default_usd=Decimal("3")), clock=Clock(NOW))
    await qm.set_budget("t", 2 * USD)
    await qm.commit(await qm.reserve("t", 10, nanos=USD), Usage(1, 1, 2), cost_nanos=123_456)
    await store.close()

    again = await open_store(state)
    try:
        qm = QuotaManager(again, QuotaConfig(default_usd=Decimal("3")), clock=Clock(NOW))
        [status] = await qm.status("t")
        assert (status.cost_usd, status.budget_usd, status.budget_source) == (
            0.000123456,
            2.0,
            "override",
        )
    finally:
        await again.close()


async def test_a_state_file_of_the_previous_version_opens_with_everything_kept(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the schema aigw wrote before money existed
        conn.executescript(
            """
            CREATE TABLE usage (tenant TEXT NOT NULL, period TEXT NOT NULL,
                input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
                total_tokens INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (tenant, period)
            ) WITHOUT ROWID;
            CREATE TABLE overrides (tenant TEXT PRIMARY KEY, tokens INTEGER NOT NULL, period TEXT
            ) WITHOUT ROWID;
            INSERT INTO usage VALUES ('t', 'daily:2024-03-10', 10, 20, 30);
            INSERT INTO overrides VALUES ('t', 500, 'daily');
            PRAGMA user_version=1;
            """
        )
    state = StateConfig(backend="sqlite", path=str(path), flush_interval=3600.0)
    store = await open_store(state)
    try:
        assert store.overrides == {"t": Override(500, "daily")}
        qm = QuotaManager(store, QuotaConfig(), clock=Clock(NOW))
        [status] = await qm.status("t")
        assert (status.total_tokens, status.limit, status.cost_usd) == (30, 500, 0.0)
        await qm.set_budget("t", USD)
        await qm.commit(await qm.reserve("t", 1, nanos=5), Usage(1, 0, 1), cost_nanos=5)
        await store.flush()
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (2,)
        assert conn.execute("SELECT * FROM overrides").fetchall() == [("t", 500, "daily", USD)]
        assert conn.execute("SELECT total_tokens, cost_nanos FROM usage").fetchall() == [(31, 5)]


# --- redis outages: money is enforced locally and reconciled -----------------------------------


async def test_fail_open_enforces_the_budget_locally_and_reconciles_the_spending(
    redis_server: RedisServer,
) -> None:
    store = RedisStore(redis_server.url, recovery_interval=0.02)
    await store.open()
    try:
        qm = QuotaManager(store, QuotaConfig(default_usd=Decimal("1")), clock=Clock(NOW))
        await qm.commit(await qm.reserve("t", 10, nanos=USD // 10), Usage(1, 1, 2), USD // 10)
        in_flight = await qm.reserve("t", 10, nanos=USD // 10)  # held while Redis dies

        redis_server.kill()
        for _ in range(5):  # served, counted locally
            await qm.commit(await qm.reserve("t", 10, nanos=USD // 10), Usage(1, 1, 2), USD // 10)
        assert not store.available
        await qm.commit(in_flight, Usage(1, 1, 2), USD // 20)
        # From the last spending seen in Redis ($0.10 spent + $0.10 held) plus what was counted
        # since ($0.50 + $0.05): $0.25 is left, and not a nano-dollar more.
        await qm.release(await qm.reserve("t", 1, nanos=USD // 4 - USD // 10))
        with pytest.raises(QuotaExceededError, match="budget"):
            await qm.reserve("t", 1, nanos=USD // 4 + 1)

        redis_server.start()
        await wait_for(lambda: store.available)
        [status] = await qm.status("t")
        assert nanos_of(status.cost_usd) == USD // 10 + 5 * USD // 10 + USD // 20
        key = ("t", qm.window("daily").key)
        assert (await store.get_usage([key]))[0].reserved_nanos == 0
    finally:
        await store.close()


def nanos_of(usd: float) -> int:
    return to_nanos(Decimal(repr(usd)))


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for the store's recovery task to reach Redis again."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)
