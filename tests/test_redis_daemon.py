"""Issue 6 acceptance, end to end: `aigw serve` processes sharing one real redis-server.

Two daemons on different ports enforce one quota and one rate limit together; Redis is killed
under load and restarted (fail_open: no client failure, usage reconciled; fail_closed: 503 with
an OpenAI body); `aigw quota set` on either is seen by both; `--workers 2` serves from two pids
and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Daemon, _short_tmp, cli_env, start_daemon
from tests.redis_server import RedisServer
from tests.upstream import Upstream

pytestmark = pytest.mark.slow

ANSWER_WORDS = 90  # the upstream answers 7 prompt + 90 completion tokens
PER_ANSWER = 7 + ANSWER_WORDS
BODY = {"model": "gpt-test", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 100}


def config_for(upstream: Upstream, redis_url: str, extra: str = "", **state: str) -> str:
    options = "".join(f", {k}: {v}" for k, v in state.items())
    return f"""\
version: 1
server: {{shutdown_timeout: 10s}}
state: {{backend: redis, url: "{redis_url}"{options}}}
providers:
  up: {{type: openai, base_url: "{upstream.url}", timeout: 5s}}
models:
  gpt-test:
    targets: [{{provider: up, model: up-model}}]
health: {{check_interval: 0s}}
{extra}"""


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start `aigw serve` processes, each with its own admin socket and log."""
    started: list[Daemon] = []

    def start(config_text: str, *, args: tuple[str, ...] = ()) -> Daemon:
        home = tmp_path / f"d{len(started)}"
        home.mkdir()
        daemon = start_daemon(config_text, home, _short_tmp(), args=args)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(10)


@pytest.fixture
def answers(upstream: Upstream) -> Upstream:
    upstream.behaviour.words = ["tok"] * ANSWER_WORDS
    return upstream


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aigw", *args],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
    )


def quota_total(daemon: Daemon, tenant: str = "default") -> int | None:
    """The tenant's recorded total as the daemon reports it; None while it cannot say."""
    done = cli("quota", "show", tenant, "--json", "--admin-socket", str(daemon.socket))
    if done.returncode != 0:
        return None
    [row] = json.loads(done.stdout)["tenants"]
    return int(row["total_tokens"])


async def post(session: aiohttp.ClientSession, daemon: Daemon) -> tuple[int, Any, str | None]:
    async with session.post(daemon.v1 + "/chat/completions", json=BODY) as resp:
        return resp.status, await resp.json(), resp.headers.get("x-aigw-worker")


async def eventually(check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait for something outside the test's control (a daemon noticing Redis is back)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


# --- 1. one quota and one rate limit across two daemons --------------------------------------


async def test_two_daemons_never_exceed_one_shared_quota(
    answers: Upstream, redis_url: str, daemons: Callable[..., Daemon]
) -> None:
    config = config_for(answers, redis_url, "quota: {default: 10000}\n")
    pair = (daemons(config), daemons(config))
    statuses: list[int] = []
    used = 0
    async with aiohttp.ClientSession() as session:
        turn = 0

        async def client() -> None:
            nonlocal turn, used
            for _ in range(12):
                daemon = pair[turn % 2]  # requests alternate between the daemons
                turn += 1
                status, body, _ = await post(session, daemon)
                statuses.append(status)
                if status == 200:
                    used += body["usage"]["total_tokens"]
                else:
                    assert status == 429 and body["error"]["code"] == "insufficient_quota"

        await asyncio.gather(*(client() for _ in range(16)))
    # Had each daemon its own quota, all 192 requests (18,624 tokens) would have passed.
    assert statuses.count(429) > 0
    recorded = [quota_total(d) for d in pair]
    assert recorded[0] == recorded[1] == used == PER_ANSWER * statuses.count(200)
    assert 10_000 - 2 * 110 < used <= 10_000


async def test_two_daemons_share_one_rate_limit(
    answers: Upstream, redis_url: str, daemons: Callable[..., Daemon]
) -> None:
    config = config_for(answers, redis_url, "rate_limit: {requests_per_second: 10, burst: 20}\n")
    pair = (daemons(config), daemons(config))
    passed = {0: 0, 1: 0}
    refused = 0
    async with aiohttp.ClientSession() as session:
        await post(session, pair[0])  # warm both connection pools before measuring
        await post(session, pair[1])
        await asyncio.sleep(2.1)  # the warm-up took 2 of the burst: let the bucket refill
        started = time.monotonic()

        async def client(k: int) -> None:
            nonlocal refused
            i = k
            while time.monotonic() - started < 2.0:
                side = i % 2
                i += 1
                status, body, _ = await post(session, pair[side])
                if status == 200:
                    passed[side] += 1
                else:
                    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
                    refused += 1

        await asyncio.gather(*(client(k) for k in range(8)))
        elapsed = time.monotonic() - started
    total = passed[0] + passed[1]
    # Per-daemon buckets would let through about twice as many.
    assert total <= 20 + 10 * elapsed, (total, elapsed)
    assert total >= 20 and passed[0] and passed[1] and refused


# --- 2. Redis killed under load and restarted --------------------------------------------------


async def _load(
    session: aiohttp.ClientSession, pair: tuple[Daemon, ...], stop: asyncio.Event, results: list
) -> None:
    i = 0
    while not stop.is_set():
        status, body, _ = await post(session, pair[i % len(pair)])
        results.append((status, body))
        i += 1
        await asyncio.sleep(0.005)


async def test_fail_open_serves_through_an_outage_and_reconciles(
    answers: Upstream, redis_server: RedisServer, daemons: Callable[..., Daemon]
) -> None:
    config = config_for(answers, redis_server.url, "quota: {default: 100000000}\n")
    pair = (daemons(config), daemons(config))
    results: list[tuple[int, Any]] = []
    stop = asyncio.Event()
    clients = 4
    async with aiohttp.ClientSession() as session:
        load = [asyncio.create_task(_load(session, pair, stop, results)) for _ in range(clients)]
        await eventually(lambda: len(results) >= 20)
        redis_server.kill()
        during = len(results)
        await eventually(lambda: len(results) >= during + 40)  # served without Redis
        redis_server.start()
        await eventually(lambda: all(quota_total(d) is not None for d in pair))
        after = len(results)
        await eventually(lambda: len(results) >= after + 20)
        stop.set()
        await asyncio.gather(*load)
    assert [status for status, _ in results] == [200] * len(results)  # no client saw a failure
    served = PER_ANSWER * len(results)

    def reconciled() -> bool:
        total = quota_total(pair[0])
        return total is not None and total >= served

    await eventually(reconciled)
    total = quota_total(pair[0])
    assert total is not None
    # Nothing lost; an answer lost at the instant of the kill may count twice (never less).
    assert served <= total <= served + PER_ANSWER * clients
    for daemon in pair:
        log = daemon.output()
        assert log.count("is unreachable") == 1, log
        assert log.count("is reachable again") == 1, log
        assert daemon.terminate() == 0


async def test_fail_closed_answers_503_with_an_openai_body(
    answers: Upstream, redis_server: RedisServer, daemons: Callable[..., Daemon]
) -> None:
    config = config_for(
        answers, redis_server.url, "quota: {default: 1000000}\n", on_failure="fail_closed"
    )
    daemon = daemons(config)
    results: list[tuple[int, Any]] = []
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        load = [asyncio.create_task(_load(session, (daemon,), stop, results)) for _ in range(3)]
        await eventually(lambda: len(results) >= 10)
        redis_server.kill()
        await eventually(lambda: sum(1 for s, _ in results if s == 503) >= 10)
        status, body, _ = await post(session, daemon)
        assert status == 503
        assert body == {
            "error": {
                "message": "The gateway's shared state store is unreachable; try again shortly.",
                "type": "server_error",
                "param": None,
                "code": "state_unavailable",
            }
        }
        redis_server.start()
        await eventually(lambda: results[-1][0] == 200)
        stop.set()
        await asyncio.gather(*load)
    assert {status for status, _ in results} == {200, 503}
    assert all(b["error"]["code"] == "state_unavailable" for s, b in results if s == 503)
    log = daemon.output()
    assert log.count("is unreachable") == 1 and log.count("is reachable again") == 1, log
    assert daemon.terminate() == 0


# --- 3. `aigw quota set` on either daemon --------------------------------------------------------


async def test_quota_set_on_either_daemon_is_seen_by_both(
    answers: Upstream, redis_url: str, daemons: Callable[..., Daemon]
) -> None:
    config = config_for(answers, redis_url, "quota: {default: 1000000}\n")
    a, b = daemons(config), daemons(config)
    async with aiohttp.ClientSession() as session:
        assert (await post(session, b))[0] == 200  # b has loaded its view of the overrides
        done = cli("quota", "set", "default", "50", "--admin-socket", str(a.socket))
        assert done.returncode == 0, done.stderr
        status, body, _ = await post(session, b)  # the very next request on b
        assert (status, body["error"]["code"]) == (429, "insufficient_quota")
        done = cli("quota", "set", "default", "100000", "--admin-socket", str(b.socket))
        assert done.returncode == 0, done.stderr
        assert (await post(session, a))[0] == 200
    for daemon in (a, b):
        shown = cli("quota", "show", "--json", "--admin-socket", str(daemon.socket))
        [row] = json.loads(shown.stdout)["tenants"]
        assert (row["limit"], row["source"], row["total_tokens"]) == (100000, "override", 194)


# --- 4. --workers 2 ------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _leftovers(daemon: Daemon) -> list[Path]:
    """The admin socket and the workers' socket dir, where they still exist."""
    paths = [daemon.socket, Path(str(daemon.socket) + ".d")]
    return [p for p in paths if p.exists()]


def _status(daemon: Daemon) -> dict[str, Any]:
    done = cli("status", "--json", "--admin-socket", str(daemon.socket))
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


async def test_workers_serve_from_both_pids_and_stop_cleanly(
    answers: Upstream, redis_url: str, daemons: Callable[..., Daemon]
) -> None:
    config = config_for(answers, redis_url, "quota: {default: 1000000}\n")
    daemon = daemons(config, args=("--workers", "2"))
    pids = {w["pid"] for w in _status(daemon)["workers"]}
    assert len(pids) == 2 and daemon.proc.pid not in pids
    seen: set[str] = set()
    sent = 0
    # A new connection per request: the kernel spreads connections, not requests.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        while len(seen) < 2 and sent < 400:
            status, _, worker = await post(s, daemon)
            assert status == 200 and worker is not None
            seen.add(worker)
            sent += 1
    assert {int(p) for p in seen} == pids
    stats = json.loads(cli("lb", "stats", "--json", "--admin-socket", str(daemon.socket)).stdout)
    assert stats["workers"] == 2
    assert stats["models"][0]["targets"][0]["requests"] == sent  # merged over both workers
    assert quota_total(daemon) == PER_ANSWER * sent  # quota calls reach a worker

    # A worker that dies is replaced.
    victim = next(iter(pids))
    os.kill(victim, signal.SIGKILL)
    await eventually(
        lambda: (
            victim not in {w["pid"] for w in _status(daemon)["workers"]}
            and all(w["running"] for w in _status(daemon)["workers"])
        )
    )
    pids = {w["pid"] for w in _status(daemon)["workers"]}
    async with aiohttp.ClientSession() as s:
        assert (await post(s, daemon))[0] == 200

    assert daemon.terminate() == 0
    assert not any(_alive(pid) for pid in pids)
    assert _leftovers(daemon) == []
    assert "restarting it" in daemon.output()


def test_workers_refuse_an_unshared_store(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "version: 1\nstate: {backend: sqlite}\nproviders: {m: {type: mock}}\n"
        "models: {mock: {targets: [{provider: m}]}}\n"
    )
    done = cli("serve", "--config", str(config), "--port", "0", "--workers", "2")
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "--workers 2 needs a shared state store: set state.backend: redis" in lines[0]
    assert "sqlite" in lines[0]
