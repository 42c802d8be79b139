"""Money budgets end to end: real HTTP into the gateway, a real upstream on loopback priced with
`prices:`, the `openai` SDK, the real CLI, sqlite files and a real redis-server.

- a `--usd` budget refuses with 429 `insufficient_quota` once spent; 200 concurrent requests
  never spend more than the budget (the overshoot is measured: spent - budget, and the peak of
  spent + reserved sampled while they run; both must be <= 0), in memory, in sqlite, and with
  two `aigw serve` daemons on one redis;
- streams settle to their real cost, abandoned ones to what was delivered, an answer without
  usage to its whole reservation; a stream past its money reservation reserves more or is cut;
- the cost and unpriced metrics, cached tokens priced at their own price, a reload that
  changes prices, and `aigw quota set TENANT AMOUNT --usd` / `quota show` on a running gateway.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from aigw.config import MetricsConfig, PriceConfig, QuotaConfig, StateConfig
from aigw.exchange import Usage
from aigw.limits.quota import QuotaManager
from aigw.pricing import Price, cost_nanos, estimate_nanos, to_nanos
from tests.conftest import Daemon, RunningGateway, _short_tmp, cli_env, make_config, start_daemon
from tests.upstream import WORDS, Upstream

USD = 10**9
MESSAGES = [{"role": "user", "content": "hi"}]
BODY = {"model": "gpt-test", "messages": MESSAGES, "max_tokens": 100}
# $1,000 / $2,000 per million tokens: a token costs a tenth of a cent, and any overshoot shows.
PRICE = Price.of("1000", "2000")
PRICES = {"up-model": PriceConfig(input=Decimal("1000"), output=Decimal("2000"))}
#: What BODY reserves (prompt estimate 8, max_tokens 100) and costs with 100 words (7 + 100).
HELD = estimate_nanos(8, 100, PRICE)
COST_100 = cost_nanos(Usage(7, 100, 107), PRICE)


def nanos(usd: float) -> int:
    return to_nanos(Decimal(repr(usd)))


def sdk(url: str, **kw: Any) -> openai.AsyncOpenAI:
    kw.setdefault("max_retries", 0)
    return openai.AsyncOpenAI(base_url=url, api_key=kw.pop("api_key", "unused"), **kw)


def quota_of(gw: RunningGateway) -> QuotaManager:
    limits = gw.gateway.limits
    assert limits is not None
    return limits.quota


async def settled_cost(qm: QuotaManager, tenant: str, timeout: float = 5.0) -> int:
    """The tenant's spending once nothing is reserved any more, in nano-dollars."""
    deadline = time.monotonic() + timeout
    while True:
        [status] = await qm.status(tenant)
        key = (tenant, qm.window(status.period).key)
        [counters] = await qm.store.get_usage([key])
        if counters.reserved_nanos == 0 and counters.reserved == 0:
            return counters.cost_nanos
        assert time.monotonic() < deadline, f"never settled: {counters}"
        await asyncio.sleep(0.01)


def budget_config(
    upstream: Upstream, sock: Path, *, usd: str, state: StateConfig | None = None, **kw: Any
) -> Any:
    quota = kw.pop("quota", QuotaConfig(tenants_usd={"team-a": Decimal(usd)}, period="never"))
    return make_config(
        {"up": upstream.url},
        sock=sock,
        quota=quota,
        prices=kw.pop("prices", PRICES),
        state=state or StateConfig(backend="memory"),
        **kw,
    )


# --- 200 concurrent requests never overshoot --------------------------------------------------


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_200_concurrent_requests_never_spend_past_the_budget(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, tmp_path: Path, backend: str
) -> None:
    upstream.behaviour.words = ["w"] * 100  # costs just under what is reserved
    upstream.behaviour.delay = 0.05  # all 200 are in flight before the first one settles
    budget = 10 * USD
    state = StateConfig(backend=backend, path=str(tmp_path / "state.db"))
    gw = await start_gateway(budget_config(upstream, sock_dir, usd="10", state=state))
    qm = quota_of(gw)
    # Some of the budget is spent already.
    spent_before = 3 * COST_100
    await qm.commit(await qm.reserve("team-a", 0), Usage(21, 300, 321), spent_before)
    key = ("team-a", "never")

    stop = asyncio.Event()
    peaks: list[int] = []

    async def watch() -> None:  # on the gateway's own loop, while the requests run
        while not stop.is_set():
            [counters] = await qm.store.get_usage([key])
            peaks.append(counters.cost_nanos + counters.reserved_nanos)
            await asyncio.sleep(0.002)

    async def one(session: aiohttp.ClientSession) -> tuple[int, dict[str, str], Any]:
        async with session.post(
            gw.v1 + "/chat/completions", json=BODY, headers={"X-Aigw-Tenant": "team-a"}
        ) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.json()

    watcher = asyncio.create_task(watch())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        results = await asyncio.gather(*(one(session) for _ in range(200)))
    stop.set()
    await watcher

    ok = [data for status, _, data in results if status == 200]
    refused = [(headers, data) for status, headers, data in results if status == 429]
    assert len(ok) + len(refused) == 200
    for _, data in refused:
        assert data["error"]["code"] == "insufficient_quota"
        assert "budget" in data["error"]["message"]
    spent = await settled_cost(qm, "team-a")
    assert spent == spent_before + len(ok) * COST_100  # each answer at its real cost
    overshoot, peak_overshoot = spent - budget, max(peaks) - budget
    print(f"\n{backend}: {len(ok)} admitted, overshoot {overshoot} n$, peak {peak_overshoot} n$")
    assert overshoot <= 0 and peak_overshoot <= 0
    # The budget was used up: what is left cannot hold one more request.
    assert budget - spent < HELD
    assert len(ok) == (budget - spent_before) // HELD  # admitted on reservations, not costs
    # Once it is spent, the refusal says so and tells the SDKs not to retry.
    async with aiohttp.ClientSession() as session:
        status, headers, data = await one(session)
    assert status == 429 and headers["x-should-retry"] == "false"
    assert (
        "has spent $" in data["error"]["message"] and "does not reset" in data["error"]["message"]
    )


# --- the SDK, and the CLI on a running gateway ---------------------------------------------------


async def test_openai_sdk_gets_insufficient_quota_once_the_budget_is_spent(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    upstream.behaviour.words = ["w"] * 100
    gw = await start_gateway(budget_config(upstream, sock_dir, usd=str(Decimal(COST_100) / USD)))
    attempts: list[str] = []

    async def count(request: Any) -> None:
        attempts.append(request.url.path)

    http_client = openai.DefaultAsyncHttpxClient(event_hooks={"request": [count]})
    # The SDK's own retries stay on: `x-should-retry: false` must stop them.
    client = openai.AsyncOpenAI(
        base_url=gw.v1,
        api_key="unused",
        http_client=http_client,
        default_headers={"X-Aigw-Tenant": "team-a"},
    )
    # The budget holds exactly one answer's cost, not its reservation: the first is refused.
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model="gpt-test", messages=MESSAGES, max_tokens=100)
    assert info.value.code == "insufficient_quota" and attempts == ["/v1/chat/completions"]
    done = await client.chat.completions.create(model="gpt-test", messages=MESSAGES, max_tokens=99)
    assert done.usage is not None and done.usage.completion_tokens == 99
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model="gpt-test", messages=MESSAGES, max_tokens=1)
    assert info.value.response.headers["x-should-retry"] == "false"
    assert "has spent $0.205" in str(info.value.message)
    await client.close()
    assert await settled_cost(quota_of(gw), "team-a") == cost_nanos(Usage(7, 99, 106), PRICE)


async def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "aigw", *args],
        capture_output=True,
        text=True,
        env=cli_env({"COLUMNS": "200"}),
        timeout=30,
    )


async def test_quota_set_usd_and_show_on_a_running_gateway(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, tmp_path: Path
) -> None:
    state = StateConfig(backend="sqlite", path=str(tmp_path / "state.db"))
    config = budget_config(
        upstream, sock_dir, usd="0", state=state, quota=QuotaConfig(default=100_000)
    )
    gw = await start_gateway(config)
    sock = ("--admin-socket", str(sock_dir / "admin.sock"))
    result = await cli("quota", "set", "team-a", "$1,000.50", "--usd", "--period", "monthly", *sock)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Budget of team-a set to $1,000.50 per monthly period."

    client = sdk(gw.v1, default_headers={"X-Aigw-Tenant": "team-a"})
    await client.chat.completions.create(model="gpt-test", messages=MESSAGES, max_tokens=100)
    await client.close()
    spent = cost_nanos(Usage(7, len(WORDS), 0), PRICE)  # the upstream's words

    shown = await cli("quota", "show", "--json", *sock)
    assert shown.returncode == 0, shown.stderr
    [team] = json.loads(shown.stdout)["tenants"]
    assert (team["cost_usd"], team["budget_usd"], team["budget_source"]) == (
        spent / USD,
        1000.5,
        "override",
    )
    assert (team["limit"], team["source"], team["period"]) == (100_000, "config", "monthly")

    table = await cli("quota", "show", *sock)
    assert table.returncode == 0, table.stderr
    header = next(line for line in table.stdout.splitlines() if "Tenant" in line).split()
    assert header[-5:] == ["Budget", "Spent", "Period", "Next", "reset"]
    assert "Cost" in header
    [row] = [line for line in table.stdout.splitlines() if line.strip().startswith("team-a")]
    assert "$0.0310" in row and "$1,000.50*" in row and "100,000" in row

    result = await cli("quota", "set", "team-a", "0", "--usd", *sock)  # no budget any more
    assert result.stdout.strip() == "Budget of team-a set to no money budget."
    for bad, reason in (("-5", "cannot be negative"), ("1e3", "like 20 or 20.50"),
                        ("0.0000000001", "at most 9 decimals")):  # fmt: skip
        result = await cli("quota", "set", "team-a", bad, "--usd", *sock)
        assert result.returncode == 2 and reason in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    # A wrong body on the admin socket is one line of JSON, not a traceback.
    from aigw.admin_client import AdminClient
    from aigw.errors import AdminError

    admin = AdminClient(sock_dir / "admin.sock")
    for body, message in (
        ({"tokens": 5, "usd": "5"}, "either tokens or usd"),
        ({"usd": 1.5}, "decimal string"),
        ({"usd": "x"}, "like 20 or 20.50"),
        ({"dollars": "5"}, "unknown field 'dollars'"),
    ):
        with pytest.raises(AdminError, match=message):
            await asyncio.to_thread(admin.post_json, "/quota/team-a", body)


# --- streams, abandoned streams, answers without usage -------------------------------------------


async def test_a_stream_settles_to_its_real_cost(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    upstream.behaviour.words = ["w"] * 40
    gw = await start_gateway(budget_config(upstream, sock_dir, usd="100"))
    client = sdk(gw.v1, default_headers={"X-Aigw-Tenant": "team-a"})
    chunks = [
        c
        async for c in await client.chat.completions.create(
            model="gpt-test", messages=MESSAGES, max_tokens=100, stream=True
        )
    ]
    await client.close()
    assert all(c.usage is None for c in chunks)  # the gateway asked for usage, and removed it
    assert await settled_cost(quota_of(gw), "team-a") == cost_nanos(Usage(7, 40, 47), PRICE)


async def test_an_abandoned_stream_pays_for_what_was_delivered(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    upstream.behaviour.words = [f"w{i}" for i in range(60)]
    upstream.behaviour.chunk_delay = 0.02
    gw = await start_gateway(budget_config(upstream, sock_dir, usd="100"))
    qm = quota_of(gw)
    body = {**BODY, "stream": True}
    received = 0
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            gw.v1 + "/chat/completions", json=body, headers={"X-Aigw-Tenant": "team-a"}
        )
        assert resp.status == 200
        [counters] = await qm.store.get_usage([("team-a", "never")])
        assert counters.reserved_nanos == HELD  # held while it streams
        while received < 20:
            event = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5.0)
            payload = json.loads(event.removeprefix(b"data: "))
            received += bool(payload["choices"] and payload["choices"][0]["delta"].get("content"))
        resp.close()
    await asyncio.wait_for(upstream.disconnected.wait(), timeout=2.0)
    spent = await settled_cost(qm, "team-a")
    [status] = await qm.status("team-a")
    # The prompt by the estimator, a token per content chunk delivered, at the upstream's price.
    assert status.input_tokens == 8 and received <= status.output_tokens < 60
    assert spent == cost_nanos(Usage(8, status.output_tokens, 0), PRICE)
    assert 0 < spent < HELD


@pytest.fixture
async def no_usage_upstream() -> AsyncIterator[str]:
    """An OpenAI-compatible upstream whose answers carry no usage (some servers omit it)."""

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "hi"},
                        "finish_reason": "stop",
                    }
                ],
            }
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/v1"
    await runner.cleanup()


@pytest.mark.parametrize("budgeted", [True, False])
async def test_an_answer_without_usage_costs_its_whole_reservation(
    no_usage_upstream: str, start_gateway: Any, sock_dir: Path, budgeted: bool
) -> None:
    quota = QuotaConfig(tenants_usd={"team-a": Decimal("100")} if budgeted else {})
    config = make_config({"up": no_usage_upstream}, sock=sock_dir, quota=quota, prices=PRICES)
    gw = await start_gateway(config)
    client = sdk(gw.v1, default_headers={"X-Aigw-Tenant": "team-a"})
    await client.chat.completions.create(model="gpt-test", messages=MESSAGES, max_tokens=100)
    await client.close()
    [status] = await quota_of(gw).status("team-a")
    assert nanos(status.cost_usd) == HELD  # never nothing
    limits = gw.gateway.limits
    assert limits is not None and limits.history.rows()[0].cost_nanos == HELD


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_a_stream_past_its_money_reservation_is_cut_when_the_budget_is_spent(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, tmp_path: Path, backend: str
) -> None:
    """No max_tokens, an upstream that goes on and on, a money budget and no token quota: the
    stream reserves more money as it runs past its reservation, and is cut in-band when the
    budget has no more; what was delivered is paid for and stays within the budget."""
    budget = cost_nanos(Usage(8, 400, 0), PRICE)  # room for about 400 output tokens
    quota = QuotaConfig(
        tenants_usd={"team-a": Decimal(budget) / USD}, default_max_tokens=50, period="never"
    )
    state = StateConfig(backend=backend, path=str(tmp_path / "state.db"))
    gw = await start_gateway(budget_config(upstream, sock_dir, usd="0", quota=quota, state=state))
    upstream.behaviour.words = ["w"] * 2000
    client = sdk(gw.v1, default_headers={"X-Aigw-Tenant": "team-a"})
    seen = 0
    stream = await client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            seen += bool(chunk.choices and chunk.choices[0].delta.content)
    assert 400 - 2 * 16 - 16 < seen < 400
    spent = await settled_cost(quota_of(gw), "team-a")
    assert cost_nanos(Usage(8, seen, 0), PRICE) <= spent <= budget
    with pytest.raises(openai.RateLimitError):  # the next request finds the budget spent
        await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    await client.close()


async def test_a_long_stream_within_the_budget_is_not_cut(
    upstream: Upstream, start_gateway: Any, sock_dir: Path
) -> None:
    quota = QuotaConfig(tenants_usd={"team-a": Decimal("100")}, default_max_tokens=50)
    gw = await start_gateway(budget_config(upstream, sock_dir, usd="0", quota=quota))
    upstream.behaviour.words = ["w"] * 1500  # 30 times what was reserved
    client = sdk(gw.v1, default_headers={"X-Aigw-Tenant": "team-a"})
    text = [
        c.choices[0].delta.content
        async for c in await client.chat.completions.create(
            model="gpt-test", messages=MESSAGES, stream=True
        )
        if c.choices and c.choices[0].delta.content
    ]
    await client.close()
    assert len(text) == 1500
    qm = quota_of(gw)
    assert await settled_cost(qm, "team-a") == cost_nanos(Usage(7, 1500, 0), PRICE)


# --- metrics, cached tokens, reloads ----------------------------------------------------------


@pytest.fixture
async def cached_upstream() -> AsyncIterator[str]:
    """An upstream that answers 1000 prompt tokens, 800 of them from its prompt cache."""

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "ok"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": 1000,
                    "completion_tokens": 10,
                    "total_tokens": 1010,
                    "prompt_tokens_details": {"cached_tokens": 800},
                },
            }
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/v1"
    await runner.cleanup()


async def scrape(gw: RunningGateway) -> str:
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/metrics") as r:
        return await r.text()


async def test_metrics_count_cost_cached_tokens_and_unpriced_requests(
    cached_upstream: str, start_gateway: Any, sock_dir: Path
) -> None:
    prices = {"up-model": PriceConfig(input=Decimal("2"), cached_input=Decimal("0.5"),
                                      output=Decimal("8"))}  # fmt: skip
    config = make_config(
        {"up": cached_upstream}, sock=sock_dir, prices=prices, metrics=MetricsConfig()
    )
    gw = await start_gateway(config)
    client = sdk(gw.v1, default_headers={"X-Aigw-Tenant": "team-a"})
    for _ in range(3):
        await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    await client.close()
    # 200 plain input at $2, 800 cached at $0.50, 10 output at $8, per million tokens.
    one = 200 * 2000 + 800 * 500 + 10 * 8000
    assert one == cost_nanos(Usage(1000, 10, 1010, cached_tokens=800), Price.of("2", "8", "0.5"))
    text = await scrape(gw)
    assert f'aigw_cost_usd_total{{model="gpt-test",tenant="team-a"}} {3 * one / USD}' in text
    assert 'aigw_tokens_total{kind="cached",model="gpt-test",tenant="team-a"} 2400.0' in text
    assert 'aigw_tokens_total{kind="prompt",model="gpt-test",tenant="team-a"} 3000.0' in text
    assert "aigw_unpriced_requests_total{" not in text

    # An upstream model the table does not know: it costs 0, and is counted.
    gw2 = await start_gateway(
        replace(config, prices={}, server=replace(config.server, admin_socket=str(
            _short_tmp() / "admin.sock")))
    )  # fmt: skip
    client = sdk(gw2.v1)
    await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    await client.close()
    text = await scrape(gw2)
    assert 'aigw_unpriced_requests_total{model="up-model"} 1.0' in text
    assert "aigw_cost_usd_total{" not in text


async def test_a_reload_swaps_the_prices(
    upstream: Upstream, start_gateway: Any, sock_dir: Path, tmp_path: Path
) -> None:
    upstream.behaviour.words = ["w"] * 10
    path = tmp_path / "config.yaml"

    def write(output_price: str) -> None:
        path.write_text(
            f"""\
version: 1
server: {{port: 0, admin_socket: "{sock_dir / "admin.sock"}"}}
state: {{backend: memory}}
providers:
  up: {{type: openai, base_url: "{upstream.url}"}}
models:
  gpt-test: {{targets: [{{provider: up, model: up-model}}]}}
prices:
  up-model: {{input: 1000, output: {output_price}}}
quota: {{default_usd: 100, period: never}}
"""
        )

    write("2000")
    from aigw.config import load_config

    gw = await start_gateway(load_config(str(path)))
    client = sdk(gw.v1)
    await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    write("3000")
    await gw.gateway.reload()
    await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    await client.close()
    spent = await settled_cost(quota_of(gw), "default")
    assert spent == cost_nanos(Usage(7, 10, 17), PRICE) + cost_nanos(
        Usage(7, 10, 17), Price.of("1000", "3000")
    )


# --- two daemons on one redis -------------------------------------------------------------------


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[[str], Daemon]]:
    started: list[Daemon] = []

    def start(config_text: str) -> Daemon:
        home = Path(tempfile.mkdtemp(prefix="d", dir=tmp_path))  # started in parallel
        daemon = start_daemon(config_text, home, _short_tmp())
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(10)


@pytest.mark.slow
async def test_two_daemons_on_one_redis_never_spend_past_one_budget(
    upstream: Upstream, redis_url: str, daemons: Callable[[str], Daemon]
) -> None:
    upstream.behaviour.words = ["w"] * 100
    upstream.behaviour.delay = 0.05
    config = f"""\
version: 1
server: {{shutdown_timeout: 10s}}
state: {{backend: redis, url: "{redis_url}"}}
providers:
  up: {{type: openai, base_url: "{upstream.url}", timeout: 10s}}
models:
  gpt-test:
    targets: [{{provider: up, model: up-model}}]
prices:
  up-model: {{input: 1000, output: 2000}}
quota: {{tenants: {{team-a: {{usd: 10}}}}, period: never}}
health: {{check_interval: 0s}}
"""
    pair = await asyncio.gather(
        asyncio.to_thread(daemons, config), asyncio.to_thread(daemons, config)
    )
    budget = 10 * USD

    async def one(session: aiohttp.ClientSession, i: int) -> tuple[int, Any]:
        async with session.post(
            pair[i % 2].v1 + "/chat/completions", json=BODY, headers={"X-Aigw-Tenant": "team-a"}
        ) as r:
            return r.status, await r.json()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        results = await asyncio.gather(*(one(session, i) for i in range(200)))
    ok = [data for status, data in results if status == 200]
    assert len(ok) + sum(1 for status, _ in results if status == 429) == 200
    seen = sum(cost_nanos(Usage(**{k: data["usage"][k] for k in (
        "prompt_tokens", "completion_tokens", "total_tokens")}), PRICE) for data in ok)  # fmt: skip
    spent = []
    for d in pair:
        result = await cli("quota", "show", "team-a", "--json", "--admin-socket", str(d.socket))
        assert result.returncode == 0, result.stderr
        [status] = json.loads(result.stdout)["tenants"]
        spent.append(nanos(status["cost_usd"]))
    print(f"\nredis, two daemons: {len(ok)} admitted, overshoot {spent[0] - budget} n$")
    assert spent[0] == spent[1] == seen  # both see one account, and it is what the clients got
    assert spent[0] <= budget and budget - spent[0] < HELD  # used up, never passed
    assert len(ok) == budget // HELD
    for d in pair:
        assert await asyncio.to_thread(d.terminate) == 0
