"""`aigw serve --workers 2` (a real supervisor, real worker processes, a real redis-server): a
worker that dies in the middle of a reload is reported as one JSON error the CLI can show, and
the supervisor writes an IPv6 listen address in brackets."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aigw.admin_client import AdminClient
from aigw.errors import AdminError
from aigw.hooks.base import Hook
from tests.conftest import cli_env

pytestmark = pytest.mark.slow


class DiesOnce(Hook):
    """A user hook that kills the process building it, the first time any process does: the
    worker asked first dies in the middle of its reload, the next one reloads."""

    def __init__(self, *, marker: str, **options: Any) -> None:
        super().__init__(marker=marker, **options)
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(17)


def config_text(redis_url: str, extra: str = "") -> str:
    return (
        f'version: 1\nstate: {{backend: redis, url: "{redis_url}"}}\n'
        "providers: {m: {type: mock}}\nmodels: {mock: {targets: [{provider: m}]}}\n"
        "health: {check_interval: 0s}\n" + extra
    )


def status(sock: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "aigw", "status", "--json", "--admin-socket", str(sock)],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


class Supervisor:
    """`aigw serve --workers 2` in a subprocess, logging to a file."""

    def __init__(self, config: Path, sock: Path, log: Path, host: str) -> None:
        self.sock = sock
        self.log = log
        serve = ("serve", "--config", str(config), "--workers", "2", "--host", host)
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "aigw", *serve, "--port", "0", "--admin-socket", str(sock)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=cli_env(),
            )
        deadline = time.monotonic() + 60
        while not (found := re.search(r"serving (\S+)/v1 with 2 workers", log.read_text())):
            assert self.proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        self.url = found.group(1)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


@pytest.fixture
def supervisor(redis_url: str, tmp_path: Path, sock_dir: Path) -> Iterator[Callable[..., Any]]:
    started: list[Supervisor] = []

    def start(config: Path, host: str = "127.0.0.1") -> Supervisor:
        started.append(Supervisor(config, sock_dir / "admin.sock", tmp_path / "log", host))
        return started[-1]

    yield start
    for one in started:
        if one.proc.poll() is None:
            one.proc.kill()
            one.proc.wait(10)


def test_a_worker_dying_mid_reload_is_reported_as_one_json_error(
    redis_url: str, tmp_path: Path, supervisor: Callable[..., Supervisor]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(config_text(redis_url))
    running = supervisor(config)
    pids = [w["pid"] for w in status(running.sock)["workers"]]
    marker = tmp_path / "died"
    hook = f'{{"tests.test_workers_reload:DiesOnce": {{marker: "{marker}"}}}}'
    config.write_text(config_text(redis_url, f"hooks: [validation, {hook}]\n"))
    with pytest.raises(AdminError) as failed:
        AdminClient(running.sock, timeout=60).post_json("/reload")
    message = str(failed.value)
    assert "non-JSON" not in message
    assert f"worker 0 (pid {pids[0]}) did not answer" in message
    assert message.endswith("1 of 2 workers reloaded")
    assert "\n" not in message
    assert marker.exists()  # it really died building the new hook

    # The dead worker is replaced; the other one kept running.
    deadline = time.monotonic() + 30
    while True:
        workers = status(running.sock)["workers"]
        if workers[0]["pid"] != pids[0] and all(w["running"] for w in workers):
            break
        assert time.monotonic() < deadline, workers
        time.sleep(0.1)
    assert workers[1]["pid"] == pids[1]
    assert running.stop() == 0
    assert "restarting it" in running.log.read_text()


def test_the_supervisor_writes_an_ipv6_listen_address_in_brackets(
    redis_url: str, tmp_path: Path, supervisor: Callable[..., Supervisor]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(config_text(redis_url))
    running = supervisor(config, host="::1")
    assert re.fullmatch(r"http://\[::1\]:\d+", running.url), running.url
    assert status(running.sock)["listen"] == running.url
    assert running.stop() == 0
