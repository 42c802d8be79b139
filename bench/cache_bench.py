"""Response cache: the hit path against a miss to the fast local upstream, in the same run.

    python bench/cache_bench.py                       # c=1,16, 3 rounds of 4 s legs, ~2.5 min
    python bench/cache_bench.py --connections 16 --rounds 5 --wait-quiet 120

Issue 5 #5a asks for a hit path at least 3x the throughput of a miss. This uses bench/run.py's
machinery (nginx upstream on CPU 1 with wrk, the proxy alone on CPU 0, `measure()` for req/s,
latency and CPU per request) and starts one `aigw serve` with the features-off config of run.py
plus `cache: {enabled: true}` and metrics on (metrics are how the bench checks that every leg
got the hits or misses it was meant to). Per round and concurrency, one leg each:

- direct nginx: run.py's chat body straight to the upstream (the ceiling);
- cache hit: run.py's fixed chat body, so every request after the first is a hit;
- cache miss (unique body): the same body with `#<wrk pid>-<counter>` appended to the user
  message, so every request is a new key: looked up, missed, forwarded, stored (and, once the
  cache is full, an LRU eviction);
- cache miss (no-cache): the fixed body with `Cache-Control: no-cache`: lookup skipped,
  forwarded, stored again.

The ratio column is each leg's req/s over the unique-body miss of the same round; with several
rounds the median round is shown and the ratio's range across rounds follows in brackets. CPU
µs per request of the gateway process is the figure least disturbed by a busy machine. Raw
results go to bench/results/cache-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import itertools
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import run as harness  # noqa: E402
from run import CheckError, Children, Leg, StartError, Target  # noqa: E402

MISS_LUA = """
-- cache_bench.py: a new cache key per request. The wrk process id keeps the keys of the
-- warm-up run and the measured run apart; the counter makes every request unique.
local stat = io.open("/proc/self/stat")
local salt = stat and stat:read("*n") or os.time()
if stat then stat:close() end
local head, tail
local counter = 0
function init(args)
  local mark = "five words."
  local _, j = string.find(wrk.body, mark, 1, true)
  assert(j, "cache_bench: the chat body no longer contains '" .. mark .. "'")
  head, tail = string.sub(wrk.body, 1, j), string.sub(wrk.body, j + 1)
end
function request()
  counter = counter + 1
  return wrk.format(nil, nil, nil, head .. " #" .. salt .. "-" .. counter .. tail)
end
"""
NO_CACHE_LUA = """
-- cache_bench.py: ask the gateway to skip the cache lookup.
wrk.headers["Cache-Control"] = "no-cache"
"""


@dataclasses.dataclass(slots=True)
class CacheLeg:
    leg: Leg
    hits: int  # cache hits counted by the gateway during warm-up + leg
    misses: int


def aigw_cache_config(port: int, nginx_port: int, tmp: Path) -> str:
    base = harness.aigw_config("off", port=port, nginx_port=nginx_port, tmp=tmp)
    off = "metrics: {enabled: false}"
    if off not in base:
        raise StartError(f"run.aigw_config('off') no longer contains {off!r}", None)
    return base.replace(off, "metrics: {enabled: true}") + "cache: {enabled: true}\n"


def start_aigw_cache(
    tools: dict[str, str], children: Children, tmp: Path, pin: bool, nginx_url: str
) -> Target:
    port = harness.free_port()
    nginx_port = int(nginx_url.rsplit(":", 1)[1])
    config = tmp / "aigw-cache.yaml"
    config.write_text(aigw_cache_config(port, nginx_port, tmp))
    env = dict(os.environ)
    env.pop("AIGW_CONFIG", None)
    argv = [sys.executable, "-m", "aigw", "serve", "--config", str(config), "--port", str(port)]
    argv += ["--admin-socket", str(tmp / "admin-cache.sock")]
    if pin:
        argv = [tools["taskset"], "-c", harness.PROXY_CPU, *argv]
    log = tmp / "aigw-cache.log"
    proc = children.start(argv, log=log, env=env)
    url = f"http://127.0.0.1:{port}"
    harness.wait_ready(proc, url + "/healthz", log, "aigw with cache")
    target = Target("aigw-cache", "aigw cache", url, proc.pid)
    check_cache(url)
    target.rss_start_mib = harness.rss_mib(proc.pid)
    return target


def post_cache_header(url: str, body: str, cache_control: str | None = None) -> str:
    """POST one chat request; returns its x-aigw-cache header."""
    req = urllib.request.Request(
        url + "/v1/chat/completions",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    if cache_control:
        req.add_header("Cache-Control", cache_control)
    with urllib.request.urlopen(req, timeout=5) as r:
        answer = json.loads(r.read())
        if answer.get("object") != "chat.completion":
            raise CheckError(f"not a chat.completion: {answer!r:.300}")
        return str(r.headers.get("x-aigw-cache"))


def check_cache(url: str) -> None:
    """The cache really answers: the fixed body hits from its second request on."""
    post_cache_header(url, harness.CHAT_BODY)
    seen = [
        post_cache_header(url, harness.CHAT_BODY),
        post_cache_header(url, harness.CHAT_BODY.replace("five words.", "five words. #x")),
        post_cache_header(url, harness.CHAT_BODY, "no-cache"),
    ]
    if seen != ["hit", "miss", "miss"]:
        raise CheckError(f"x-aigw-cache was {seen}, expected ['hit', 'miss', 'miss']")


_COUNTER = re.compile(rb"^aigw_cache_(hits|misses)_total (\S+)$", re.M)


def cache_counts(url: str) -> tuple[int, int]:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        found = {m[1]: int(float(m[2])) for m in _COUNTER.finditer(r.read())}
    return found.get(b"hits", 0), found.get(b"misses", 0)


def median_round(legs: list[CacheLeg], conns: int) -> int:
    """The round whose hit/miss throughput ratio is the median one at this concurrency."""
    hits = [c.leg for c in legs if c.leg.connections == conns and c.leg.target == "hit"]
    ranked = sorted(hits, key=lambda leg: leg.rps_vs_passthrough or 0.0)
    return ranked[(len(ranked) - 1) // 2].round if ranked else 0


def render(legs: list[CacheLeg]) -> str:
    """One markdown table: per concurrency, every leg of the median round (by the hit/miss
    ratio), with the ratio's range over all rounds in brackets."""
    head = (
        "| leg | conns | req/s | x miss | p50 ms | p99 ms | CPU µs/req | x miss CPU "
        "| proxy core | other P / L | hits / misses | errors |"
    )
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for conns in sorted({c.leg.connections for c in legs}):
        shown_round = median_round(legs, conns)
        same = [c for c in legs if c.leg.connections == conns]
        for c in sorted(
            (c for c in same if c.leg.round == shown_round), key=lambda c: _ORDER[c.leg.target]
        ):
            leg = c.leg
            ratio = "-"
            if leg.rps_vs_passthrough is not None:
                ratio = f"{leg.rps_vs_passthrough:.2f}x"
                ratios = [
                    x.leg.rps_vs_passthrough
                    for x in same
                    if x.leg.target == leg.target and x.leg.rps_vs_passthrough
                ]
                if len(ratios) > 1 and leg.target != "miss":
                    ratio += f" ({min(ratios):.2f}-{max(ratios):.2f})"
            cpu_ratio = "-" if leg.cpu_vs_passthrough is None else f"{leg.cpu_vs_passthrough:.2f}x"
            counts = "-" if leg.target == "direct" else f"{c.hits:,} / {c.misses:,}"
            errs = ", ".join(f"{k} {v}" for k, v in leg.errors.items()) or "0"
            out.append(
                f"| {leg.label} | {leg.connections} | {leg.rps:,.0f} | {ratio} | "
                f"{leg.p50_ms:.3f} | {leg.p99_ms:.3f} | "
                f"{harness._fmt(leg.proxy_cpu_us_per_req, '.0f')} | {cpu_ratio} | "
                f"{harness._fmt(leg.proxy_core_busy, '.0%')} | "
                f"{harness._fmt(leg.other_on_proxy_core, '.0%')} / "
                f"{harness._fmt(leg.other_on_load_core, '.0%')} | {counts} | {errs} |"
            )
    return "\n".join(out)


_ORDER = {"direct": 0, "hit": 1, "miss": 2, "no-cache": 3}


def pair_with_miss(legs: list[CacheLeg]) -> None:
    """Ratios to the unique-body miss of the same round and concurrency (stored in the Leg's
    pass-through ratio fields, which is what they are here: the baseline of the run)."""
    miss = {(c.leg.connections, c.leg.round): c.leg for c in legs if c.leg.target == "miss"}
    for c in legs:
        base = miss.get((c.leg.connections, c.leg.round))
        if base is None or c.leg.target == "direct" or not base.rps:
            continue
        c.leg.rps_vs_passthrough = c.leg.rps / base.rps
        if c.leg.proxy_cpu_us_per_req and base.proxy_cpu_us_per_req:
            c.leg.cpu_vs_passthrough = c.leg.proxy_cpu_us_per_req / base.proxy_cpu_us_per_req


def summary(legs: list[CacheLeg]) -> list[str]:
    lines = []
    for conns in sorted({c.leg.connections for c in legs}):
        hits = [c.leg for c in legs if c.leg.connections == conns and c.leg.target == "hit"]
        ratios = [leg.rps_vs_passthrough for leg in hits if leg.rps_vs_passthrough]
        cpu = [leg.cpu_vs_passthrough for leg in hits if leg.cpu_vs_passthrough]
        if ratios:
            median = statistics.median(ratios)
            verdict = "met" if median >= 3 else "NOT met"
            line = (
                f"c={conns}: cache hit / miss throughput {median:.2f}x (median of "
                f"{len(ratios)} rounds, range {min(ratios):.2f}-{max(ratios):.2f}); "
                f"issue 5 #5a target >= 3x: {verdict}"
            )
            if cpu:
                line += (
                    f"; CPU per request hit / miss {statistics.median(cpu):.2f}x "
                    f"(range {min(cpu):.2f}-{max(cpu):.2f})"
                )
            lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=int, default=4, help="seconds per measured leg")
    p.add_argument("--warmup", type=int, default=1, help="seconds of warm-up before each leg")
    p.add_argument("--rounds", type=int, default=3, help="repeat the legs; median shown")
    p.add_argument("--connections", default="1,16", help="comma-separated wrk -c values")
    p.add_argument("--no-direct", action="store_true", help="skip the direct nginx legs")
    p.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    p.add_argument("--no-install", action="store_true", help="do not apt-get install tools")
    p.add_argument(
        "--wait-quiet", type=int, default=0, metavar="S", help="before each round, as run.py"
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="after the legs, sample the hit path with py-spy at the highest concurrency",
    )
    p.add_argument("--output", type=Path, default=None, help="results JSON path")
    args = p.parse_args(argv)
    if args.profile and not shutil.which("py-spy"):
        p.error("--profile needs py-spy: pip install py-spy")
    conns = [int(c) for c in args.connections.split(",") if c.strip()]

    tools = harness.ensure_tools(install=not args.no_install)
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    signal.signal(signal.SIGTERM, harness._raise_interrupt)
    children = Children()
    tmp = Path(tempfile.mkdtemp(prefix="aigw-cache-bench-"))
    started = dt.datetime.now(dt.UTC)
    legs: list[CacheLeg] = []
    hit_profile: harness.Profile | None = None
    scripts = {
        "hit": harness.LUA_SCRIPT,
        "miss": tmp / "miss.lua",
        "no-cache": tmp / "no-cache.lua",
    }
    post_lua = harness.LUA_SCRIPT.read_text()
    scripts["miss"].write_text(post_lua + MISS_LUA)
    scripts["no-cache"].write_text(post_lua + NO_CACHE_LUA)
    labels = {
        "direct": "direct nginx",
        "hit": "cache hit",
        "miss": "cache miss (unique body)",
        "no-cache": "cache miss (no-cache)",
    }
    try:
        found: list[Target] = []
        nginx_pid = harness.start_nginx(tools, children, tmp, pin, found)
        direct = found[0]
        aigw = start_aigw_cache(tools, children, tmp, pin, direct.url)
        kinds = (
            ["hit", "miss", "no-cache"] if args.no_direct else ["direct", "hit", "miss", "no-cache"]
        )
        total = len(conns) * args.rounds * len(kinds) * (args.duration + args.warmup + 0.3)
        print(f"cache bench: {len(conns) * args.rounds * len(kinds)} legs, ~{total:.0f} s")
        for c, rnd in itertools.product(conns, range(args.rounds)):
            if args.wait_quiet:
                harness.wait_quiet(args.wait_quiet)
            for kind in kinds:
                base = direct if kind == "direct" else aigw
                target = dataclasses.replace(base, name=kind, label=labels[kind])
                before = cache_counts(aigw.url)
                leg = harness.measure(
                    tools,
                    children,
                    target,
                    mode="chat",
                    connections=c,
                    duration=args.duration,
                    warmup=args.warmup,
                    nginx_pid=nginx_pid,
                    pin=pin,
                    script=scripts.get(kind, harness.LUA_SCRIPT),
                )
                after = cache_counts(aigw.url)
                leg.round = rnd
                legs.append(CacheLeg(leg, after[0] - before[0], after[1] - before[1]))
                cpu = leg.proxy_cpu_us_per_req
                print(
                    f"  c={c:<3} round {rnd + 1} {leg.label:26} {leg.rps:>9,.0f}/s  "
                    f"p50 {leg.p50_ms:.3f} ms"
                    + (f", {cpu:.0f} µs CPU/req" if cpu is not None else "")
                    + ("" if kind == "direct" else f", hits {legs[-1].hits:,}")
                    + ("" if kind == "direct" else f" misses {legs[-1].misses:,}"),
                    flush=True,
                )
        if args.profile:
            # run.py's profile() drives the fixed chat body: exactly the hit leg.
            hit_profile = harness.profile(tools, children, aigw, max(conns), args.duration, pin)
    except KeyboardInterrupt:
        print("\ncache bench: interrupted; stopping everything", file=sys.stderr)
        return 130
    except (StartError, CheckError, OSError) as exc:
        print(f"cache bench: {exc}", file=sys.stderr)
        return 1
    finally:
        children.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    pair_with_miss(legs)
    command = shlex.join(
        ["python", "bench/cache_bench.py", *(sys.argv[1:] if argv is None else argv)]
    )
    print()
    print(
        f"{command}  --  {started:%Y-%m-%d %H:%M} UTC, {harness.cpu_model()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, aigw {harness.git_describe()}"
    )
    where = (
        f"aigw pinned to CPU {harness.PROXY_CPU}, nginx + wrk to CPU {harness.LOAD_CPU}"
        if pin
        else "unpinned"
    )
    print(f"{where}; {args.duration} s per leg after {args.warmup} s warm-up; wrk -t1\n")
    print(render(legs))
    print()
    for line in summary(legs):
        print(line)
    problems = [
        f"{c.leg.label} c={c.leg.connections} round {c.leg.round + 1}: {c.hits} hits, "
        f"{c.misses} misses"
        for c in legs
        if (c.leg.target == "hit" and c.misses > 1)
        or (c.leg.target in ("miss", "no-cache") and c.hits)
    ]
    problems += [
        f"{c.leg.label} c={c.leg.connections}: errors {c.leg.errors}" for c in legs if c.leg.errors
    ]
    noisy = [
        max(c.leg.other_on_proxy_core or 0, c.leg.other_on_load_core or 0)
        for c in legs
        if c.leg.other_on_proxy_core is not None
    ]
    if noisy and max(noisy) > 0.15:
        print(
            f"WARNING: the machine was not quiet: other work took up to {max(noisy):.0%} of a "
            "bench core (column 'other'); trust the same-round ratios and CPU µs/req over req/s"
        )
    for line in problems:
        print(f"PROBLEM: {line}")
    if hit_profile is not None:
        print(
            f"\nprofile of the hit path (py-spy, {hit_profile.samples} samples at "
            f"c={hit_profile.connections}):"
        )
        print(harness.render_profile(hit_profile))
    harness.RESULTS_DIR.mkdir(exist_ok=True)
    path = args.output or harness.RESULTS_DIR / f"cache-{started:%Y%m%d-%H%M%S}.json"
    payload = {
        "command": command,
        "started_utc": started.isoformat(),
        "machine": {
            "cpu": harness.cpu_model(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            **harness.tool_versions(tools),
        },
        "aigw_commit": harness.git_describe(),
        "pinned": pin,
        "legs": [
            {**dataclasses.asdict(c.leg), "cache_hits": c.hits, "cache_misses": c.misses}
            for c in legs
        ],
        "summary": summary(legs),
        "hit_profile": dataclasses.asdict(hit_profile) if hit_profile else None,
        "problems": problems,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nraw results: {path}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
