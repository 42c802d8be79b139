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
import termios
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


def run(app: typer.Typer, *args: str, columns: int | None = None) -> Any:
    """`aigw lb stats ARGS` (not on a terminal); `columns`: $COLUMNS, else unset."""
    env = {"COLUMNS": str(columns) if columns else None}
    return CliRunner().invoke(app, ["lb", "stats", *args], env=env, catch_exceptions=False)


def drawn(app: typer.Typer, sock_dir: Path, snapshot: dict[str, Any], columns: int) -> list[str]:
    """The lines `aigw lb stats --once` prints for `snapshot` at `columns` wide."""
    with AdminStub(sock_dir / "wide.sock", [snapshot]) as stub:
        result = run(app, "--once", "--admin-socket", str(stub.path), columns=columns)
    assert result.exit_code == 0, result.output
    return list(result.stdout.splitlines())


def cell(lines: list[str], header: str, row: int) -> str:
    """The text of a right-aligned column's cell in table row `row` (from 0): it ends where
    its header ends and starts after the column before it."""
    headers = list(re.finditer(r"last error|\S+", lines[1]))
    index = next(i for i, m in enumerate(headers) if m.group() == header)
    start = headers[index - 1].end() if index else 0
    return lines[3 + row][start : headers[index].end()].strip()


def test_once_renders_a_table(app: typer.Typer, admin: AdminStub) -> None:
    result = run(app, "--once", "--admin-socket", str(admin.path))
    assert result.exit_code == 0, result.output
    out = result.stdout
    lines = out.splitlines()
    assert lines[0].startswith("aigw lb · uptime 1h 02m · ")
    assert lines[0].endswith("healthy 3/4 upstreams")
    assert "✓ openai-backup/gpt-4o-mini" in out
    assert "✗ local/llama3.1:8b" in out  # unhealthy: a symbol, not colour alone
    assert re.search(r"✗ local/llama3\.1:8b\s+unhealthy\s+open\b", out)
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
    assert "healthy 1/1 upstreams" in table.stdout

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


def test_at_80_columns_the_last_error_stays_and_hidden_columns_are_named(
    app: typer.Typer, sock_dir: Path
) -> None:
    lines = drawn(app, sock_dir, make_snapshot(), 80)
    assert max(len(line) for line in lines) <= 80
    text = " ".join(" ".join(lines).split())
    # The one thing needed when a target is down: in full, under the table.
    assert "✗ local/llama3.1:8b: connect: connection refused (127.0.0.1:11434)" in text
    hidden = next(line for line in lines if line.startswith("hidden to fit 80 columns: "))
    header = lines[1]
    for column in hidden.split(": ", 1)[1].split(" (")[0].split(", "):
        assert column in {c.header for c in lb._COLUMNS}
        assert f" {column} " not in f" {header} "
    assert "strategy" in hidden and "probe" in hidden


LONG_ERROR = (
    "read: upstream timed out after 30.0s waiting for the first byte of a streamed answer "
    "(eu-west-1 endpoint)"
)


def wide_snapshot() -> dict[str, Any]:
    """Long upstream ids and a long error, as a real deployment has them."""
    clock = FakeClock()
    models = {
        "gpt-4o-mini": ModelConfig(
            strategy="round_robin",
            targets=(
                TargetConfig("azure-openai-eu-west-production", "gpt-4o-mini-2024-07-18", 1),
                TargetConfig("openai-backup-us-east", "gpt-4o-mini-2024-07-18", 1),
            ),
        )
    }
    balancers = Balancers(models, HealthConfig(min_requests=3), clock=clock, rng=random.Random(1))
    mb = balancers.get("gpt-4o-mini")
    assert mb is not None
    for _ in range(20):
        lease = mb.acquire()
        assert lease is not None
        clock.now += 0.25
        if lease.target.provider.startswith("azure"):
            lease.failure(LONG_ERROR)
        else:
            lease.success()
    data = balancers.snapshot().to_dict()
    data["uptime"] = 600.0
    return data


@pytest.mark.parametrize("width", [160, 220])
def test_wide_terminals_show_targets_and_errors_in_full(
    app: typer.Typer, sock_dir: Path, width: int
) -> None:
    lines = drawn(app, sock_dir, wide_snapshot(), width)
    text = "\n".join(lines)
    assert max(len(line) for line in lines) <= width
    assert "…" not in text  # nothing cut while the terminal has room
    assert "azure-openai-eu-west-production/gpt-4o-mini-2024-07-18" in text
    assert "openai-backup-us-east/gpt-4o-mini-2024-07-18" in text
    assert LONG_ERROR in " ".join(text.split())  # in full; under the table it may wrap
    assert "hidden" not in text
    for column in lb._COLUMNS:
        if column.header != "last error":
            assert column.header in lines[1]


def test_piped_output_is_the_whole_table_without_trailing_spaces(
    app: typer.Typer, admin: AdminStub
) -> None:
    result = run(app, "--admin-socket", str(admin.path))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(line == line.rstrip() for line in lines)
    for column in lb._COLUMNS:
        assert column.header in lines[1]
    assert "hidden" not in result.stdout
    assert "quit" not in result.stdout  # no live view, no key hint


def test_err_percent_counts_what_req_and_err_count(app: typer.Typer, sock_dir: Path) -> None:
    """Active probes fill the health window but are not client requests: err% must not mix
    the two (it did: window errors / window attempts beside req since start)."""
    clock = FakeClock()
    health = HealthConfig(min_requests=3, error_rate_threshold=0.9, check_interval=10.0)
    models = {"m": ModelConfig(targets=(TargetConfig("up", "model"),))}
    balancers = Balancers(models, health, clock=clock, rng=random.Random(1))
    mb = balancers.get("m")
    assert mb is not None
    for _ in range(8):  # 8 client requests: 6 good, 2 failed
        lease = mb.acquire()
        assert lease is not None
        clock.now += 0.1
        if _ < 2:
            lease.failure("HTTP 502")
        else:
            lease.success()
    for _ in range(4):  # 4 failed active probes: in the window, not in req/err
        clock.now += 10.0
        for target in balancers.targets_for_probe():
            balancers.record_probe(target, False, "HTTP 503")
    data = balancers.snapshot().to_dict()
    data["uptime"] = 60.0
    [target] = data["models"][0]["targets"]
    assert (target["requests"], target["errors"], target["window_requests"]) == (8, 2, 12)

    lines = drawn(app, sock_dir, data, 300)
    assert [cell(lines, name, 0) for name in ("req", "err", "err%")] == ["8", "2", "25%"]
    # The health window, honestly labelled: 2 + 4 probe errors in 8 + 4 attempts.
    assert cell(lines, "window", 0) == "6/12"


def shared_upstream_snapshot() -> dict[str, Any]:
    """One upstream under two gateway models: down (its breaker open) for one of them."""
    clock = FakeClock()
    shared = TargetConfig("openai", "gpt-4o-mini")
    models = {
        "fast": ModelConfig(targets=(shared,)),
        "cheap": ModelConfig(targets=(shared, TargetConfig("local", "llama3.1:8b"))),
    }
    balancers = Balancers(models, HealthConfig(min_requests=3), clock=clock, rng=random.Random(1))
    for name in ("fast", "cheap"):
        mb = balancers.get(name)
        assert mb is not None
        for _ in range(10):
            lease = mb.acquire()
            assert lease is not None
            clock.now += 0.1
            if name == "cheap" and lease.target.provider == "openai":
                lease.failure("HTTP 500")
            else:
                lease.success()
    data = balancers.snapshot().to_dict()
    data["uptime"] = 60.0
    return data


def test_healthy_counts_distinct_upstreams() -> None:
    snapshot = shared_upstream_snapshot()
    pairs = [(m["name"], t["id"], t["health"]) for m in snapshot["models"] for t in m["targets"]]
    assert ("fast", "openai/gpt-4o-mini", "healthy") in pairs
    assert ("cheap", "openai/gpt-4o-mini", "unhealthy") in pairs
    # Two upstreams (not three model-target pairs); openai is down for one of its models.
    assert lb.lb_header(snapshot, None, 2.0).endswith(" · healthy 1/2 upstreams")


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


class LiveView:
    """`aigw lb stats` (live) on a real pseudo-terminal: what it draws, keys typed into it, and
    the terminal's modes, read on the side the program does not hold."""

    def __init__(self, stub: AdminStub, columns: int = 100) -> None:
        self.stub = stub
        primary, self.terminal = pty.openpty()
        self.primary = primary
        argv = ["lb", "stats", "--interval", "0.1", "--admin-socket", str(stub.path)]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _LB_ONLY_APP, *argv],
            stdin=self.terminal,
            stdout=self.terminal,
            stderr=self.terminal,
            env={**os.environ, "COLUMNS": str(columns), "TERM": "xterm"},
            cwd=Path(__file__).parent.parent,
        )
        self.output = b""

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")

    def echo_on(self) -> bool:
        return bool(termios.tcgetattr(self.terminal)[3] & termios.ECHO)

    def read_until(self, done: Any, timeout: float = 30) -> None:
        """Read what is drawn until `done()` holds (or the program ended); fails at timeout."""
        deadline = time.monotonic() + timeout
        while not done() and self.proc.poll() is None:
            assert time.monotonic() < deadline, self.text
            self.output += read_available(self.primary)
        self.output += read_available(self.primary)

    def type(self, keys: bytes) -> None:
        os.write(self.primary, keys)

    def wait(self, timeout: float = 30) -> int:
        """The exit code; everything drawn up to the exit is in `output`."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, "still running: " + self.text
            self.output += read_available(self.primary)
        self.output += read_available(self.primary)
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.primary)
        os.close(self.terminal)


@pytest.fixture
def live(sock_dir: Path) -> Iterator[LiveView]:
    snapshots = [make_snapshot(uptime=100.0 + i, extra_requests=5 * i) for i in range(50)]
    with AdminStub(sock_dir / "admin.sock", snapshots) as stub:
        view = LiveView(stub)
        try:
            yield view
        finally:
            view.close()


@pytest.mark.parametrize("key", [b"q", b"Q", b"\x1b"], ids=["q", "Q", "Esc"])
def test_live_quits_on_q_and_esc_and_restores_the_terminal(live: LiveView, key: bytes) -> None:
    assert live.echo_on()
    live.read_until(lambda: live.stub.hits >= 3 and "req/s over" in live.text)
    assert not live.echo_on()  # cbreak, no echo, while live
    live.type(key)
    assert live.wait() == 0, live.text
    assert live.echo_on()  # restored
    assert "Traceback" not in live.text


def test_help_says_how_to_quit(app: typer.Typer) -> None:
    result = CliRunner().invoke(app, ["lb", "stats", "--help"], terminal_width=100)
    assert "q, Esc or Ctrl+C quits" in " ".join(result.output.split())


def test_live_footer_says_how_to_quit(live: LiveView) -> None:
    live.read_until(lambda: "req/s over" in live.text)
    assert "q, Esc or Ctrl+C quits" in live.text
    live.type(b"q")
    assert live.wait() == 0


def test_arrow_keys_neither_quit_nor_show(live: LiveView) -> None:
    live.read_until(lambda: live.stub.hits >= 2)
    live.type(b"\x1b[A")  # arrow up: starts with Esc, is not Esc
    live.type(b"xyz")
    hits = live.stub.hits
    live.read_until(lambda: live.stub.hits >= hits + 3)
    assert live.proc.poll() is None, live.text  # still running
    assert "xyz" not in live.text and "^[[A" not in live.text  # typed keys are not echoed
    live.type(b"q")
    assert live.wait() == 0


def test_live_redraws_in_place_and_exits_0_on_ctrl_c(live: LiveView) -> None:
    live.read_until(lambda: live.stub.hits >= 4)
    live.proc.send_signal(signal.SIGINT)  # Ctrl+C
    assert live.wait() == 0, live.text
    assert live.echo_on()
    assert "Traceback" not in live.text
    assert "req/s over" in live.text  # later frames show the rate over the interval
    assert "\x1b[" in live.text  # drawn with cursor movement, in place


def test_a_daemon_that_goes_away_leaves_its_error_on_screen(live: LiveView) -> None:
    live.read_until(lambda: live.stub.hits >= 3)
    live.stub.__exit__()  # the daemon stops: its socket refuses connections
    assert live.wait() == 1, live.text
    assert live.echo_on()
    text = live.text
    error = text.rindex("error:")
    # The daemon's socket refuses (or, mid-request, drops) the connection: one line about it.
    assert "admin socket" in ANSI.sub("", text[error:]).splitlines()[0]
    # Nothing drawn after the error moves the cursor back over it or erases it.
    assert not re.search(r"\x1b\[\d*[AFJK]", text[error:]), repr(text[error:])
    assert "Traceback" not in text


def test_a_target_paused_by_its_upstreams_429_says_so_and_for_how_long() -> None:
    snapshot = {
        "uptime": 10.0,
        "models": [
            {
                "name": "gpt",
                "strategy": "round_robin",
                "targets": [
                    {
                        "id": "openai/gpt-4o",
                        "health": "degraded",
                        "circuit": "closed",
                        "cooling_for": 19.2,
                        "requests": 5,
                        "errors": 0,
                        "throttles": 1,
                        "last_error": "HTTP 429: Rate limit reached",
                    }
                ],
            }
        ],
    }
    text = "\n".join(_render(lb.lb_table(snapshot, None, 2.0, 160)))
    assert "429 20s" in text and "HTTP 429: Rate limit reached" in text
