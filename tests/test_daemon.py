"""`aigw serve` as a real subprocess: the openai SDK against it, signals, the admin socket,
start-up failures, and no secret in anything it prints."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import Daemon, cli_env
from tests.upstream import WORDS, Upstream

pytestmark = pytest.mark.slow

PROVIDER_KEY = "sk-provider-SECRET-0123456789abcdef"
TENANT_KEY = "sk-tenant-SECRET-fedcba9876543210"


def config_for(upstream_url: str, *, keys: bool = False, extra: str = "") -> str:
    auth = 'auth:\n  keys:\n    - {key: "${TEAM_KEY}", tenant: team-a}\n' if keys else ""
    return f"""\
version: 1
server: {{shutdown_timeout: 10s}}
state: {{backend: memory}}
{auth}providers:
  up: {{type: openai, base_url: "{upstream_url}", api_key: "${{UP_KEY}}", timeout: 5s}}
models:
  gpt-test:
    targets: [{{provider: up, model: up-model}}]
{extra}"""


MINIMAL = """\
version: 1
state: {backend: memory}
providers: {mock: {type: mock}}
models: {mock: {targets: [{provider: mock}]}}
"""


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aigw", *args],
        capture_output=True,
        text=True,
        env=cli_env(env),
        timeout=30,
    )


def serving_url(proc: subprocess.Popen[str]) -> str:
    """Read the daemon's output up to its "serving <url>" line; the URL."""
    assert proc.stdout is not None
    line = ""
    while "serving" not in line:
        line = proc.stdout.readline()
        assert line, "daemon exited"
    return line.split("serving ")[1].split()[0]


async def test_openai_sdk_against_daemon(upstream: Upstream, daemon_factory: Any) -> None:
    env = {"UP_KEY": PROVIDER_KEY, "TEAM_KEY": TENANT_KEY}
    d: Daemon = daemon_factory(config_for(upstream.url, keys=True), env=env, args=("--access-log",))
    client = openai.AsyncOpenAI(base_url=d.v1, api_key=TENANT_KEY, max_retries=0)
    done = await client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}]
    )
    assert done.choices[0].message.content == " ".join(WORDS)
    chunks = [
        c
        async for c in await client.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    ]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " ".join(WORDS)
    assert [c.usage.total_tokens for c in chunks if c.usage] == [7 + len(WORDS)]
    plain = [
        c
        async for c in await client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    ]
    assert "".join(c.choices[0].delta.content or "" for c in plain if c.choices) == " ".join(WORDS)
    assert all(c.usage is None for c in plain)  # usage only when the client asked for it
    emb = await client.embeddings.create(model="gpt-test", input="x", encoding_format="float")
    assert emb.data[0].embedding == [0.25, 0.5, 0.75]
    emb64 = await client.embeddings.create(model="gpt-test", input="x")
    assert emb64.data[0].embedding == [0.25, 0.5, 0.75]
    assert [m.id async for m in client.models.list()] == ["gpt-test"]
    await client.close()
    # the provider key went upstream, the tenant key did not
    assert upstream.headers[0]["Authorization"] == f"Bearer {PROVIDER_KEY}"
    assert all(TENANT_KEY not in str(h) for h in upstream.headers)

    # status over the admin socket, 0600
    assert stat.S_IMODE(os.stat(d.socket).st_mode) == 0o600
    status = run_cli("status", "--admin-socket", str(d.socket))
    assert status.returncode == 0, status.stderr
    assert str(d.proc.pid) in status.stdout

    bad = openai.AsyncOpenAI(base_url=d.v1, api_key="sk-guess", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await bad.models.list()
    await bad.close()

    assert d.terminate() == 0
    assert not d.socket.exists()
    output = d.output() + status.stdout + status.stderr
    for secret in (PROVIDER_KEY, TENANT_KEY, "sk-guess"):
        assert secret not in output
    # --access-log: one line per request, with the tenant and never a key
    access = [line for line in d.output().splitlines() if "aigw.access" in line]
    assert len(access) == 7, access  # 3 chat, 2 embeddings, the model list, the bad key
    assert all("tenant=team-a" in line for line in access if "/v1/chat" in line)


async def test_sigterm_drains_a_long_stream(upstream: Upstream, daemon_factory: Any) -> None:
    upstream.behaviour.words = ["w"] * 40
    upstream.behaviour.chunk_delay = 0.05  # a 2-second stream
    d: Daemon = daemon_factory(config_for(upstream.url), env={"UP_KEY": "k"})
    client = openai.OpenAI(base_url=d.v1, api_key="x", max_retries=0)
    received: list[str] = []
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            stream = client.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    received.append(chunk.choices[0].delta.content)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=consume)
    worker.start()
    deadline = time.monotonic() + 5
    while not received and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)  # the upstream runs on this loop: never block it
    assert received, "the stream never started"
    d.proc.send_signal(signal.SIGTERM)
    await asyncio.to_thread(worker.join, 15)
    assert not errors, errors
    assert "".join(received) == " ".join(["w"] * 40)
    assert await asyncio.to_thread(d.proc.wait, 15) == 0
    assert not d.socket.exists()
    client.close()


def test_second_daemon_on_same_socket_exits_3(daemon_factory: Any, tmp_path: Path) -> None:
    d: Daemon = daemon_factory(MINIMAL)
    cfg = tmp_path / "second.yaml"
    cfg.write_text(MINIMAL)
    second = run_cli("serve", "--config", str(cfg), "--port", "0", "--admin-socket", str(d.socket))
    assert second.returncode == 3
    assert "already running" in second.stderr
    assert "Traceback" not in second.stderr
    assert d.terminate() == 0


def test_port_in_use_exits_3(tmp_path: Path, sock_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = tmp_path / "c.yaml"
        cfg.write_text(MINIMAL)
        result = run_cli(
            "serve",
            "--config",
            str(cfg),
            "--port",
            str(port),
            "--admin-socket",
            str(sock_dir / "a.sock"),
        )
    assert result.returncode == 3
    assert f"port {port}" in result.stderr and "in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (sock_dir / "a.sock").exists()


def test_bad_config_exits_3_with_location(tmp_path: Path, sock_dir: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("version: 1\nserver:\n  prot: 80\n")
    result = run_cli("serve", "--config", str(cfg), "--admin-socket", str(sock_dir / "a.sock"))
    assert result.returncode == 3
    assert f"{cfg}:3" in result.stderr and "server.prot" in result.stderr
    assert "Traceback" not in result.stderr


def test_stale_socket_is_replaced(daemon_factory: Any, sock_dir: Path) -> None:
    stale = sock_dir / "admin.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()  # a socket file nobody listens on
    d: Daemon = daemon_factory(MINIMAL)
    assert run_cli("status", "--admin-socket", str(d.socket)).returncode == 0
    assert d.terminate() == 0


def test_status_without_daemon(sock_dir: Path) -> None:
    result = run_cli("status", "--admin-socket", str(sock_dir / "none.sock"))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "no aigw daemon is running" in result.stderr


def test_builtin_default_serves_mock(tmp_path: Path, sock_dir: Path) -> None:
    """No config file, no keys, no network: the mock provider answers model `mock`."""
    env = {"XDG_CONFIG_HOME": str(tmp_path / "none"), "XDG_DATA_HOME": str(tmp_path / "data")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aigw",
            "serve",
            "--port",
            "0",
            "--admin-socket",
            str(sock_dir / "admin.sock"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=cli_env(env),
    )
    try:
        url = serving_url(proc)
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
        answer = client.chat.completions.create(
            model="mock", messages=[{"role": "user", "content": "ping"}]
        )
        assert answer.choices[0].message.content == "You said: ping"
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert proc.stdout is not None
        proc.stdout.close()


def test_admin_socket_path_that_is_a_file_is_never_deleted(tmp_path: Path) -> None:
    precious = tmp_path / "notes.txt"
    precious.write_text("keep me")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(MINIMAL)
    result = run_cli("serve", "--config", str(cfg), "--port", "0", "--admin-socket", str(precious))
    assert result.returncode == 3
    assert "not a socket" in result.stderr and "Traceback" not in result.stderr
    assert precious.read_text() == "keep me"


def test_admin_socket_that_cannot_be_created_exits_3(tmp_path: Path) -> None:
    too_long = Path("/tmp") / ("x" * 120) / "admin.sock"  # beyond AF_UNIX's ~107 bytes
    cfg = tmp_path / "c.yaml"
    cfg.write_text(MINIMAL)
    try:
        result = run_cli(
            "serve", "--config", str(cfg), "--port", "0", "--admin-socket", str(too_long)
        )
    finally:
        if too_long.parent.exists():
            too_long.parent.rmdir()
    assert result.returncode == 3
    assert "cannot create the admin socket" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_finds_the_admin_socket_like_the_clients(tmp_path: Path, sock_dir: Path) -> None:
    """`$AIGW_ADMIN_SOCKET` is honoured by `aigw serve` and by `aigw status` alike."""
    env = {"AIGW_ADMIN_SOCKET": str(sock_dir / "env.sock")}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(MINIMAL)
    proc = subprocess.Popen(
        [sys.executable, "-m", "aigw", "serve", "--config", str(cfg), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=cli_env(env),
    )
    try:
        serving_url(proc)
        status = run_cli("status", env=env)
        assert status.returncode == 0, status.stderr
        assert str(proc.pid) in status.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert proc.stdout is not None
        proc.stdout.close()


# --- start-up errors that say what to do; the README tour's second daemon ----------------------


def test_startup_errors_hint_at_the_flag_that_fixes_them(
    daemon_factory: Any, tmp_path: Path, sock_dir: Path
) -> None:
    d: Daemon = daemon_factory(MINIMAL)
    cfg = tmp_path / "second.yaml"
    cfg.write_text(MINIMAL)
    same_socket = run_cli(
        "serve", "--config", str(cfg), "--port", "0", "--admin-socket", str(d.socket)
    )
    assert same_socket.returncode == 3
    assert same_socket.stderr.count("\n") == 1
    assert "already running" in same_socket.stderr and "--admin-socket" in same_socket.stderr
    port = d.url.rsplit(":", 1)[1]
    same_port = run_cli(
        "serve", "--config", str(cfg), "--port", port, "--admin-socket", str(sock_dir / "b.sock")
    )
    assert same_port.returncode == 3
    assert same_port.stderr.count("\n") == 1
    assert f"port {port}" in same_port.stderr and "--port" in same_port.stderr
    assert d.terminate() == 0


def _tour_commands() -> list[list[str]]:
    """The README tour's shell lines that run `aigw`, split into arguments (env prefix kept)."""
    import shlex

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    tour = readme.split("## A 60-second tour", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in tour.split("```sh\n")[1:]:
        for line in block.split("```", 1)[0].splitlines():
            if "aigw " not in line:
                continue  # curl lines, continued with backslashes
            words = shlex.split(line, comments=True)
            if "aigw" in words:
                commands.append(words)
    return commands


def test_the_readme_tour_runs_a_second_daemon_beside_the_first(
    tmp_path: Path, sock_dir: Path
) -> None:
    """The tour's first daemon has the default admin socket; its `aigw serve --port 8081` line
    must still start (port and socket swapped for free ones here) and its client lines find it."""
    serves = [c for c in _tour_commands() if c[:2] == ["aigw", "serve"] and "--config" in c]
    (second,) = serves
    socket_arg = second[second.index("--admin-socket") + 1]
    ours = str(sock_dir / "demo.sock")
    clients = [c for c in _tour_commands() if socket_arg in " ".join(c) and c[:2] != second[:2]]
    assert clients, "the tour shows no client command for the second daemon"

    root = Path(__file__).resolve().parent.parent
    first = subprocess.Popen(
        [sys.executable, "-m", "aigw", "serve", "--port", "0"],  # the default admin socket
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=cli_env(),
        cwd=root,
    )
    args = [ours if a == socket_arg else "0" if a == "8081" else a for a in second[1:]]
    second_proc = None
    try:
        serving_url(first)
        second_proc = subprocess.Popen(
            [sys.executable, "-m", "aigw", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=cli_env(),
            cwd=root,
        )
        serving_url(second_proc)
        for client in clients:
            env = dict(w.split("=", 1) for w in client if "=" in w and not w.startswith("-"))
            env = {k: ours if v == socket_arg else v for k, v in env.items()}
            words = [ours if w == socket_arg else w for w in client if "=" not in w]
            result = run_cli(*words[1:], env=env)
            assert result.returncode == 0, (client, result.stderr)
            if words[1] == "status":
                assert str(second_proc.pid) in result.stdout
    finally:
        for proc in (first, second_proc):
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(15) == 0
                assert proc.stdout is not None
                proc.stdout.close()


# --- stopping says what it does; IPv6 addresses in brackets --------------------------------------


def test_ctrl_c_when_idle_says_stopping_and_stops(daemon_factory: Any) -> None:
    d: Daemon = daemon_factory(MINIMAL)
    host, port = d.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as idle:
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle.recv(100).startswith(b"HTTP/1.1 200")  # an idle keep-alive connection
        d.proc.send_signal(signal.SIGINT)
        assert d.proc.wait(15) == 0
    output = d.output()
    assert "stopping: no requests in flight" in output
    assert "draining" not in output


async def test_ctrl_c_with_requests_in_flight_says_how_many_until_when_and_how_to_force(
    upstream: Upstream, daemon_factory: Any
) -> None:
    upstream.behaviour.words = ["w"] * 30
    upstream.behaviour.chunk_delay = 0.05  # a 1.5-second stream
    d: Daemon = daemon_factory(config_for(upstream.url), env={"UP_KEY": "k"})
    client = openai.AsyncOpenAI(base_url=d.v1, api_key="x", max_retries=0)
    stream = await client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = aiter(stream)
    first = await anext(chunks)
    d.proc.send_signal(signal.SIGINT)
    rest = [chunk async for chunk in chunks]  # the stream in flight still ends whole
    text = "".join(c.choices[0].delta.content or "" for c in [first, *rest] if c.choices)
    assert text == " ".join(["w"] * 30)
    assert await asyncio.to_thread(d.proc.wait, 15) == 0
    await client.close()
    [line] = [x for x in d.output().splitlines() if "draining" in x]
    assert re.search(
        r"draining 1 request in flight until \d\d:\d\d:\d\d \(server.shutdown_timeout 10s\); "
        r"press Ctrl\+C again to exit at once",
        line,
    ), line
    assert "stopping: no requests in flight" not in d.output()


def test_an_ipv6_listen_address_is_written_in_brackets(tmp_path: Path, sock_dir: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(MINIMAL)
    sock = sock_dir / "admin.sock"
    serve = ("serve", "--config", str(cfg), "--host", "::1", "--port", "0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "aigw", *serve, "--admin-socket", str(sock)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=cli_env(),
    )
    try:
        url = serving_url(proc)
        assert re.fullmatch(r"http://\[::1\]:\d+/v1", url), url
        port = int(url.rsplit(":", 1)[1].removesuffix("/v1"))
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
        answer = client.chat.completions.create(
            model="mock", messages=[{"role": "user", "content": "ping"}]
        )
        assert answer.choices[0].message.content == "You said: ping"
        client.close()
        status = run_cli("status", "--json", "--admin-socket", str(sock))
        assert json.loads(status.stdout)["listen"] == f"http://[::1]:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert proc.stdout is not None
        proc.stdout.close()
