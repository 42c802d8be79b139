"""`aigw lb stats` and config reload end to end (issue 3, acceptance 6 and the reload rules).

In process: a real `Gateway` loaded from a YAML file, reloaded through the admin socket with
the CLI's own `AdminClient`. As a subprocess: `aigw serve` (daemon_factory) driven over HTTP,
read with `python -m aigw lb stats` (JSON, `--once`, piped, and live under a pseudo-terminal) and
reloaded with SIGHUP. Upstreams are real aiohttp servers on this test's event loop, so nothing
here blocks the loop: subprocesses and the blocking AdminClient run off it.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from aigw.admin_client import AdminClient
from aigw.config import load_config
from aigw.errors import AdminError
from aigw.hooks.base import Hook
from tests.conftest import Daemon, RunningGateway, cli_env, read_available
from tests.upstream import WORDS, Upstream

MESSAGES = [{"role": "user", "content": "hi"}]
TEXT = " ".join(WORDS)
PROVIDER_KEY = "sk-provider-SECRET-lb-0123456789"


class ExplodingHook(Hook):
    """A user hook whose start-up fails: the config validates, building the runtime does not."""

    def __init__(self, **options: Any) -> None:
        raise ValueError("exploding hook: cannot reach its backend")


def config_yaml(
    providers: dict[str, str],
    models: dict[str, list[tuple[str, str]]],
    *,
    admin_socket: Path | None = None,
    health: str = "{check_interval: 0s}",
    extra: str = "",
) -> str:
    """YAML text: providers by name → base URL; models by name → [(provider, upstream model)]."""
    server = f'server: {{port: 0, admin_socket: "{admin_socket}", shutdown_timeout: 5s}}\n'
    lines = [
        "version: 1",
        (server if admin_socket else "server: {shutdown_timeout: 5s}\n").rstrip(),
        "state: {backend: memory}",
        f"health: {health}",
        "providers:",
    ]
    for name, url in providers.items():
        lines.append(
            f'  {name}: {{type: openai, base_url: "{url}", api_key: "${{UP_KEY}}", timeout: 5s,'
            " connect_timeout: 2s}"
        )
    lines.append("models:")
    for model, targets in models.items():
        listed = ", ".join(f"{{provider: {p}, model: {m}}}" for p, m in targets)
        lines.append(f"  {model}: {{strategy: round_robin, targets: [{listed}]}}")
    return "\n".join(lines) + "\n" + extra


def rewrite(path: Path, text: str) -> None:
    """Replace the config file (small, local: fine to do on the loop)."""
    path.write_text(text)


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


async def ask(
    session: aiohttp.ClientSession, v1: str, model: str, n: int = 1, *, stream: bool = False
) -> list[str]:
    """n sequential requests that must succeed; the x-aigw-provider of each."""
    answered = []
    for _ in range(n):
        body = {"model": model, "messages": MESSAGES, "stream": stream}
        async with session.post(v1 + "/chat/completions", json=body) as r:
            assert r.status == 200, await r.text()
            await r.read()
            answered.append(r.headers["x-aigw-provider"])
    return answered


def by_target(snapshot: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(model, target id) → that target's stats."""
    return {(m["name"], t["id"]): t for m in snapshot["models"] for t in m["targets"]}


def counts(snapshot: dict[str, Any]) -> dict[tuple[str, str], tuple[int, int]]:
    return {k: (t["requests"], t["errors"]) for k, t in by_target(snapshot).items()}


async def lb_stats(d: Daemon, *args: str, columns: int = 200) -> tuple[int, str, str]:
    """`python -m aigw lb stats …` against the daemon, stdout piped (not a terminal)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aigw",
        "lb",
        "stats",
        "--admin-socket",
        str(d.socket),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env({"COLUMNS": str(columns)}),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def poll(condition: Any, timeout: float = 10.0) -> bool:
    """Wait for another process or task to get somewhere (not for time to pass)."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


@pytest.fixture
async def upstream3() -> AsyncIterator[Upstream]:
    up = await Upstream().start()
    yield up
    await up.stop()


# --- reload, in process, through the admin socket ---------------------------------------------


async def start_from_file(start_gateway: Any, path: Path) -> RunningGateway:
    gw: RunningGateway = await start_gateway(load_config(path, env={"UP_KEY": PROVIDER_KEY}))
    return gw


@pytest.fixture
def up_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UP_KEY", PROVIDER_KEY)  # reload() reads the real environment


async def test_reload_adds_a_target_keeps_stats_and_finishes_the_stream_in_flight(
    upstream: Upstream,
    upstream2: Upstream,
    upstream3: Upstream,
    start_gateway: Any,
    tmp_path: Path,
    sock_dir: Path,
    up_key: None,
) -> None:
    sock = sock_dir / "admin.sock"
    providers = {"a": upstream.url, "b": upstream2.url}
    path = tmp_path / "config.yaml"
    rewrite(path, config_yaml(providers, {"m": [("a", "up"), ("b", "up")]}, admin_socket=sock))
    gw = await start_from_file(start_gateway, path)
    admin = AdminClient(sock)
    for up in (upstream, upstream2):
        up.behaviour.chunk_delay = 0.05  # a stream that is still running during the reload

    async with aiohttp.ClientSession() as session:
        assert sorted(await ask(session, gw.v1, "m", 4)) == ["a", "a", "b", "b"]
        async with session.post(
            gw.v1 + "/chat/completions", json={"model": "m", "messages": MESSAGES, "stream": True}
        ) as stream:
            assert stream.status == 200
            streaming_on = stream.headers["x-aigw-provider"]
            first = await stream.content.readuntil(b"\n\n")
            assert first.startswith(b"data: ")

            rewrite(
                path,
                config_yaml(
                    {**providers, "c": upstream3.url},
                    {"m": [("a", "up"), ("b", "up"), ("c", "up")]},
                    admin_socket=sock,
                ),
            )
            answer = await asyncio.to_thread(admin.post_json, "/reload")
            assert (answer["config"], answer["models"]) == (str(path), ["m"])
            during = by_target(await asyncio.to_thread(admin.get_json, "/lb/stats"))
            assert during["m", f"{streaming_on}/up"]["in_flight"] == 1  # really in flight

            rest = await stream.read()
        events = [e for e in (first + rest).split(b"\n\n") if e]
        assert events[-1] == b"data: [DONE]"
        assert not any(b'"error"' in e for e in events)
        text = "".join(
            c["delta"].get("content") or ""
            for e in events[:-1]
            for c in json.loads(e[6:])["choices"]
        )
        assert text == TEXT

        after = counts(await asyncio.to_thread(admin.get_json, "/lb/stats"))
        kept = {"a": 2, "b": 2}
        kept[streaming_on] += 1  # the in-flight stream landed in the surviving counters
        assert after == {
            ("m", "a/up"): (kept["a"], 0),
            ("m", "b/up"): (kept["b"], 0),
            ("m", "c/up"): (0, 0),
        }

        for up in (upstream, upstream2):
            up.behaviour.chunk_delay = 0.0
        assert sorted(await ask(session, gw.v1, "m", 6)) == ["a", "a", "b", "b", "c", "c"]
    assert len(upstream3.requests) == 2
    final = by_target(await asyncio.to_thread(admin.get_json, "/lb/stats"))
    assert final["m", "c/up"]["requests"] == 2
    assert all(t["in_flight"] == 0 for t in final.values())


async def test_reload_with_a_broken_config_keeps_the_running_one(
    upstream: Upstream, start_gateway: Any, tmp_path: Path, sock_dir: Path, up_key: None
) -> None:
    sock = sock_dir / "admin.sock"
    path = tmp_path / "config.yaml"
    good = config_yaml({"a": upstream.url}, {"m": [("a", "up")]}, admin_socket=sock)
    rewrite(path, good)
    gw = await start_from_file(start_gateway, path)
    admin = AdminClient(sock)
    async with aiohttp.ClientSession() as session:
        await ask(session, gw.v1, "m", 3)
        running = gw.gateway.runtime
        rewrite(path, good.replace("strategy: round_robin", "strategy: fastest"))
        with pytest.raises(AdminError) as exc:
            await asyncio.to_thread(admin.post_json, "/reload")
        message = str(exc.value)
        assert "config.yaml" in message and "strategy" in message and "fastest" in message
        assert PROVIDER_KEY not in message
        assert gw.gateway.runtime is running
        assert gw.gateway.config is running.config
        assert await ask(session, gw.v1, "m", 2) == ["a", "a"]
    stats = counts(await asyncio.to_thread(admin.get_json, "/lb/stats"))
    assert stats == {("m", "a/up"): (5, 0)}


async def test_reload_that_fails_to_build_reports_it_and_changes_nothing(
    upstream: Upstream,
    upstream2: Upstream,
    start_gateway: Any,
    tmp_path: Path,
    sock_dir: Path,
    up_key: None,
) -> None:
    sock = sock_dir / "admin.sock"
    path = tmp_path / "config.yaml"
    providers = {"a": upstream.url, "b": upstream2.url}
    good = config_yaml(providers, {"m": [("a", "up"), ("b", "up")]}, admin_socket=sock)
    rewrite(path, good)
    gw = await start_from_file(start_gateway, path)
    admin = AdminClient(sock)
    running = gw.gateway.runtime
    # Valid YAML for the loader (the hook class exists), but the hook cannot be built; the same
    # file also changes a weight and the health settings, which must not leak into the live set.
    rewrite(
        path,
        good.replace("{provider: a, model: up}", "{provider: a, model: up, weight: 5}").replace(
            "check_interval: 0s", "check_interval: 0s, min_requests: 1"
        )
        + 'hooks: ["tests.test_lb_e2e:ExplodingHook"]\n',
    )
    with pytest.raises(AdminError) as exc:
        await asyncio.to_thread(admin.post_json, "/reload")
    assert "exploding hook: cannot reach its backend" in str(exc.value)
    assert gw.gateway.runtime is running
    snapshot = await asyncio.to_thread(admin.get_json, "/lb/stats")
    assert {t["id"]: t["weight"] for t in snapshot["models"][0]["targets"]} == {
        "a/up": 1,
        "b/up": 1,
    }
    assert all(t._health.min_requests == 10 for t in running.balancers.get("m").targets)  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as session:
        assert sorted(await ask(session, gw.v1, "m", 4)) == ["a", "a", "b", "b"]


# --- acceptance 6: `aigw lb stats` against a running `aigw serve` -----------------------------

slow = pytest.mark.slow  # starts `aigw serve`


@slow
async def test_lb_stats_json_once_and_piped_match_the_requests_sent(
    upstream: Upstream, upstream2: Upstream, daemon_factory: Any
) -> None:
    text = config_yaml(
        {"a1": upstream.url, "a2": upstream2.url, "dead": dead_url()},
        {
            "model-a": [("a1", "up-a"), ("a2", "up-a")],
            "model-b": [("dead", "up-b"), ("a2", "up-b")],
        },
        health="{check_interval: 0s, min_requests: 1000}",  # keep every circuit closed
    )
    d: Daemon = daemon_factory(text, env={"UP_KEY": PROVIDER_KEY})
    async with aiohttp.ClientSession() as session:
        a = await ask(session, d.v1, "model-a", 30)
        b = await ask(session, d.v1, "model-b", 10)
    assert (a.count("a1"), a.count("a2")) == (15, 15)
    assert b == ["a2"] * 10  # every other request failed over from the dead target

    code, out, err = await lb_stats(d, "--json")
    assert code == 0, err
    snapshot = json.loads(out)
    assert counts(snapshot) == {
        ("model-a", "a1/up-a"): (15, 0),
        ("model-a", "a2/up-a"): (15, 0),
        ("model-b", "dead/up-b"): (5, 5),
        ("model-b", "a2/up-b"): (10, 0),
    }
    stats = by_target(snapshot)
    assert all(t["in_flight"] == 0 for t in stats.values())
    assert {m["name"]: m["strategy"] for m in snapshot["models"]} == {
        "model-a": "round_robin",
        "model-b": "round_robin",
    }
    dead = stats["model-b", "dead/up-b"]
    assert dead["error_rate"] == 1.0 and dead["health"] == "degraded"
    assert dead["circuit"] == "closed"
    assert "connect" in dead["last_error"]
    assert stats["model-a", "a1/up-a"]["latency_p50"] is not None

    code, out, err = await lb_stats(d, "--json", "--model", "model-b")
    assert code == 0, err
    assert [m["name"] for m in json.loads(out)["models"]] == ["model-b"]

    code, once, err = await lb_stats(d, "--once")
    assert code == 0, err
    lines = once.splitlines()
    assert "healthy 3/4" in lines[0]  # header: the dead target is degraded
    rows: dict[str, list[str]] = {}
    for target_id in ("a1/up-a", "a2/up-a", "dead/up-b", "a2/up-b"):
        (row,) = [line for line in lines if target_id in line]
        rows[target_id] = row.split()
    assert rows["a1/up-a"][:2] == ["model-a", "round_robin"]
    assert "✓" in rows["a1/up-a"] and "15" in rows["a1/up-a"] and "closed" in rows["a1/up-a"]
    assert "✓" in rows["a2/up-a"] and "15" in rows["a2/up-a"]
    assert "⚠" in rows["dead/up-b"] and "degraded" in rows["dead/up-b"]
    assert rows["dead/up-b"].count("5") == 2 and "100%" in rows["dead/up-b"]  # req, err
    assert "10" in rows["a2/up-b"] and "0%" in rows["a2/up-b"]

    code, narrow, err = await lb_stats(d, "--once", columns=80)
    assert code == 0, err
    assert max(len(line) for line in narrow.splitlines()) <= 80
    assert all(t in narrow for t in ("a1/up-a", "a2/up-a", "dead/up-b", "a2/up-b"))

    # Piped and without --once: one snapshot, exit 0 (no live loop waiting for Ctrl+C).
    code, piped, err = await lb_stats(d)
    assert code == 0, err
    assert piped.count("aigw lb ·") == 1
    assert "\x1b[" not in piped
    assert all(t in piped for t in ("a1/up-a", "dead/up-b"))

    for output in (out, once, narrow, piped, d.output()):
        assert PROVIDER_KEY not in output
    assert d.terminate() == 0


def _live_under_pty(socket_path: Path, frames: int) -> tuple[int, str]:
    """Plain `aigw lb stats --interval 0.2` on a pseudo-terminal: wait for `frames` redraws,
    then Ctrl+C (SIGINT). Blocking: run it off the event loop."""
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aigw",
            "lb",
            "stats",
            "--interval",
            "0.2",
            "--admin-socket",
            str(socket_path),
        ],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env=cli_env({"COLUMNS": "120", "LINES": "40", "TERM": "xterm-256color"}),
    )
    os.close(secondary)
    output = b""
    try:
        deadline = time.monotonic() + 30
        while output.count(b"req/s over") < frames and time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            output += read_available(primary)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
        output += read_available(primary)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(primary)
    return code, output.decode(errors="replace")


@slow
async def test_lb_stats_live_on_a_terminal_redraws_and_exits_0_on_ctrl_c(
    upstream: Upstream, daemon_factory: Any
) -> None:
    d: Daemon = daemon_factory(
        config_yaml({"a1": upstream.url}, {"model-a": [("a1", "up-a")]}),
        env={"UP_KEY": PROVIDER_KEY},
    )
    async with aiohttp.ClientSession() as session:
        await ask(session, d.v1, "model-a", 3)
    code, text = await asyncio.to_thread(_live_under_pty, d.socket, 3)
    assert text.count("req/s over") >= 3, text  # redrawn: each later frame rates its interval
    assert code == 0, text
    assert "Traceback" not in text
    assert "a1/up-a" in text
    assert "\x1b[" in text  # drawn in place with cursor movement
    assert d.proc.poll() is None  # the daemon is untouched by the client's Ctrl+C
    assert d.terminate() == 0


# --- reload by SIGHUP ---------------------------------------------------------------------------


@slow
async def test_sighup_reload_adds_a_target_keeps_stats_and_survives_a_broken_config(
    upstream: Upstream, upstream2: Upstream, upstream3: Upstream, daemon_factory: Any
) -> None:
    providers = {"a": upstream.url, "b": upstream2.url}
    d: Daemon = daemon_factory(
        config_yaml(providers, {"m": [("a", "up"), ("b", "up")]}), env={"UP_KEY": PROVIDER_KEY}
    )
    config_path = Path(d.proc.args[d.proc.args.index("--config") + 1])  # type: ignore[union-attr]
    admin = AdminClient(d.socket)

    async def snapshot() -> dict[str, Any]:
        data: dict[str, Any] = await asyncio.to_thread(admin.get_json, "/lb/stats")
        return data

    for up in (upstream, upstream2):
        up.behaviour.chunk_delay = 0.05
    async with aiohttp.ClientSession() as session:
        assert sorted(await ask(session, d.v1, "m", 4)) == ["a", "a", "b", "b"]
        async with session.post(
            d.v1 + "/chat/completions", json={"model": "m", "messages": MESSAGES, "stream": True}
        ) as stream:
            assert stream.status == 200
            await stream.content.readuntil(b"\n\n")  # the stream has started
            rewrite(
                config_path,
                config_yaml(
                    {**providers, "c": upstream3.url},
                    {"m": [("a", "up"), ("b", "up"), ("c", "up")]},
                ),
            )
            d.proc.send_signal(signal.SIGHUP)

            async def has_c() -> bool:
                return ("m", "c/up") in by_target(await snapshot())

            assert await poll(has_c), d.output()
            rest = await stream.read()
        assert rest.endswith(b"data: [DONE]\n\n")
        assert b'"error"' not in rest
        assert counts(await snapshot()) == {
            ("m", "a/up"): (3, 0),  # round robin: the 5th request (the stream) went to a
            ("m", "b/up"): (2, 0),
            ("m", "c/up"): (0, 0),
        }
        for up in (upstream, upstream2):
            up.behaviour.chunk_delay = 0.0
        assert sorted(await ask(session, d.v1, "m", 6)) == ["a", "a", "b", "b", "c", "c"]

        # A broken file: the daemon logs why and keeps serving the running config.
        rewrite(config_path, "version: 1\nmodels: {m: {strategy: fastest}}\n")
        d.proc.send_signal(signal.SIGHUP)

        async def logged() -> bool:
            return "reload failed" in d.output()

        assert await poll(logged), d.output()
        assert "fastest" in d.output()
        assert sorted(await ask(session, d.v1, "m", 3)) == ["a", "b", "c"]
    assert counts(await snapshot()) == {
        ("m", "a/up"): (6, 0),
        ("m", "b/up"): (5, 0),
        ("m", "c/up"): (3, 0),
    }
    assert len(upstream3.requests) == 3
    assert PROVIDER_KEY not in d.output()
    assert d.terminate() == 0


@slow
async def test_sighup_reload_keeps_command_line_overrides(
    upstream: Upstream, daemon_factory: Any
) -> None:
    d: Daemon = daemon_factory(
        config_yaml({"a": upstream.url}, {"m": [("a", "up")]}),
        env={"UP_KEY": PROVIDER_KEY},
        args=("--access-log",),
    )

    async def request_id(session: aiohttp.ClientSession) -> str:
        body = {"model": "m", "messages": MESSAGES}
        async with session.post(d.v1 + "/chat/completions", json=body) as r:
            assert r.status == 200
            return r.headers["x-request-id"]

    async with aiohttp.ClientSession() as session:
        before = await request_id(session)

        async def logged_before() -> bool:
            return before in d.output()

        assert await poll(logged_before), d.output()
        d.proc.send_signal(signal.SIGHUP)  # the same file: nothing should change

        async def reloaded() -> bool:
            return "config reloaded" in d.output()

        assert await poll(reloaded), d.output()
        after = await request_id(session)

        async def logged_after() -> bool:
            return after in d.output()

        assert await poll(logged_after, 3.0), d.output()
    assert d.terminate() == 0
