"""`aigw lb stats` against a real snapshot served over a real Unix socket (stdlib HTTP server)."""

from __future__ import annotations

import io
import json
import os
import pty
import random
import re
import signal
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from aigw.balancer import Balancers
from aigw.cli import lb
from aigw.config import HealthConfig, ModelConfig, TargetConfig
from tests.clock import FakeClock
from tests.conftest import read_available

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def make_snapshot(uptime: float = 3725.0, extra_requests: int = 0) -> dict[str, Any]:
    """A real `Balancers.snapshot().to_dict()` plus uptime, as `GET /lb/stats` sends it."""
    clock = FakeClock()
    models = {
        "gpt-4o-mini": ModelConfig(
            strategy="round_robin",
            targets=(
                TargetConfig("openai", "gpt-4o-mini-2024-07-18", 3),
                TargetConfig("openai-backup", "gpt-4o-mini", 1),
                TargetConfig("local", "llama3.1:8b", 1),
            ),
        ),
        "mock": ModelConfig(strategy="latency", targets=(TargetConfig("mock", "mock"),)),
    }
    balancers = Balancers(models, HealthConfig(min_requests=3), clock=clock, rng=random.Random(1))
    mb = balancers.get("gpt-4o-mini")
    assert mb is not None
    for _ in range(50 + extra_requests):
        lease = mb.acquire()
        assert lease is not None
        clock.now += 0.12
        if lease.target.provider == "local":
            lease.failure("connect: connection refused (127.0.0.1:11434)")
        else:
            lease.success()
    data = balancers.snapshot().to_dict()
    data["uptime"] = uptime
    return data


class AdminStub:
    """Serves `GET /lb/stats` on a Unix socket from a list of snapshots (the last one repeats)."""

    def __init__(self, path: Path, snapshots: list[dict[str, Any]]) -> None:
        self.path = path
        self.snapshots = snapshots
        self.hits = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/lb/stats":
                    self.send_error(404)
                    return
                body = json.dumps(stub.snapshots[min(stub.hits, len(stub.snapshots) - 1)])
                stub.hits += 1
                raw = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def address_string(self) -> str:
                return "admin-socket"

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> AdminStub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def admin(sock_dir: Path) -> Iterator[AdminStub]:
    with AdminStub(sock_dir / "admin.sock", [make_snapshot()]) as stub:
        yield stub


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:  # a group, so the command path is `lb stats` as in aigw
        pass

    lb.register(app)
    return app


def run(app: typer.Typer, *args: str) -> Any:
    return CliRunner().invoke(app, ["lb", "stats", *args], catch_exceptions=False)


def test_once_renders_a_table(app: typer.Typer, admin: AdminStub) -> None:
    result = run(app, "--once", "--admin-socket", str(admin.path))
    assert result.exit_code == 0, result.output
    out = result.stdout
    lines = out.splitlines()
    assert lines[0].startswith("aigw lb · uptime 1h 02m · ")
    assert lines[0].endswith("healthy 3/4")
    assert "✓ openai-backup/gpt-4o-mini" in out
    assert "✗ local/llama3.1:8b" in out  # unhealthy: a symbol, not colour alone
    assert re.search(r"✗ local/llama3\.1:8b\s+open\b", out)
    assert "mock/mock" in out
    assert admin.hits == 1


def test_piped_without_once_prints_one_snapshot_and_exits(
    app: typer.Typer, admin: AdminStub
) -> None:
    result = run(app, "--admin-socket", str(admin.path), "--interval", "0.1")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("aigw lb · uptime") == 1
    assert admin.hits == 1


def test_json_prints_the_snapshot(app: typer.Typer, admin: AdminStub) -> None:
    result = run(app, "--json", "--admin-socket", str(admin.path))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == admin.snapshots[0]


def test_model_filter(app: typer.Typer, admin: AdminStub) -> None:
    result = run(app, "--json", "--model", "mock", "--admin-socket", str(admin.path))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [m["name"] for m in data["models"]] == ["mock"]
    table = run(app, "--once", "--model", "mock", "--admin-socket", str(admin.path))
    assert "mock/mock" in table.stdout and "openai" not in table.stdout
    assert "healthy 1/1" in table.stdout

    missing = run(app, "--once", "--model", "nope", "--admin-socket", str(admin.path))
    assert missing.exit_code == 1
    assert "nope" in missing.stderr


def test_no_daemon_exits_1_with_one_line(app: typer.Typer, sock_dir: Path) -> None:
    result = run(app, "--once", "--admin-socket", str(sock_dir / "nobody.sock"))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no aigw daemon is running" in result.stderr


def _render(table: Any, width: int = 300, color: bool = False) -> list[str]:
    console = Console(
        file=io.StringIO(),
        width=width,
        force_terminal=color,
        color_system="standard" if color else None,
    )
    console.print(table)
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue().splitlines()


def test_table_fits_80_columns_by_dropping_low_priority_columns() -> None:
    snapshot = make_snapshot()
    wide = _render(lb.lb_table(snapshot, None, 2.0, 300))
    narrow = _render(lb.lb_table(snapshot, None, 2.0, 80))  # drawn on a 300-wide console
    assert max(len(line) for line in wide) > 80
    assert max(len(line) for line in narrow) <= 80  # fits on its own, rich did not squeeze it
    assert len(narrow) == len(wide)  # no row wrapped
    for column in ("model", "target", "circuit", "req/s", "err%", "p95"):
        assert column in narrow[0]
    for column in ("last error", "probe", "strategy"):
        assert column in wide[0] and column not in narrow[0]
    tiny = _render(lb.lb_table(snapshot, None, 2.0, 30))
    assert "target" in tiny[0] and "req/s" not in tiny[0]


def test_unhealthy_rows_stand_out_in_colour() -> None:
    lines = _render(lb.lb_table(make_snapshot(), None, 2.0, 120), color=True)
    bad = next(line for line in lines if "local/llama3.1:8b" in line)
    good = next(line for line in lines if "openai-backup/gpt-4o-mini" in line)
    assert "\x1b[31m" in bad  # red
    assert "\x1b[31m" not in good
    assert "✗" in ANSI.sub("", bad) and "✓" in ANSI.sub("", good)


def test_rates_over_the_interval() -> None:
    before = make_snapshot(uptime=100.0)
    after = make_snapshot(uptime=102.0, extra_requests=20)  # 20 more requests in 2 s
    header = lb.lb_header(after, before, 2.0)
    assert "10.0 req/s over 2.0s" in header
    lines = _render(lb.lb_table(after, before, 2.0, 300))
    rates = [float(x) for line in lines[2:] for x in re.findall(r"\s(\d+\.\d)\s", line)[:1]]
    assert sum(rates) == pytest.approx(10.0, abs=0.2)
    # Without a previous snapshot: the average since start.
    assert "req/s avg" in lb.lb_header(after, None, 2.0)
    # A restarted daemon (uptime went down) shows no rate rather than a negative one.
    assert "- req/s" in lb.lb_header(before, after, 2.0)


def test_client_command_does_not_import_aiohttp() -> None:
    code = (
        "import sys, aigw.cli.lb; print('aiohttp' in sys.modules, 'aigw.balancer' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["False", "False"]


# `aigw` with only the `lb` group, so this test depends on no other command module.
_LB_ONLY_APP = """
import typer
from aigw.cli import lb
app = typer.Typer(pretty_exceptions_enable=False)
app.callback()(lambda: None)
lb.register(app)
app()
"""


def test_live_redraws_on_a_terminal_and_exits_0_on_ctrl_c(sock_dir: Path) -> None:
    snapshots = [make_snapshot(uptime=100.0 + i, extra_requests=5 * i) for i in range(50)]
    with AdminStub(sock_dir / "admin.sock", snapshots) as stub:
        primary, secondary = pty.openpty()
        argv = ["lb", "stats", "--interval", "0.1", "--admin-socket", str(stub.path)]
        proc = subprocess.Popen(
            [sys.executable, "-c", _LB_ONLY_APP, *argv],
            stdin=secondary,
            stdout=secondary,
            stderr=secondary,
            env={**os.environ, "COLUMNS": "100", "TERM": "xterm"},
            cwd=Path(__file__).parent.parent,
        )
        os.close(secondary)
        output = b""
        try:
            deadline = time.monotonic() + 30
            while stub.hits < 4 and proc.poll() is None and time.monotonic() < deadline:
                output += read_available(primary)
            proc.send_signal(signal.SIGINT)  # Ctrl+C
            code = proc.wait(timeout=30)
            output += read_available(primary)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(primary)
    text = output.decode(errors="replace")
    assert stub.hits >= 4, text
    assert code == 0, text
    assert "Traceback" not in text
    assert "req/s over" in text  # later frames show the rate over the interval
    assert "\x1b[" in text  # drawn with cursor movement, in place
