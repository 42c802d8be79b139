"""Shared fixtures: real upstreams on loopback, an in-process gateway, and `aigw serve` as a
subprocess. Every server binds port 0 on 127.0.0.1, so tests run in parallel safely."""

from __future__ import annotations

import dataclasses
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aigw.config import (
    Config,
    ModelConfig,
    ProviderConfig,
    ServerConfig,
    StateConfig,
    TargetConfig,
)
from tests.redis_server import REDIS_SERVER, SKIP_REASON, RedisServer
from tests.upstream import Upstream


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing a test does may touch the user's real config, data or runtime directories."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(_short_tmp()))
    monkeypatch.delenv("AIGW_CONFIG", raising=False)
    monkeypatch.delenv("AIGW_ADMIN_SOCKET", raising=False)


def _short_tmp() -> Path:
    # Unix socket paths are limited to ~107 bytes; pytest's tmp_path can be longer.
    return Path(tempfile.mkdtemp(prefix="aigw-", dir="/tmp"))


@pytest.fixture
def sock_dir() -> Path:
    return _short_tmp()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = await Upstream().start()
    yield up
    await up.stop()


@pytest.fixture
async def upstream2() -> AsyncIterator[Upstream]:
    up = await Upstream().start()
    yield up
    await up.stop()


def make_config(
    upstreams: dict[str, str],
    *,
    model: str = "gpt-test",
    upstream_model: str = "up-model",
    sock: Path,
    **sections: Any,
) -> Config:
    """A Config with one model spread over the given providers (name → base URL)."""
    providers = {
        name: ProviderConfig(
            name=name, type="openai", base_url=url, timeout=5.0, connect_timeout=2.0
        )
        for name, url in upstreams.items()
    }
    targets = tuple(TargetConfig(provider=name, model=upstream_model) for name in upstreams)
    server = dataclasses.replace(
        ServerConfig(port=0, admin_socket=str(sock / "admin.sock"), shutdown_timeout=5.0),
        **sections.pop("server", {}),
    )
    return Config(
        server=server,
        state=sections.pop("state", StateConfig(backend="memory")),
        providers=providers,
        models={model: ModelConfig(name=model, targets=targets)},
        **sections,
    )


class RunningGateway:
    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self.url = f"http://127.0.0.1:{gateway.bound_port}"
        self.v1 = self.url + "/v1"


@pytest.fixture
async def start_gateway() -> AsyncIterator[Callable[[Config], Any]]:
    """Start an in-process Gateway for a Config; stopped at the end of the test."""
    from aigw.server import Gateway

    started: list[Gateway] = []

    async def start(config: Config) -> RunningGateway:
        gw = Gateway(config)
        await gw.start()
        started.append(gw)
        return RunningGateway(gw)

    yield start
    for gw in started:
        await gw.stop()


# --- `aigw serve` as a subprocess ---------------------------------------------------------------

_SERVING = re.compile(r"serving (http://[\d.]+:\d+)/v1")


class Daemon:
    def __init__(self, proc: subprocess.Popen[str], url: str, socket_path: Path, log: Path) -> None:
        self.proc = proc
        self.url = url
        self.v1 = url + "/v1"
        self.socket = socket_path
        self.log = log

    def output(self) -> str:
        return self.log.read_text()

    def terminate(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("AIGW_CONFIG", None)
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


def start_daemon(
    config_text: str,
    tmp: Path,
    sock: Path,
    *,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> Daemon:
    """Write the YAML config and run `python -m aigw serve` until it says where it listens."""
    cfg = tmp / "config.yaml"
    cfg.write_text(config_text)
    socket_path = sock / "admin.sock"
    log = tmp / f"daemon-{time.monotonic_ns()}.log"
    with log.open("w") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aigw",
                "serve",
                "--config",
                str(cfg),
                "--port",
                "0",
                "--admin-socket",
                str(socket_path),
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=cli_env(env),
            text=True,
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = log.read_text()
        m = _SERVING.search(text)
        if m:
            return Daemon(proc, m.group(1), socket_path, log)
        if proc.poll() is not None:
            raise RuntimeError(f"aigw serve exited {proc.returncode}:\n{text}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"aigw serve did not start:\n{log.read_text()}")


@pytest.fixture
def daemon_factory(tmp_path: Path, sock_dir: Path) -> Iterator[Callable[..., Daemon]]:
    daemons: list[Daemon] = []

    def factory(config_text: str, **kwargs: Any) -> Daemon:
        d = start_daemon(config_text, tmp_path, sock_dir, **kwargs)
        daemons.append(d)
        return d

    yield factory
    for d in daemons:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(10)


# --- a real redis-server ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server per test process (xdist worker), emptied before each test that uses it
    through `redis_url`."""
    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_session: RedisServer) -> str:
    import redis

    with redis.Redis.from_url(redis_session.url) as client:
        client.flushall()
    return redis_session.url


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (to kill and restart), with fsynced AOF so a kill
    loses nothing that was acknowledged."""
    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)
    server = RedisServer(tmp_path / "redis", appendonly=True).start()
    yield server
    server.stop()


def read_available(fd: int, wait: float = 0.05) -> bytes:
    """Everything a pseudo-terminal or pipe has to give without blocking longer than `wait`."""
    data = b""
    while select.select([fd], [], [], wait)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the other side closed
            break
        if not chunk:
            break
        data += chunk
    return data
