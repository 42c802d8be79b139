"""One-command hot-path benchmark: direct nginx vs a bare aiohttp pass-through vs aigw.

    python bench/run.py [--duration 10] [--connections 1,16,64] [--quick]

In one run this starts, all on 127.0.0.1 and all cleaned up on exit (Ctrl+C included):

- nginx (1 worker, temp prefix, own config) answering `POST …/v1/chat/completions` with a fixed
  OpenAI `chat.completion` JSON, and `POST /sse/v1/chat/completions` with a fixed SSE stream;
- bench/passthrough.py, the naive floor (aiohttp web server + one ClientSession);
- `python -m aigw serve` twice: features off, and features on (auth, rate limit, sqlite quota,
  a money budget with prices, the usage history, 2 balanced targets, metrics, validation);

pins the proxies to CPU 0 and nginx + wrk to CPU 1, runs wrk (`bench/post.lua`) against every target
at every concurrency, and prints throughput, p50/p99, CPU per request and RSS with ratios to the
pass-through measured in the same run. Raw results go to bench/results/<timestamp>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import itertools
import json
import os
import platform
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
LUA_SCRIPT = BENCH_DIR / "post.lua"
CLK_TCK = os.sysconf("SC_CLK_TCK")

PROXY_CPU = "0"  # the proxy under test gets a core to itself
LOAD_CPU = "1"  # nginx and wrk share the other one

MODEL = "bench-model"
STREAM_MODEL = "bench-stream"
UPSTREAM_MODEL = "gpt-4o-mini"

CHAT_BODY = json.dumps(
    {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Say hi in five words."},
        ],
        "max_tokens": 16,
        "temperature": 0.2,
    },
    separators=(",", ":"),
)
STREAM_BODY = json.dumps(
    {
        "model": STREAM_MODEL,
        "messages": [{"role": "user", "content": "Count to ten."}],
        "max_tokens": 32,
        "stream": True,
    },
    separators=(",", ":"),
)

COMPLETION = {
    "id": "chatcmpl-bench0000000000000000000001",
    "object": "chat.completion",
    "created": 1732700000,
    "model": UPSTREAM_MODEL,
    "system_fingerprint": "fp_bench",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hi there, nice to meet.", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 24, "completion_tokens": 6, "total_tokens": 30},
}
MODELS_LIST = {
    "object": "list",
    "data": [{"id": UPSTREAM_MODEL, "object": "model", "created": 1732700000, "owned_by": "bench"}],
}
SSE_WORDS = ["One", ",", " two", ",", " three", ",", " four", ",", " five", "."]


def sse_body() -> str:
    """A fixed OpenAI chat.completion.chunk stream: role, 10 content chunks, stop, usage, [DONE]."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-bench-sse",
            "object": "chat.completion.chunk",
            "created": 1732700000,
            "model": UPSTREAM_MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": w}) for w in SSE_WORDS]
    events.append(chunk({}, "stop"))
    usage = chunk({})
    usage["choices"] = []
    usage["usage"] = {"prompt_tokens": 12, "completion_tokens": 10, "total_tokens": 22}
    events.append(usage)
    lines = [f"data: {json.dumps(e, separators=(',', ':'))}\n\n" for e in events]
    return "".join(lines) + "data: [DONE]\n\n"


SSE_EVENTS = len(SSE_WORDS) + 4  # role + words + stop + usage + [DONE]


# --- process management ------------------------------------------------------------------


class Children:
    """Every child process started by the bench; each runs in its own process group."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, argv: list[str], *, log: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        out = log.open("wb") if log else subprocess.DEVNULL
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO_DIR,
                start_new_session=True,  # own group: killable as a whole, deaf to our Ctrl+C
            )
        finally:
            if log:
                out.close()  # type: ignore[union-attr]
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        # Anything the child left behind in its group goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up the same way as Ctrl+C


# --- /proc readings ----------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields_after_comm = stat[stat.rindex(")") + 2 :].split()
    return (int(fields_after_comm[11]) + int(fields_after_comm[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_busy_seconds() -> dict[str, float]:
    """Non-idle time of each CPU since boot (all processes, kernel included), from /proc/stat."""
    busy = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, _, rest = line.partition(" ")
        if name.startswith("cpu") and name != "cpu":
            ticks = [int(x) for x in rest.split()]
            busy[name[3:]] = (sum(ticks[:8]) - ticks[3] - ticks[4]) / CLK_TCK  # minus idle, iowait
    return busy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- tools -------------------------------------------------------------------------------

TOOLS = {"wrk": "wrk", "nginx": "nginx-light", "taskset": "util-linux"}


def ensure_tools(install: bool) -> dict[str, str]:
    missing = [t for t in TOOLS if not _which(t)]
    if missing and install and os.geteuid() == 0 and shutil.which("apt-get"):
        pkgs = sorted({TOOLS[t] for t in missing})
        print(f"installing {' '.join(pkgs)} with apt-get …", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *pkgs], check=False, env=env)
        missing = [t for t in TOOLS if not _which(t)]
    if missing:
        how = " ".join(sorted({TOOLS[t] for t in missing}))
        sys.exit(f"bench: missing {', '.join(missing)}; install with: apt-get install -y {how}")
    return {t: str(_which(t)) for t in TOOLS}


def _which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")


def tool_versions(tools: dict[str, str]) -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        r = subprocess.run(argv, capture_output=True, text=True, check=False)
        return (r.stdout + r.stderr).strip().splitlines()[0] if (r.stdout + r.stderr) else "?"

    return {"wrk": first_line([tools["wrk"], "-v"]), "nginx": first_line([tools["nginx"], "-v"])}


# --- the upstream: nginx -----------------------------------------------------------------


def nginx_literal(text: str) -> str:
    """`text` as a single-quoted nginx string: no variables, real newlines via `\\n`."""
    assert "$" not in text, "nginx would expand $ in a return body"
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def nginx_conf(prefix: Path, port: int) -> str:
    completion = json.dumps(COMPLETION, separators=(",", ":"))
    models = json.dumps(MODELS_LIST, separators=(",", ":"))
    return f"""\
worker_processes 1;
master_process off;  # one process: its pid is the worker whose CPU we read
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location ~ ^/sse/v1/chat/completions$ {{
            default_type text/event-stream;
            add_header Cache-Control no-cache;
            return 200 {nginx_literal(sse_body())};
        }}
        location ~ /v1/chat/completions$ {{
            default_type application/json;
            return 200 {nginx_literal(completion)};
        }}
        location ~ /v1/models$ {{
            default_type application/json;
            return 200 {nginx_literal(models)};
        }}
        location / {{ return 404; }}
    }}
}}
"""


# --- aigw configs ------------------------------------------------------------------------


def aigw_config(variant: str, *, port: int, nginx_port: int, tmp: Path) -> str:
    """The YAML for one aigw variant ("off" or "on")."""
    upstream = f"http://127.0.0.1:{nginx_port}"
    head = f"""\
version: 1
server: {{host: 127.0.0.1, port: {port}, admin_socket: {tmp}/admin-{variant}.sock}}
"""
    if variant == "off":
        return (
            head
            + f"""\
state: {{backend: memory}}
providers:
  nginx: {{type: openai, base_url: {upstream}/v1}}
  nginx-sse: {{type: openai, base_url: {upstream}/sse/v1}}
models:
  {MODEL}: {{targets: [{{provider: nginx, model: {UPSTREAM_MODEL}}}]}}
  {STREAM_MODEL}: {{targets: [{{provider: nginx-sse, model: {UPSTREAM_MODEL}}}]}}
health: {{check_interval: 0s}}
metrics: {{enabled: false}}
"""
        )
    return (
        head
        + f"""\
state: {{backend: sqlite, path: {tmp}/state-on.db}}
auth:
  keys:
    - {{key: "${{AIGW_BENCH_KEY}}", tenant: bench}}
    - {{key: "${{AIGW_BENCH_KEY_2}}", tenant: other}}
providers:
  nginx-a: {{type: openai, base_url: {upstream}/v1}}
  nginx-b: {{type: openai, base_url: {upstream}/v1}}
  nginx-sse-a: {{type: openai, base_url: {upstream}/sse/v1}}
  nginx-sse-b: {{type: openai, base_url: {upstream}/sse/v1}}
models:
  {MODEL}:
    strategy: round_robin
    targets:
      - {{provider: nginx-a, model: {UPSTREAM_MODEL}}}
      - {{provider: nginx-b, model: {UPSTREAM_MODEL}}}
  {STREAM_MODEL}:
    strategy: round_robin
    targets:
      - {{provider: nginx-sse-a, model: {UPSTREAM_MODEL}}}
      - {{provider: nginx-sse-b, model: {UPSTREAM_MODEL}}}
rate_limit:
  requests_per_second: 1000000   # on, but never the thing that answers
  burst: 1000000
quota:
  default: 1000000000000         # on (reserve and reconcile every request), never exhausted
  default_usd: 1000000000        # a money budget too: priced, reserved and settled, never spent
  period: daily
prices:
  {UPSTREAM_MODEL}: {{input: 0.15, output: 0.60}}
hooks: [validation]
metrics: {{enabled: true}}
"""
    )


# --- targets -----------------------------------------------------------------------------


@dataclass(slots=True)
class Target:
    name: str  # direct | passthrough | aigw-off | aigw-on
    label: str
    url: str  # base, no path
    pid: int | None  # the proxy process whose CPU and RSS are measured; None for direct
    key: str = ""  # bearer key the client sends
    stream_path: str = "/sse/v1/chat/completions"
    rss_start_mib: float = 0.0


def wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path | None, what: str) -> None:
    deadline = time.monotonic() + 20
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartError(f"{what} exited with {proc.returncode}", log)
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except (OSError, urllib.error.URLError) as exc:
            last = str(exc)
        time.sleep(0.1)
    raise StartError(f"{what} not ready at {url} after 20 s ({last})", log)


def check_post(target: Target, path: str, body: str, *, stream: bool) -> None:
    """One real request before the load, so a leg never measures a stream of errors."""
    req = urllib.request.Request(
        target.url + path, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    if target.key:
        req.add_header("Authorization", f"Bearer {target.key}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            data = r.read()
            status = r.status
    except urllib.error.HTTPError as exc:
        raise CheckError(
            f"{target.label}: POST {path} -> {exc.code}: {exc.read()[:300]!r}"
        ) from exc
    if status != 200:
        raise CheckError(f"{target.label}: POST {path} -> {status}")
    if stream:
        if b"data: [DONE]" not in data or data.count(b"data: ") < len(SSE_WORDS):
            raise CheckError(f"{target.label}: stream looks wrong: {data[:300]!r}")
    else:
        answer = json.loads(data)
        if answer.get("object") != "chat.completion" or not answer.get("choices"):
            raise CheckError(f"{target.label}: not a chat.completion: {data[:300]!r}")


class StartError(Exception):
    def __init__(self, message: str, log: Path | None) -> None:
        tail = ""
        if log and log.exists():
            lines = log.read_text(errors="replace").splitlines()[-15:]
            tail = "\n    " + "\n    ".join(lines) if lines else ""
        super().__init__(message + tail)


class CheckError(Exception):
    pass


# --- wrk ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Leg:
    target: str
    label: str
    mode: str  # "chat" | "stream"
    connections: int
    duration_s: int
    round: int = 0
    requests: int = 0
    rps: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    mean_ms: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    proxy_cpu_s: float | None = None
    proxy_cpu_us_per_req: float | None = None
    proxy_core_busy: float | None = None  # fraction of the proxy's core used during the leg
    load_core_busy: float | None = None  # nginx + wrk, fraction of their shared core
    # CPU each bench core spent on anything else (other processes, interrupts, loopback softirq
    # not charged to a process); a noisy machine shows up here instead of silently in the figures.
    other_on_proxy_core: float | None = None
    other_on_load_core: float | None = None
    # Paired with the pass-through and direct legs of the same round and concurrency.
    rps_vs_passthrough: float | None = None
    cpu_vs_passthrough: float | None = None
    p50_added_ms: float | None = None  # p50 minus direct nginx's p50
    rss_mib: float | None = None
    wrk_output: str = ""


def run_wrk(
    tools: dict[str, str],
    children: Children,
    url: str,
    *,
    connections: int,
    duration: int,
    body: str,
    key: str,
    pin: bool,
    script: Path = LUA_SCRIPT,
) -> tuple[dict[str, Any], str, float]:
    """Run wrk once; returns (figures from post.lua, wrk's text output, wrk CPU seconds).
    `script` must print post.lua's BENCH_RESULT line (bench/cache_bench.py extends post.lua)."""
    argv = [tools["wrk"], "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    argv += ["--timeout", "10s", "-s", str(script), url]
    if pin:
        argv = [tools["taskset"], "-c", LOAD_CPU, *argv]
    env = dict(os.environ, BENCH_BODY=body, BENCH_KEY=key)
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        children.procs.append(proc)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            children.stop(proc)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode != 0:
        raise CheckError(f"wrk failed ({proc.returncode}): {text.strip()[-500:]}")
    for line in text.splitlines():
        if line.startswith("BENCH_RESULT "):
            figures = json.loads(line.removeprefix("BENCH_RESULT "))
            return figures, text, usage.ru_utime + usage.ru_stime
    raise CheckError(f"no BENCH_RESULT line in wrk output:\n{text}")


def measure(
    tools: dict[str, str],
    children: Children,
    target: Target,
    *,
    mode: str,
    connections: int,
    duration: int,
    warmup: int,
    nginx_pid: int,
    pin: bool,
    script: Path = LUA_SCRIPT,
) -> Leg:
    if mode == "stream":
        path, body = target.stream_path, STREAM_BODY
    else:
        path, body = "/v1/chat/completions", CHAT_BODY
    url = target.url + path
    if warmup > 0:
        run_wrk(
            tools,
            children,
            url,
            connections=connections,
            duration=warmup,
            body=body,
            key=target.key,
            pin=pin,
            script=script,
        )
    proxy_cpu0 = cpu_seconds(target.pid) if target.pid else 0.0
    nginx_cpu0 = cpu_seconds(nginx_pid)
    busy0 = cpu_busy_seconds()
    t0 = time.monotonic()
    result, text, wrk_cpu = run_wrk(
        tools,
        children,
        url,
        connections=connections,
        duration=duration,
        body=body,
        key=target.key,
        pin=pin,
        script=script,
    )
    wall = time.monotonic() - t0
    nginx_cpu = cpu_seconds(nginx_pid) - nginx_cpu0
    busy1 = cpu_busy_seconds()
    leg = Leg(target.name, target.label, mode, connections, duration, wrk_output=text)
    leg.requests = int(result["requests"])
    leg.rps = leg.requests / (result["duration_us"] / 1e6)
    leg.p50_ms = result["p50_us"] / 1000
    leg.p90_ms = result["p90_us"] / 1000
    leg.p99_ms = result["p99_us"] / 1000
    leg.mean_ms = result["mean_us"] / 1000
    leg.errors = {k[4:]: int(v) for k, v in result.items() if k.startswith("err_") and v}
    leg.load_core_busy = (nginx_cpu + wrk_cpu) / wall
    if target.pid:
        leg.proxy_cpu_s = cpu_seconds(target.pid) - proxy_cpu0
        leg.proxy_cpu_us_per_req = leg.proxy_cpu_s / max(leg.requests, 1) * 1e6
        leg.proxy_core_busy = leg.proxy_cpu_s / wall
        leg.rss_mib = rss_mib(target.pid)
    if pin:
        proxy_core = busy1[PROXY_CPU] - busy0[PROXY_CPU] - (leg.proxy_cpu_s or 0.0)
        load_core = busy1[LOAD_CPU] - busy0[LOAD_CPU] - nginx_cpu - wrk_cpu
        leg.other_on_proxy_core = max(0.0, proxy_core) / wall
        leg.other_on_load_core = max(0.0, load_core) / wall
    return leg


# --- quiet machine, profiles -----------------------------------------------------------


def wait_quiet(max_wait: int) -> None:
    """Wait until other work uses under 20% of a core on the two bench cores for 3 s running."""
    deadline = time.monotonic() + max_wait
    quiet_for = 0
    before = cpu_busy_seconds()
    while time.monotonic() < deadline:
        time.sleep(1)
        after = cpu_busy_seconds()
        other = sum(after[c] - before[c] for c in (PROXY_CPU, LOAD_CPU))
        before = after
        quiet_for = quiet_for + 1 if other < 0.2 else 0
        if quiet_for >= 3:
            return
        print(f"bench: waiting for a quiet machine ({other:.0%} of a core busy)", flush=True)
    print(f"bench: the machine stayed busy for {max_wait} s; measuring anyway", flush=True)


@dataclass(slots=True)
class Profile:
    target: str
    connections: int
    samples: int
    # (share of samples, function) for the top frames by self time and by inclusive time
    top_self: list[tuple[float, str]]
    top_inclusive: list[tuple[float, str]]
    folded_path: str


def profile(
    tools: dict[str, str],
    children: Children,
    target: Target,
    connections: int,
    duration: int,
    pin: bool,
) -> Profile:
    """Sample the target with py-spy while wrk loads it (not a measured leg: sampling costs)."""
    assert target.pid is not None
    with py_spy(children, target.pid, duration, target.name) as folded:
        run_wrk(
            tools,
            children,
            target.url + "/v1/chat/completions",
            connections=connections,
            duration=duration + 1,
            body=CHAT_BODY,
            key=target.key,
            pin=pin,
        )
    return summarize_folded(target.name, connections, folded)


@contextlib.contextmanager
def py_spy(children: Children, pid: int, seconds: int, name: str) -> Iterator[Path]:
    """py-spy samples `pid` for `seconds` while the with-block loads it; yields the path its
    folded stacks are in once the block is done (bench/results/<time>-<name>.folded)."""
    RESULTS_DIR.mkdir(exist_ok=True)
    folded = RESULTS_DIR / f"{dt.datetime.now():%Y%m%d-%H%M%S}-{name}.folded"
    argv = ["py-spy", "record", "--pid", str(pid), "--duration", str(seconds)]
    argv += ["--rate", "250", "--format", "raw", "-o", str(folded)]
    spy = children.start(argv)
    try:
        yield folded
        spy.wait(30)
    finally:
        children.stop(spy)


# Leaf frames that mean "waiting": a pool thread with no work, the loop in epoll.
_WAITING = ("_worker (concurrent/futures/thread.py", "EpollSelector.select (selectors.py")


def summarize_folded(name: str, connections: int, folded: Path) -> Profile:
    self_time: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        # "func (path/file.py:123)" -> "func (path/file.py)": one entry per function.
        frames = [f.rsplit(":", 1)[0] + ")" if f.endswith(")") else f for f in stack.split(";")]
        if frames[-1].startswith(_WAITING):
            continue  # waiting, not working (py-spy's idle detection misses these)
        n = int(count)
        total += n
        self_time[frames[-1]] = self_time.get(frames[-1], 0) + n
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + n

    def top(counts: dict[str, int], keep: int) -> list[tuple[float, str]]:
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])
        return [(n / max(total, 1), f) for f, n in ranked[:keep]]

    # Inclusive time is only telling below the event loop and the thread pool's loop: the
    # wrappers above them (runpy, typer, asyncio.run, threading) hold everything.
    below_loop = {f: n for f, n in inclusive.items() if not _is_wrapper(f)}
    return Profile(name, connections, total, top(self_time, 20), top(below_loop, 30), str(folded))


_WRAPPER_FILES = ("<frozen runpy>", "typer/", "threading.py", "asyncio/runners.py", "aigw/cli/")
_WRAPPER_FUNCS = ("run_forever", "run_until_complete", "_run_once", "_worker", "<module>")


def _is_wrapper(frame: str) -> bool:
    func = frame.split(" ", 1)[0].rsplit(".", 1)[-1]
    return func in _WRAPPER_FUNCS or any(w in frame for w in _WRAPPER_FILES)


def render_profile(prof: Profile) -> str:
    lines = ["  self time:"]
    lines += [f"    {share:6.1%}  {frame}" for share, frame in prof.top_self]
    lines.append("  inclusive (below the event loop):")
    lines += [f"    {share:6.1%}  {frame}" for share, frame in prof.top_inclusive]
    lines.append(f"  folded stacks: {prof.folded_path}")
    return "\n".join(lines)


# --- report ------------------------------------------------------------------------------


def pair_up(legs: list[Leg]) -> None:
    """Fill each leg's ratios from the pass-through and direct legs of its own round."""
    by_key = {(x.mode, x.connections, x.round, x.target): x for x in legs}
    for leg in legs:
        pt = by_key.get((leg.mode, leg.connections, leg.round, "passthrough"))
        direct = by_key.get((leg.mode, leg.connections, leg.round, "direct"))
        if pt and leg.target != "direct" and pt.rps:
            leg.rps_vs_passthrough = leg.rps / pt.rps
            if leg.proxy_cpu_us_per_req and pt.proxy_cpu_us_per_req:
                leg.cpu_vs_passthrough = leg.proxy_cpu_us_per_req / pt.proxy_cpu_us_per_req
        if direct and leg.target != "direct":
            leg.p50_added_ms = leg.p50_ms - direct.p50_ms


def representative(legs: list[Leg]) -> list[tuple[Leg, list[Leg]]]:
    """Per (mode, connections, target): the round with the median paired ratio (median
    throughput for direct and the pass-through itself), with all its rounds."""
    groups: dict[tuple[str, int, str], list[Leg]] = {}
    for leg in legs:
        groups.setdefault((leg.mode, leg.connections, leg.target), []).append(leg)
    out = []
    for group in groups.values():
        ranked = sorted(group, key=lambda x: x.rps_vs_passthrough or x.rps)
        out.append((ranked[(len(ranked) - 1) // 2], group))
    return out


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def render_table(legs: list[Leg], mode: str) -> str:
    """A markdown table (pasteable into bench/README.md). Ratios are to the pass-through at the
    same concurrency in the same round; with several rounds, the median round is shown and the
    ratio's range across rounds follows in brackets."""
    rows = [(leg, group) for leg, group in representative(legs) if leg.mode == mode]
    if not rows:
        return ""
    unit = "streams/s" if mode == "stream" else "req/s"
    head = (
        f"| target | conns | {unit} | x pass-through | p50 ms | p99 ms | p50 added vs direct ms "
        "| CPU µs/req | x pass-through | proxy core | load core | other P / L | RSS MiB | errors |"
    )
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for leg, group in rows:
        rps_ratio = _fmt(leg.rps_vs_passthrough, ".2f")
        ratios = [x.rps_vs_passthrough for x in group if x.rps_vs_passthrough is not None]
        if rps_ratio != "-":
            rps_ratio += "x"
            if len(ratios) > 1 and leg.target != "passthrough":
                rps_ratio += f" ({min(ratios):.2f}-{max(ratios):.2f})"
        cpu_ratio = _fmt(leg.cpu_vs_passthrough, ".2f")
        errs = ", ".join(f"{k} {v}" for k, v in leg.errors.items()) or "0"
        out.append(
            f"| {leg.label} | {leg.connections} | {leg.rps:,.0f} | {rps_ratio} | "
            f"{leg.p50_ms:.3f} | {leg.p99_ms:.3f} | {_fmt(leg.p50_added_ms, '.3f')} | "
            f"{_fmt(leg.proxy_cpu_us_per_req, '.0f')} | "
            f"{cpu_ratio + 'x' if cpu_ratio != '-' else '-'} | "
            f"{_fmt(leg.proxy_core_busy, '.0%')} | {_fmt(leg.load_core_busy, '.0%')} | "
            f"{_fmt(leg.other_on_proxy_core, '.0%')} / {_fmt(leg.other_on_load_core, '.0%')} | "
            f"{_fmt(leg.rss_mib, '.1f')} | {errs} |"
        )
    return "\n".join(out)


def bottleneck_warnings(legs: list[Leg]) -> list[str]:
    warnings = []
    for leg in legs:
        if leg.errors:
            warnings.append(f"{leg.label} c={leg.connections} {leg.mode}: errors {leg.errors}")
        if leg.target != "direct" and leg.load_core_busy and leg.load_core_busy > 0.85:
            warnings.append(
                f"{leg.label} c={leg.connections} {leg.mode}: the nginx+wrk core was "
                f"{leg.load_core_busy:.0%} busy; the load side may be limiting this leg"
            )
    noisy = [
        max(x.other_on_proxy_core, x.other_on_load_core)
        for x in legs
        if x.other_on_proxy_core is not None and x.other_on_load_core is not None
    ]
    noisy = [x for x in noisy if x > 0.15]
    if noisy:
        warnings.append(
            f"the machine was not quiet: in {len(noisy)} of {len(legs)} legs other work took "
            f"{min(noisy):.0%}-{max(noisy):.0%} of a bench core (column 'other'); trust CPU "
            "µs/req and same-round ratios over absolute req/s"
        )
    for mode in ("chat", "stream"):
        for c in sorted({leg.connections for leg in legs}):
            same = [x for x in legs if x.mode == mode and x.connections == c]
            direct = next((x for x in same if x.target == "direct"), None)
            proxies = [x for x in same if x.target != "direct"]
            if direct and proxies:
                best = max(proxies, key=lambda x: x.rps)
                if direct.rps < 3 * best.rps:
                    warnings.append(
                        f"{mode} c={c}: direct nginx ({direct.rps:,.0f}/s) is under 3x the "
                        f"fastest proxy ({best.label}, {best.rps:,.0f}/s): upstream may limit"
                    )
    return warnings


def git_describe() -> str:
    r = subprocess.run(
        ["git", "-C", str(REPO_DIR), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return r.stdout.strip() or "?"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


# --- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=int, default=10, help="seconds per measured leg")
    p.add_argument("--warmup", type=int, default=2, help="seconds of warm-up before each leg")
    p.add_argument(
        "--rounds", type=int, default=1, help="repeat each concurrency's legs; median shown"
    )
    p.add_argument("--connections", default="1,16,64", help="comma-separated wrk -c values")
    p.add_argument(
        "--stream-connections",
        default="16",
        help="concurrencies for the SSE legs ('' to skip streaming)",
    )
    p.add_argument(
        "--targets",
        default="direct,passthrough,aigw-off,aigw-on",
        help="subset of direct,passthrough,aigw-off,aigw-on",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 2 s legs, 1 s warm-up, c=1,16")
    p.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    p.add_argument(
        "--no-install", action="store_true", help="do not apt-get install missing wrk/nginx"
    )
    p.add_argument(
        "--wait-quiet",
        type=int,
        default=0,
        metavar="S",
        help="wait up to S seconds for the two cores to go quiet before measuring",
    )
    p.add_argument(
        "--profile",
        default="",
        metavar="TARGETS",
        help="after the legs, profile these targets (e.g. aigw-on) with py-spy at c=16",
    )
    p.add_argument("--output", type=Path, default=None, help="results JSON path")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 2, 1
        if args.connections == "1,16,64":
            args.connections = "1,16"
    args.conns = [int(c) for c in args.connections.split(",") if c.strip()]
    args.stream_conns = [int(c) for c in args.stream_connections.split(",") if c.strip()]
    args.profile_names = [t.strip() for t in args.profile.split(",") if t.strip()]
    if args.profile_names and not shutil.which("py-spy"):
        p.error("--profile needs py-spy: pip install py-spy")
    args.target_names = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.target_names) - {"direct", "passthrough", "aigw-off", "aigw-on"}
    if unknown:
        p.error(f"unknown targets: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tools = ensure_tools(install=not args.no_install)
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    if not pin and not args.no_pin:
        print("bench: fewer than 2 CPUs; running unpinned (figures are not comparable)")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    children = Children()
    tmp = Path(tempfile.mkdtemp(prefix="aigw-bench-"))
    started = dt.datetime.now(dt.UTC)
    legs: list[Leg] = []
    problems: list[str] = []
    targets: list[Target] = []
    profiles: dict[str, Profile] = {}
    try:
        nginx_pid = start_nginx(tools, children, tmp, pin, targets)
        nginx_url = targets[0].url
        if "passthrough" in args.target_names:
            start_passthrough(tools, children, tmp, pin, nginx_url, targets)
        for variant in ("off", "on"):
            if f"aigw-{variant}" in args.target_names:
                try:
                    start_aigw(tools, children, tmp, pin, variant, nginx_url, targets)
                except (StartError, CheckError) as exc:
                    problems.append(str(exc))
                    print(f"bench: aigw features {variant} skipped: {exc}", file=sys.stderr)
        targets = [t for t in targets if t.name in args.target_names]
        plan = [("chat", c) for c in args.conns] + [("stream", c) for c in args.stream_conns]
        n_legs = len(plan) * len(targets) * args.rounds
        total = n_legs * (args.duration + args.warmup + 0.3)
        print(f"bench: {n_legs} legs, about {total:.0f} s", flush=True)
        if args.wait_quiet:
            wait_quiet(args.wait_quiet)
        for (mode, c), rnd in itertools.product(plan, range(args.rounds)):
            for target in targets:
                leg = measure(
                    tools,
                    children,
                    target,
                    mode=mode,
                    connections=c,
                    duration=args.duration,
                    warmup=args.warmup,
                    nginx_pid=nginx_pid,
                    pin=pin,
                )
                leg.round = rnd
                legs.append(leg)
                cpu = (
                    f", {leg.proxy_cpu_us_per_req:.0f} µs CPU/req"
                    if leg.proxy_cpu_us_per_req is not None
                    else ""
                )
                print(
                    f"  {mode:6} c={c:<3} {target.label:22} {leg.rps:>9,.0f}/s  "
                    f"p50 {leg.p50_ms:.3f} ms  p99 {leg.p99_ms:.3f} ms{cpu}",
                    flush=True,
                )
        for target in targets:
            if target.name in args.profile_names:
                c = 16 if 16 in args.conns else max(args.conns)
                profiles[target.name] = profile(tools, children, target, c, args.duration, pin)
    except KeyboardInterrupt:
        print("\nbench: interrupted; stopping everything", file=sys.stderr)
        return 130
    except (StartError, CheckError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        children.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    pair_up(legs)
    warnings = bottleneck_warnings(legs)
    report(args, tools, started, targets, legs, warnings, problems, pin, profiles)
    return 0


def start_nginx(
    tools: dict[str, str], children: Children, tmp: Path, pin: bool, targets: list[Target]
) -> int:
    prefix = tmp / "nginx"
    prefix.mkdir()
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(prefix, port))
    argv = [tools["nginx"], "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    if pin:
        argv = [tools["taskset"], "-c", LOAD_CPU, *argv]
    log = tmp / "nginx.log"
    proc = children.start(argv, log=log)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url + "/v1/models", log, "nginx")
    target = Target("direct", "direct nginx", url, None)
    check_post(target, "/v1/chat/completions", CHAT_BODY, stream=False)
    check_post(target, target.stream_path, STREAM_BODY, stream=True)
    targets.append(target)
    return proc.pid


def start_passthrough(
    tools: dict[str, str],
    children: Children,
    tmp: Path,
    pin: bool,
    upstream: str,
    targets: list[Target],
) -> None:
    port = free_port()
    argv = [sys.executable, str(BENCH_DIR / "passthrough.py"), "--port", str(port)]
    argv += ["--upstream", upstream]
    if pin:
        argv = [tools["taskset"], "-c", PROXY_CPU, *argv]
    log = tmp / "passthrough.log"
    proc = children.start(argv, log=log)
    url = f"http://127.0.0.1:{port}"
    target = Target("passthrough", "bare aiohttp pass-through", url, proc.pid)
    _wait_post(proc, target, log)
    target.rss_start_mib = rss_mib(proc.pid)
    targets.append(target)


def start_aigw(
    tools: dict[str, str],
    children: Children,
    tmp: Path,
    pin: bool,
    variant: str,
    upstream: str,
    targets: list[Target],
) -> None:
    port = free_port()
    nginx_port = int(upstream.rsplit(":", 1)[1])
    config = tmp / f"aigw-{variant}.yaml"
    config.write_text(aigw_config(variant, port=port, nginx_port=nginx_port, tmp=tmp))
    env = dict(os.environ)
    key = ""
    if variant == "on":
        key = "sk-bench-" + secrets.token_urlsafe(24)
        env["AIGW_BENCH_KEY"] = key
        env["AIGW_BENCH_KEY_2"] = "sk-bench-" + secrets.token_urlsafe(24)
    env.pop("AIGW_CONFIG", None)
    argv = [sys.executable, "-m", "aigw", "serve", "--config", str(config), "--port", str(port)]
    argv += ["--admin-socket", str(tmp / f"admin-{variant}.sock")]
    if pin:
        argv = [tools["taskset"], "-c", PROXY_CPU, *argv]
    log = tmp / f"aigw-{variant}.log"
    proc = children.start(argv, log=log, env=env)
    url = f"http://127.0.0.1:{port}"
    label = "aigw features " + variant
    wait_ready(proc, url + "/healthz", log, label)
    target = Target(f"aigw-{variant}", label, url, proc.pid, key=key)
    target.stream_path = "/v1/chat/completions"
    check_post(target, "/v1/chat/completions", CHAT_BODY, stream=False)
    check_post(target, target.stream_path, STREAM_BODY, stream=True)
    if variant == "on":
        _check_auth_enforced(target)
    target.rss_start_mib = rss_mib(proc.pid)
    targets.append(target)


def _wait_post(proc: subprocess.Popen[bytes], target: Target, log: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise StartError(f"{target.label} exited with {proc.returncode}", log)
        try:
            check_post(target, "/v1/chat/completions", CHAT_BODY, stream=False)
            check_post(target, target.stream_path, STREAM_BODY, stream=True)
            return
        except (OSError, CheckError) as exc:
            if time.monotonic() > deadline:
                raise StartError(f"{target.label} not ready: {exc}", log) from exc
            time.sleep(0.1)


def _check_auth_enforced(target: Target) -> None:
    """The features-on variant must really check keys, or it is not measuring auth."""
    anonymous = dataclasses.replace(target, key="")
    try:
        check_post(anonymous, "/v1/chat/completions", CHAT_BODY, stream=False)
    except CheckError as exc:
        if "-> 401" in str(exc):
            return
        raise
    raise CheckError(f"{target.label}: a request without a key was served; auth is not on")


def report(
    args: argparse.Namespace,
    tools: dict[str, str],
    started: dt.datetime,
    targets: list[Target],
    legs: list[Leg],
    warnings: list[str],
    problems: list[str],
    pin: bool,
    profiles: dict[str, Profile],
) -> None:
    command = shlex.join(["python", "bench/run.py", *sys.argv[1:]])
    print()
    print(
        f"{command.strip()}  --  {started:%Y-%m-%d %H:%M} UTC, {cpu_model()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, aigw {git_describe()}"
    )
    pin_note = (
        f"proxy pinned to CPU {PROXY_CPU}, nginx + wrk to CPU {LOAD_CPU}" if pin else "unpinned"
    )
    print(f"{pin_note}; {args.duration:g} s per leg after {args.warmup:g} s warm-up; wrk -t1")
    for mode, title in (("chat", "chat completions (JSON)"), ("stream", "streamed chat (SSE)")):
        table = render_table(legs, mode)
        if table:
            extra = f", {SSE_EVENTS} events per stream" if mode == "stream" else ""
            print(f"\n{title}{extra}\n")
            print(table)
    rss = [f"{t.label} {t.rss_start_mib:.1f} MiB" for t in targets if t.pid]
    if rss:
        print("\nRSS after start: " + ", ".join(rss))
    for name, prof in profiles.items():
        print(f"\nprofile of {name} (py-spy, {prof.samples} samples at c={prof.connections}):")
        print(render_profile(prof))
    for line in problems:
        print(f"PROBLEM: {line}")
    for line in warnings:
        print(f"WARNING: {line}")
    RESULTS_DIR.mkdir(exist_ok=True)
    path = args.output or RESULTS_DIR / f"{started:%Y%m%d-%H%M%S}.json"
    payload = {
        "command": command.strip(),
        "started_utc": started.isoformat(),
        "machine": {
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            **tool_versions(tools),
        },
        "aigw_commit": git_describe(),
        "pinned": pin,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rss_start_mib": {t.name: t.rss_start_mib for t in targets if t.pid},
        "legs": [dataclasses.asdict(leg) for leg in legs],
        "profiles": {name: dataclasses.asdict(p) for name, p in profiles.items()},
        "problems": problems,
        "warnings": warnings,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nraw results: {path}")


if __name__ == "__main__":
    sys.exit(main())
