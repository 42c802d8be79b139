"""What the redis store costs, and what `--workers 2` buys.

    python bench/redis_overhead.py [--requests 5000] [--duration 10] [--quick] [--without-hiredis]

Part 1, in process: the state work the proxy does for one request through the gateway's
admission (`aigw.limits`) — request bucket, token bucket and quota reserve, then quota commit and
token settle — done N times in a row, once over the sqlite store (+ in-memory limiter, the
default) and once over the redis store (+ shared limiter), then again with 16 requests at a
time. Reported: wall µs per request, gateway CPU µs per request, redis-server CPU µs per request
(from /proc) and Redis round trips per request (scripts the server ran, INFO commandstats).

Part 2, end to end: `aigw serve` (mock provider, rate limit and quota on every request) driven by
wrk with 16 connections: sqlite with one process, redis with one process, redis with
`--workers 2`. Reported: requests/s, p50, p99.

`--without-hiredis` hides the hiredis package (here and in the `aigw serve` processes), so
redis-py falls back to its pure-Python reply parser: run it and a plain run back to back to see
what hiredis buys.

Needs redis-server and wrk (Debian: apt-get install -y redis-server wrk). Everything listens on
127.0.0.1 on free ports in a temp dir and is stopped on exit. Nothing is pinned: on a 2-core
machine wrk, redis-server and the workers share the cores, so the workers' figure is a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
sys.path.insert(0, str(REPO_DIR))

CLK_TCK = os.sysconf("SC_CLK_TCK")
BODY = json.dumps(
    {"model": "mock", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 16}
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu(pid: int) -> float:
    """CPU of a process and its children (the supervisor's workers)."""
    total = cpu_seconds(pid)
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            total += tree_cpu(int(child))
    return total


@contextlib.contextmanager
def redis_server(tmp: Path) -> Iterator[tuple[str, int]]:
    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("redis-server is not installed (apt-get install -y redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp), "--save", "",
         "--appendonly", "no", "--logfile", str(tmp / "redis.log")],
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0", proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


# --- part 1: the state work of one request, in process ----------------------------------------


def scripts_run(port: int) -> int:
    """Scripts (EVALSHA) the redis-server has run: one per round trip of the store."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"INFO commandstats\r\n")
        data = b""
        while b"\r\n" not in data:
            data += sock.recv(65536)
        header, _, data = data.partition(b"\r\n")  # a bulk string: $<length>
        length = int(header[1:])
        while len(data) < length:
            data += sock.recv(65536)
    for line in data.decode().splitlines():
        if line.startswith("cmdstat_evalsha:"):
            return int(line.split("calls=", 1)[1].split(",", 1)[0])
    return 0


async def state_work(backend: str, url: str, redis_pid: int, tmp: Path, n: int) -> dict[str, Any]:
    from aigw.config import Config, QuotaConfig, RateLimitConfig, StateConfig
    from aigw.exchange import Usage
    from aigw.limits import Charge, build_limits
    from aigw.state import open_store

    state = StateConfig(backend=backend, url=url, path=str(tmp / f"{backend}.db"))
    store = await open_store(state)
    config = Config(
        state=state,
        rate_limit=RateLimitConfig(requests_per_second=1e6, burst=10**6, tokens_per_minute=10**9),
        quota=QuotaConfig(default=10**15),
    )
    built = build_limits(store, config)
    quota, admission = built.quota, built.admission
    usage = Usage(12, 30, 42)
    port = int(url.rsplit(":", 1)[1].split("/", 1)[0])

    async def one(i: int) -> None:
        # What the proxy does: take_request before the body, admit after it, settle at the end.
        tenant = f"tenant-{i % 50}"
        charge = Charge()
        charge.estimate = 60
        requests = await admission.take_request(tenant)
        await admission.admit(tenant, charge, requests, {})
        await admission.settle(tenant, charge, usage)

    for i in range(200):  # warm up: connections, scripts, sqlite rows
        await one(i)
    result: dict[str, Any] = {"backend": backend, "admission": type(admission).__name__}
    for label, batch in (("serial", 1), ("c16", 16)):
        scripts0 = scripts_run(port)
        cpu0, redis0, wall0 = time.process_time(), cpu_seconds(redis_pid), time.perf_counter()
        for start in range(0, n, batch):
            await asyncio.gather(*(one(i) for i in range(start, min(start + batch, n))))
        wall = time.perf_counter() - wall0
        result[label] = {
            "wall_us": wall / n * 1e6,
            "cpu_us": (time.process_time() - cpu0) / n * 1e6,
            "redis_cpu_us": (cpu_seconds(redis_pid) - redis0) / n * 1e6,
            "per_s": n / wall,
            "round_trips": (scripts_run(port) - scripts0) / n,
        }
    await quota.close()
    await store.close()
    return result


# --- part 2: end to end with wrk ----------------------------------------------------------------


def aigw_config(backend: str, url: str, tmp: Path) -> str:
    state = (
        f'{{backend: redis, url: "{url}"}}'
        if backend == "redis"
        else f'{{backend: sqlite, path: "{tmp / "e2e.db"}"}}'
    )
    return f"""\
version: 1
state: {state}
providers: {{mock: {{type: mock}}}}
models: {{mock: {{targets: [{{provider: mock}}]}}}}
health: {{check_interval: 0s}}
rate_limit: {{requests_per_second: 1000000, burst: 1000000, tokens_per_minute: 1000000000}}
quota: {{default: 1000000000000}}
metrics: {{enabled: false}}
"""


def run_wrk(url: str, duration: int, connections: int) -> dict[str, Any]:
    env = dict(os.environ, BENCH_BODY=BODY)
    done = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency",
         "-s", str(BENCH_DIR / "post.lua"), url + "/v1/chat/completions"],
        capture_output=True, text=True, env=env, timeout=duration + 60,
    )  # fmt: skip
    line = next(x for x in done.stdout.splitlines() if x.startswith("BENCH_RESULT "))
    data: dict[str, Any] = json.loads(line.split(" ", 1)[1])
    return data


def end_to_end(
    backend: str, workers: int, url: str, tmp: Path, duration: int, connections: int
) -> dict[str, Any]:
    config = tmp / f"{backend}-{workers}.yaml"
    config.write_text(aigw_config(backend, url, tmp))
    port = free_port()
    log = tmp / f"{backend}-{workers}.log"
    sock = Path(tempfile.mkdtemp(prefix="aigw-bench-", dir="/tmp")) / "admin.sock"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aigw", "serve", "--config", str(config), "--port", str(port),
             "--admin-socket", str(sock), "--workers", str(workers), "--log-level", "warning"],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO_DIR,
            env=dict(os.environ, PYTHONPATH=os.pathsep.join([*HIDDEN, str(REPO_DIR)])),
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"aigw did not start:\n{log.read_text()}")
            time.sleep(0.1)
        time.sleep(1.0 if workers == 1 else 3.0)  # every worker up
        run_wrk(base, 2, connections)  # warm-up
        cpu0 = tree_cpu(proc.pid)
        result = run_wrk(base, duration, connections)
        cpu = tree_cpu(proc.pid) - cpu0
        requests = max(1, result["requests"])
        errors = sum(v for k, v in result.items() if k.startswith("err_"))
        return {
            "backend": backend,
            "workers": workers,
            "per_s": result["requests"] / (result["duration_us"] / 1e6),
            "p50_ms": result["p50_us"] / 1000,
            "p99_ms": result["p99_us"] / 1000,
            "cpu_us": cpu / requests * 1e6,
            "errors": errors,
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


# --- main ------------------------------------------------------------------------------------

#: directories put first on the path of this process and of `aigw serve` (--without-hiredis)
HIDDEN: list[str] = []


def hide_hiredis(tmp: Path) -> None:
    """Make `import hiredis` fail, as on a machine without it: redis-py then parses replies in
    Python. Must run before anything imports redis."""
    shim = tmp / "no-hiredis"
    shim.mkdir()
    (shim / "hiredis.py").write_text('raise ImportError("hidden by bench/redis_overhead.py")\n')
    sys.path.insert(0, str(shim))
    HIDDEN.append(str(shim))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="part 1 requests per leg")
    parser.add_argument("--duration", type=int, default=10, help="part 2 seconds per leg")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="1000 requests, 3 s legs")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument(
        "--without-hiredis", action="store_true", help="redis-py's pure-Python reply parser"
    )
    parser.add_argument("--skip-e2e", action="store_true", help="part 1 only")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.duration = 1000, 3
    if shutil.which("wrk") is None and not args.skip_e2e:
        sys.exit("wrk is not installed (apt-get install -y wrk)")
    with tempfile.TemporaryDirectory(prefix="aigw-redis-bench-") as name:
        tmp = Path(name)
        if args.without_hiredis:
            hide_hiredis(tmp)
        from redis.utils import HIREDIS_AVAILABLE

        load = os.getloadavg()[0]
        parser_name = "hiredis" if HIREDIS_AVAILABLE else "pure Python"
        print(f"# {os.cpu_count()} CPUs, load average {load:.2f} at start; {parser_name} parser\n")
        with redis_server(tmp) as (url, redis_pid):
            inproc = [
                asyncio.run(state_work(b, url, redis_pid, tmp, args.requests))
                for b in ("sqlite", "redis")
            ]
            e2e = [
                end_to_end(b, w, url, tmp, args.duration, args.connections)
                for b, w in (("sqlite", 1), ("redis", 1), ("redis", 2))
                if not args.skip_e2e
            ]
    print("State work per request (bucket + token bucket + reserve + commit + settle):\n")
    print(
        "| store | mode | wall µs/req | gateway CPU µs/req | redis CPU µs/req | req/s "
        "| round trips/req |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in inproc:
        for mode in ("serial", "c16"):
            m = row[mode]
            print(
                f"| {row['backend']} | {mode} | {m['wall_us']:.0f} | {m['cpu_us']:.0f} | "
                f"{m['redis_cpu_us']:.0f} | {m['per_s']:,.0f} | {m['round_trips']:.2f} |"
            )
    print(f"\nEnd to end, wrk -c{args.connections}, {args.duration} s, mock provider:\n")
    print("| store | processes | req/s | p50 ms | p99 ms | aigw CPU µs/req | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in e2e:
        print(
            f"| {r['backend']} | {r['workers']} | {r['per_s']:,.0f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['cpu_us']:.0f} | {r['errors']} |"
        )
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    if args.json:
        figures = {"hiredis": HIREDIS_AVAILABLE, "in_process": inproc, "end_to_end": e2e}
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
