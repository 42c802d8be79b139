"""Soak: aigw's start-up time and memory over a fixed number of requests (issue 7, acceptance 3).

    python bench/soak.py [--requests 1000000] [--starts 3] [--connections 16] [--slice 5]

All on 127.0.0.1, all children cleaned up on exit (Ctrl+C included), with bench/run.py's
machinery (nginx upstream, the features-on aigw config, CPU pinning, wrk + bench/post.lua):

1. start-up: spawn `python -m aigw serve` (features on) and POST /v1/chat/completions every 5 ms
   until the first 200; the time from spawn, `--starts` times, median reported;
2. memory: one more aigw; VmRSS once it serves, then after a 1 s wrk warm-up (the baseline), then
   wrk in `--slice`-second runs until `--requests` requests completed, VmRSS after every slice.
   Reported: RSS at each 10 % of the requests, the max, and end vs baseline in %.

Raw results go to bench/results/soak-<timestamp>.json. A measurement, not a test: nothing here
asserts a threshold.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import http.client
import json
import math
import os
import platform
import secrets
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import run as harness  # noqa: E402
from run import CheckError, Children, StartError, Target  # noqa: E402

POLL_INTERVAL_S = 0.005
START_TIMEOUT_S = 30.0


@dataclass(slots=True)
class RssSample:
    requests: int  # requests completed when sampled
    elapsed_s: float  # since the soak's first slice started
    rss_mib: float


@dataclass(slots=True)
class Soak:
    startup_s: list[float] = field(default_factory=list)
    rss_served_mib: float = 0.0  # right after the first 200
    rss_warm_mib: float = 0.0  # after the 1 s warm-up: the baseline
    samples: list[RssSample] = field(default_factory=list)
    requests: int = 0
    seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)


class Aigw:
    """One features-on aigw process, its URL and its tenant key (kept in memory only)."""

    def __init__(
        self, tools: dict[str, str], children: Children, tmp: Path, pin: bool, nginx_port: int
    ) -> None:
        tmp.mkdir()
        port = harness.free_port()
        config = tmp / "aigw-on.yaml"
        config.write_text(harness.aigw_config("on", port=port, nginx_port=nginx_port, tmp=tmp))
        self.key = "sk-bench-" + secrets.token_urlsafe(24)
        env = dict(os.environ, AIGW_BENCH_KEY=self.key)
        env["AIGW_BENCH_KEY_2"] = "sk-bench-" + secrets.token_urlsafe(24)
        env.pop("AIGW_CONFIG", None)
        argv = [sys.executable, "-m", "aigw", "serve", "--config", str(config)]
        argv += ["--port", str(port), "--admin-socket", str(tmp / "admin-on.sock")]
        if pin:
            argv = [tools["taskset"], "-c", harness.PROXY_CPU, *argv]
        self.log = tmp / "aigw-on.log"
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.spawned = time.monotonic()
        self.proc = children.start(argv, log=self.log, env=env)

    def wait_first_200(self) -> float:
        """Seconds from spawn to the first 200 to a chat completion, polling every 5 ms."""
        body = harness.CHAT_BODY.encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.key}"}
        last = ""
        while time.monotonic() - self.spawned < START_TIMEOUT_S:
            if self.proc.poll() is not None:
                raise StartError(f"aigw exited with {self.proc.returncode}", self.log)
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                conn.request("POST", "/v1/chat/completions", body, headers)
                resp = conn.getresponse()
                data = resp.read()
                if resp.status == 200:
                    done = time.monotonic() - self.spawned
                    if b'"chat.completion"' not in data:
                        raise CheckError(f"aigw: 200 but not a chat.completion: {data[:300]!r}")
                    return done
                last = f"HTTP {resp.status}"
            except OSError as exc:
                last = str(exc)
            finally:
                conn.close()
            time.sleep(POLL_INTERVAL_S)
        raise StartError(f"aigw served no 200 within {START_TIMEOUT_S:.0f} s ({last})", self.log)


def soak(
    tools: dict[str, str],
    children: Children,
    aigw: Aigw,
    result: Soak,
    *,
    requests: int,
    connections: int,
    slice_s: int,
    pin: bool,
) -> None:
    pid = aigw.proc.pid  # taskset execs aigw, so under pinning this is still aigw's pid
    url = aigw.url + "/v1/chat/completions"

    def wrk(seconds: int) -> dict[str, float]:
        figures, _, _ = harness.run_wrk(
            tools,
            children,
            url,
            connections=connections,
            duration=seconds,
            body=harness.CHAT_BODY,
            key=aigw.key,
            pin=pin,
        )
        return figures

    result.rss_served_mib = harness.rss_mib(pid)
    wrk(1)  # warm-up: imports, pools, caches, first sqlite pages
    result.rss_warm_mib = harness.rss_mib(pid)
    result.samples.append(RssSample(0, 0.0, result.rss_warm_mib))
    t0 = time.monotonic()
    rate = 0.0
    while result.requests < requests:
        left = requests - result.requests
        # The last slice is cut to about what is left, so the run ends near N, not a slice past.
        seconds = slice_s if rate == 0 else max(1, min(slice_s, math.ceil(left / rate)))
        figures = wrk(seconds)
        done = int(figures["requests"])
        result.requests += done
        rate = done / max(figures["duration_us"] / 1e6, 1e-6)
        for k, v in figures.items():
            if k.startswith("err_") and v:
                result.errors[k[4:]] = result.errors.get(k[4:], 0) + int(v)
        elapsed = time.monotonic() - t0
        result.samples.append(RssSample(result.requests, elapsed, harness.rss_mib(pid)))
        print(
            f"  {result.requests:>10,} requests  {elapsed:7.1f} s  {rate:8,.0f}/s  "
            f"RSS {result.samples[-1].rss_mib:6.1f} MiB",
            flush=True,
        )
        if aigw.proc.poll() is not None:
            raise StartError(f"aigw exited with {aigw.proc.returncode} mid-soak", aigw.log)
    result.seconds = time.monotonic() - t0


def deciles(result: Soak, requests: int) -> list[tuple[int, RssSample]]:
    """For each 10 % of the requests, the first sample taken at or past it."""
    out = []
    for tenth in range(1, 11):
        mark = requests * tenth // 10
        sample = next((s for s in result.samples if s.requests >= mark), result.samples[-1])
        out.append((tenth * 10, sample))
    return out


def render(result: Soak, requests: int) -> str:
    end = result.samples[-1].rss_mib
    peak = max(s.rss_mib for s in result.samples)
    change = (end - result.rss_warm_mib) / result.rss_warm_mib * 100
    lines = [
        f"start-up to first served request: median {statistics.median(result.startup_s) * 1000:.0f}"
        f" ms of {len(result.startup_s)} starts "
        f"({', '.join(f'{s * 1000:.0f}' for s in result.startup_s)} ms)",
        "",
        f"{result.requests:,} requests in {result.seconds:.0f} s "
        f"({result.requests / max(result.seconds, 1e-6):,.0f}/s), "
        f"errors: {', '.join(f'{k} {v}' for k, v in result.errors.items()) or '0'}",
        "",
        "| point | requests done | RSS MiB |",
        "|---|---|---|",
        f"| serving (first 200) | 0 | {result.rss_served_mib:.1f} |",
        f"| after 1 s warm-up (baseline) | 0 | {result.rss_warm_mib:.1f} |",
    ]
    lines += [
        f"| {pct} % | {s.requests:,} | {s.rss_mib:.1f} |" for pct, s in deciles(result, requests)
    ]
    lines += [
        f"| max | - | {peak:.1f} |",
        "",
        f"RSS change, baseline to end: {end - result.rss_warm_mib:+.1f} MiB ({change:+.1f} %)",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=1_000_000, help="requests to soak with")
    p.add_argument("--starts", type=int, default=3, help="start-up measurements (median shown)")
    p.add_argument("--connections", type=int, default=16, help="wrk -c")
    p.add_argument("--slice", type=int, default=5, help="seconds per wrk run (an RSS sample each)")
    p.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    p.add_argument(
        "--no-install", action="store_true", help="do not apt-get install missing wrk/nginx"
    )
    p.add_argument("--output", type=Path, default=None, help="results JSON path")
    args = p.parse_args(argv)
    if args.requests < 1 or args.starts < 1 or args.slice < 1 or args.connections < 1:
        p.error("--requests, --starts, --slice and --connections must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tools = harness.ensure_tools(install=not args.no_install)
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    signal.signal(signal.SIGTERM, harness._raise_interrupt)
    children = Children()
    tmp = Path(tempfile.mkdtemp(prefix="aigw-soak-"))
    started = dt.datetime.now(dt.UTC)
    result = Soak()
    try:
        targets: list[Target] = []
        harness.start_nginx(tools, children, tmp, pin, targets)
        nginx_port = int(targets[0].url.rsplit(":", 1)[1])
        for i in range(args.starts):
            aigw = Aigw(tools, children, tmp / f"start-{i}", pin, nginx_port)
            try:
                result.startup_s.append(aigw.wait_first_200())
            finally:
                children.stop(aigw.proc)
            print(f"  start {i + 1}: first 200 after {result.startup_s[-1] * 1000:.0f} ms")
        aigw = Aigw(tools, children, tmp / "soak", pin, nginx_port)
        aigw.wait_first_200()
        print(f"soak: {args.requests:,} requests at c={args.connections}", flush=True)
        soak(
            tools,
            children,
            aigw,
            result,
            requests=args.requests,
            connections=args.connections,
            slice_s=args.slice,
            pin=pin,
        )
    except KeyboardInterrupt:
        print("\nsoak: interrupted; stopping everything", file=sys.stderr)
        return 130
    except (StartError, CheckError) as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 1
    finally:
        children.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    command = shlex.join(["python", "bench/soak.py", *sys.argv[1:]])
    pin_note = (
        f"aigw pinned to CPU {harness.PROXY_CPU}, nginx + wrk to CPU {harness.LOAD_CPU}"
        if pin
        else "unpinned"
    )
    print()
    print(
        f"{command}  --  {started:%Y-%m-%d %H:%M} UTC, {harness.cpu_model()}, {os.cpu_count()} "
        f"CPUs, Python {platform.python_version()}, aigw {harness.git_describe()}; {pin_note}"
    )
    print()
    print(render(result, args.requests))
    harness.RESULTS_DIR.mkdir(exist_ok=True)
    path = args.output or harness.RESULTS_DIR / f"soak-{started:%Y%m%d-%H%M%S}.json"
    payload = {
        "command": command,
        "started_utc": started.isoformat(),
        "machine": {"cpu": harness.cpu_model(), "cpus": os.cpu_count()},
        "python": platform.python_version(),
        "aigw_commit": harness.git_describe(),
        "pinned": pin,
        "requests_target": args.requests,
        "connections": args.connections,
        **dataclasses.asdict(result),
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nraw results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
