"""CLI start-up: wall time of `aigw` client commands against a running daemon (issue 7).

    python bench/startup.py [--runs 10] [--starts 5] [--only NAME[,NAME...]] [--json FILE]

1. starts one `python -m aigw serve` (built-in mock provider, no latency; sqlite state, auth,
   quota and rate limit on) on a free port with its admin socket in a temp dir, and sends a few
   requests so `quota show` and `lb stats` have rows to draw;
2. runs each command `--runs` times as a fresh process (stdout a pipe, as in a script) and
   prints the median and the best wall time in ms, spawn to exit, the median CPU time (user +
   system: less moved by other load on the machine), and checks its exit code;
3. spawns `python -m aigw serve` `--starts` times and POSTs /v1/chat/completions every 5 ms until
   the first 200: start-up to first served request (the same measure as bench/soak.py).

The commands run from this checkout (PYTHONPATH is set to it), not from whatever `aigw` is on
PATH. `python -c pass` is the floor: the interpreter and the site packages alone. `--repo DIR`
measures another checkout (e.g. an older commit from `git archive`), `--compile` byte-compiles
it first: with PYTHONDONTWRITEBYTECODE=1 (set on this machine) and no `__pycache__`, every run
compiles aigw's own modules from source (~40 of them for `serve`).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.005
CHAT_BODY = json.dumps(
    {"model": "mock", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
).encode()


@dataclass(slots=True)
class Timing:
    name: str
    argv: list[str]
    runs_ms: list[float]
    cpu_ms: list[float]  # user + system time of the process: less moved by a busy machine
    instructions: int | None = None  # counted by valgrind (--instructions): not moved at all

    @property
    def median_ms(self) -> float:
        return statistics.median(self.runs_ms)

    @property
    def best_ms(self) -> float:
        return min(self.runs_ms)

    @property
    def median_cpu_ms(self) -> float:
        return statistics.median(self.cpu_ms)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp: Path, port: int, tag: str) -> Path:
    config = tmp / f"aigw-{tag}.yaml"
    config.write_text(
        f"""\
version: 1
server: {{host: 127.0.0.1, port: {port}, admin_socket: {tmp}/admin-{tag}.sock}}
state: {{backend: sqlite, path: {tmp}/state-{tag}.db}}
auth:
  keys:
    - {{key: "${{AIGW_BENCH_KEY}}", tenant: bench}}
providers:
  mock-a: {{type: mock, mock: {{latency: 0s}}}}
  mock-b: {{type: mock, mock: {{latency: 0s}}}}
models:
  mock:
    strategy: round_robin
    targets: [{{provider: mock-a, model: mock}}, {{provider: mock-b, model: mock}}]
rate_limit: {{requests_per_second: 1000000, burst: 1000000}}
quota: {{default: 1000000000, period: daily}}
hooks: [validation]
metrics: {{enabled: true}}
"""
    )
    return config


class Daemon:
    """One `aigw serve`, in its own process group."""

    def __init__(self, tmp: Path, env: dict[str, str], tag: str, repo: Path) -> None:
        self.port = free_port()
        self.config = write_config(tmp, self.port, tag)
        self.admin_socket = tmp / f"admin-{tag}.sock"
        self.key = env["AIGW_BENCH_KEY"]
        self.log = tmp / f"aigw-{tag}.log"
        argv = [sys.executable, "-m", "aigw", "serve", "--config", str(self.config)]
        with self.log.open("wb") as out:
            self.spawned = time.perf_counter()
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=repo,
                start_new_session=True,
            )

    def chat(self) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.key}"}
        try:
            conn.request("POST", "/v1/chat/completions", CHAT_BODY, headers)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    def wait_first_200(self) -> float:
        """Seconds from spawn to the first 200, polling every 5 ms."""
        last = ""
        while time.perf_counter() - self.spawned < START_TIMEOUT_S:
            if self.proc.poll() is not None:
                raise SystemExit(
                    f"aigw exited with {self.proc.returncode}:\n{self.log.read_text()[-2000:]}"
                )
            try:
                if self.chat() == 200:
                    return time.perf_counter() - self.spawned
                last = "not 200"
            except OSError as exc:
                last = str(exc)
            time.sleep(POLL_INTERVAL_S)
        raise SystemExit(f"aigw served no 200 within {START_TIMEOUT_S:.0f} s ({last})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def time_command(name: str, argv: list[str], env: dict[str, str], runs: int, repo: Path) -> Timing:
    times, cpu = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(
            argv, env=env, cwd=repo, stdin=subprocess.DEVNULL, capture_output=True
        )
        times.append((time.perf_counter() - start) * 1000)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        used = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        cpu.append(used * 1000)
        if done.returncode != 0:
            raise SystemExit(
                f"{name}: exit {done.returncode}\n{done.stderr.decode(errors='replace')[-2000:]}"
            )
    return Timing(name, argv, times, cpu)


def count_instructions(argv: list[str], env: dict[str, str], repo: Path) -> int:
    """Instructions one run executes, counted by valgrind's cachegrind: the same on a busy
    machine as on an idle one (a run takes ~50x longer under it)."""
    done = subprocess.run(
        [
            "valgrind",
            "--tool=cachegrind",
            "--cache-sim=no",
            "--cachegrind-out-file=/dev/null",
            *argv,
        ],
        env=env,
        cwd=repo,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    match = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if done.returncode != 0 or match is None:
        raise SystemExit(f"valgrind {argv}: exit {done.returncode}\n{done.stderr[-2000:]}")
    return int(match.group(1).replace(",", ""))


def commands(daemon: Daemon) -> dict[str, list[str]]:
    aigw = [sys.executable, "-m", "aigw"]
    sock = ["--admin-socket", str(daemon.admin_socket)]
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "aigw --help": [*aigw, "--help"],
        "aigw validate demo.yaml": [*aigw, "validate", "sample-configs/demo.yaml"],
        "aigw status": [*aigw, "status", *sock],
        "aigw quota show": [*aigw, "quota", "show", *sock],
        "aigw quota show --json": [*aigw, "quota", "show", "--json", *sock],
        "aigw lb stats --once": [*aigw, "lb", "stats", "--once", *sock],
        "aigw lb stats --json": [*aigw, "lb", "stats", "--json", *sock],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=10, help="runs per command (median shown)")
    p.add_argument("--starts", type=int, default=5, help="serve start-ups (median shown); 0: none")
    p.add_argument("--only", help="comma-separated command names to run (see the table)")
    p.add_argument("--json", type=Path, help="also write the raw figures here")
    p.add_argument(
        "--compile",
        action="store_true",
        help="byte-compile the checkout's aigw/ first (what `pip install` does); without it, "
        "with PYTHONDONTWRITEBYTECODE set, every run compiles aigw from source",
    )
    p.add_argument(
        "--instructions",
        action="store_true",
        help="also count each command's instructions once under valgrind (a steady figure)",
    )
    p.add_argument(
        "--repo", type=Path, default=REPO_DIR, help="the checkout whose aigw runs (default: this)"
    )
    args = p.parse_args(argv)
    if args.runs < 1 or args.starts < 0:
        p.error("--runs must be positive and --starts not negative")

    env = dict(os.environ)
    repo = args.repo.resolve()
    if args.compile:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(repo / "aigw")], check=True)
    cached = any((repo / "aigw" / "__pycache__").glob("cli*.pyc")) or any(
        (repo / "aigw" / "cli" / "__pycache__").glob("*.pyc")
    )
    print(
        f"aigw from {repo}; bytecode {'cached' if cached else 'not cached'}"
        f" (PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '')})"
    )
    env["PYTHONPATH"] = os.pathsep.join([str(repo), *filter(None, [os.environ.get("PYTHONPATH")])])
    for name in ("AIGW_CONFIG", "AIGW_ADMIN_SOCKET"):
        env.pop(name, None)
    env["AIGW_BENCH_KEY"] = "sk-bench-" + secrets.token_urlsafe(24)
    env["COLUMNS"] = "120"

    timings: list[Timing] = []
    starts_ms: list[float] = []
    with tempfile.TemporaryDirectory(prefix="aigw-startup-") as tmp_name:
        tmp = Path(tmp_name)
        daemon = Daemon(tmp, env, "client", repo)
        try:
            daemon.wait_first_200()
            for _ in range(20):  # rows for `quota show` and `lb stats`
                daemon.chat()
            wanted = set(args.only.split(",")) if args.only else None
            for name, cmd in commands(daemon).items():
                if wanted is None or name in wanted:
                    t = time_command(name, cmd, env, args.runs, repo)
                    if args.instructions:
                        t.instructions = count_instructions(cmd, env, repo)
                    timings.append(t)
                    counted = f"  {t.instructions / 1e6:7,.0f} M instr" if t.instructions else ""
                    print(
                        f"{name:<26} median {t.median_ms:6.0f} ms  best {t.best_ms:6.0f} ms"
                        f"  cpu {t.median_cpu_ms:6.0f} ms{counted}"
                    )
        finally:
            daemon.stop()
        for i in range(args.starts):
            start = Daemon(tmp, env, f"start{i}", repo)
            try:
                starts_ms.append(start.wait_first_200() * 1000)
            finally:
                start.stop()
    if starts_ms:
        runs = ", ".join(f"{s:.0f}" for s in starts_ms)
        print(
            f"{'serve to first 200':<26} median {statistics.median(starts_ms):6.0f} ms  "
            f"best {min(starts_ms):6.0f} ms  ({runs})"
        )
    if args.json:
        data = {
            "python": sys.version.split()[0],
            "repo": str(repo),
            "bytecode_cached": cached,
            "runs": args.runs,
            "commands": [
                asdict(t) | {"median_ms": t.median_ms, "median_cpu_ms": t.median_cpu_ms}
                for t in timings
            ],
            "serve_to_first_200_ms": starts_ms,
        }
        args.json.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
