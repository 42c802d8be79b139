"""In-process micro-benchmarks: what each feature costs one request, in µs of one core.

    python bench/micro.py                    # every item, ~30 s
    python bench/micro.py --only balancer    # items whose name contains a word
    python bench/micro.py --reps 9 --wait-quiet 120 --cpu 1

Each item is the set of calls the proxy makes for one request (see aigw/proxy.py), timed with
`time.perf_counter_ns` in a tight loop on the real classes with their real clocks. A calibration
pass doubles the loop until it runs ~10 ms (that is also the warm-up); then `--rounds` passes over
all items, each doing `--reps` repetitions of ~`--rep-ms`, so a slow spell of a shared machine
spreads over every item. The table shows the median and the best repetition in µs per request.
The process pins itself to one core (`os.sched_setaffinity`, `--cpu`) and reports how much of that
core other processes took meanwhile. The garbage collector stays on: the objects a request
allocates are part of its cost. The issues' budgets (3 #7, 4 #7, 5 #5b, money: price lookup +
cost + rollup <= 5 us) are judged on the median. Raw results go to
bench/results/micro-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import itertools
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(1, str(BENCH_DIR.parent))

import run as harness  # noqa: E402  (bench/run.py: the bodies and answers of the wrk bench)

from aigw.auth import Authenticator  # noqa: E402
from aigw.balancer import Balancers  # noqa: E402
from aigw.cache import CachedResponse, ResponseCache, cache_key, parse_cache_control  # noqa: E402
from aigw.choices import STRATEGY_CLASSES  # noqa: E402
from aigw.config import (  # noqa: E402
    AuthKey,
    Config,
    HealthConfig,
    ModelConfig,
    QuotaConfig,
    RateLimitConfig,
    Secret,
    StateConfig,
    TargetConfig,
)
from aigw.hooks.base import RequestContext, Usage  # noqa: E402
from aigw.hooks.validation import ValidationHook  # noqa: E402
from aigw.limits.budget import Pricing  # noqa: E402
from aigw.limits.quota import QuotaManager  # noqa: E402
from aigw.limits.ratelimit import RateLimiter  # noqa: E402
from aigw.limits.ratelimit import headers as rate_headers  # noqa: E402
from aigw.metrics import Metrics  # noqa: E402
from aigw.pricing import PriceTable, cost, cost_nanos  # noqa: E402
from aigw.state import open_store  # noqa: E402
from aigw.streaming import StreamTap, usage_from_body  # noqa: E402
from aigw.usage_history import UsageRollup  # noqa: E402

ENDPOINT = "chat/completions"
TENANT = "bench"
CHAT_RAW = harness.CHAT_BODY.encode()  # the wrk bench's 2-message chat request (184 bytes)
CHAT = json.loads(CHAT_RAW)
ANSWER = json.dumps(harness.COMPLETION, separators=(",", ":")).encode()  # 361 bytes, usage last
SSE = harness.sse_body().encode()  # 14 events: role, 10 words, stop, usage chunk, [DONE]
SSE_EVENTS = [e + b"\n\n" for e in SSE.split(b"\n\n") if e]
USAGE = Usage(24, 6, 30)
N_TARGETS = 10

BALANCER_BUDGET = 20.0  # issue 3 #7
QUOTA_BUDGET = 30.0  # issue 4 #7
METRICS_BUDGET = 15.0  # issue 5 #5b
MONEY_BUDGET = 5.0  # money issue: price lookup + cost + rollup
#: A gateway model whose one target is priced by the shipped table (the money items).
BENCH_MODELS = {
    "bench-model": ModelConfig("bench-model", targets=(TargetConfig("p", "gpt-4o-mini"),))
}


@dataclass(slots=True)
class Item:
    name: str
    run: Callable[[], object] | None = None  # one request's calls, synchronous
    arun: Callable[[], Awaitable[object]] | None = None  # or awaited, as the proxy awaits them
    budget_us: float | None = None
    group: str = ""  # what --only also matches: balancer, quota, metrics, cache, request


@dataclass(slots=True)
class Result:
    name: str
    median_us: float
    min_us: float
    budget_us: float | None
    loops: int  # requests per repetition
    reps: int  # repetitions over all rounds

    @property
    def within(self) -> bool | None:
        return None if self.budget_us is None else self.median_us <= self.budget_us


# --- timing ------------------------------------------------------------------------------


async def _loop_ns(item: Item, n: int) -> int:
    repeat = itertools.repeat(None, n)
    if item.run is not None:
        fn = item.run
        t0 = time.perf_counter_ns()
        for _ in repeat:
            fn()
        return time.perf_counter_ns() - t0
    assert item.arun is not None
    afn = item.arun
    t0 = time.perf_counter_ns()
    for _ in repeat:
        await afn()
    return time.perf_counter_ns() - t0


async def calibrate(item: Item, rep_ms: float) -> int:
    """Loops per repetition; doubling until one loop takes ~10 ms is also the warm-up."""
    n = 16
    while True:
        elapsed = await _loop_ns(item, n)
        if elapsed >= 10_000_000 or n >= 1 << 26:
            break
        n *= 2
    return max(16, int(n * rep_ms * 1e6 / max(elapsed, 1)))


async def measure(item: Item, n: int, reps: int) -> list[float]:
    """µs per request of each of `reps` repetitions of `n` requests."""
    return [await _loop_ns(item, n) / n / 1000 for _ in range(reps)]


# --- the items ---------------------------------------------------------------------------


def balancer_items() -> list[Item]:
    """Issue 3 #7: acquire a lease on one of 10 targets, first byte, success — per strategy."""
    items = []
    for strategy in STRATEGY_CLASSES:
        targets = tuple(
            TargetConfig(provider=f"p{i}", model="gpt-4o-mini", weight=1 + i % 3)
            for i in range(N_TARGETS)
        )
        models = {"m": ModelConfig(name="m", strategy=strategy, targets=targets)}
        balancers = Balancers(models, HealthConfig(check_interval=0))
        get = balancers.get

        def one(get: Callable[[str], Any] = get) -> None:
            lease = get("m").acquire()
            lease.first_byte()
            lease.success()

        items.append(Item(f"balancer {strategy}, {N_TARGETS} targets", one, None, BALANCER_BUDGET))
    return items


async def quota_items(tmp: Path) -> tuple[list[Item], list[Any]]:
    """Issue 4 #7: quota reserve + commit and the two rate-limit checks, per request; with the
    sqlite store (the default), the memory store, and an unlimited tenant (features off)."""
    limits = RateLimitConfig(requests_per_second=1e9, burst=10**9, tokens_per_minute=10**15)
    items: list[Item] = []
    stores = []
    for backend in ("sqlite", "memory"):
        store = await open_store(StateConfig(backend=backend), path=tmp / "state.db")
        stores.append(store)
        quota = QuotaManager(store, QuotaConfig(default=10**15))
        limiter = RateLimiter(limits)
        estimate = quota.estimate_tokens(ENDPOINT, CHAT)

        async def checks(
            quota: QuotaManager = quota, limiter: RateLimiter = limiter, estimate: int = estimate
        ) -> None:
            limiter.check_request(TENANT)
            limiter.check_tokens(TENANT, estimate)
            await quota.commit(await quota.reserve(TENANT, estimate), USAGE)

        async def whole(
            quota: QuotaManager = quota, limiter: RateLimiter = limiter, body: Any = CHAT
        ) -> None:
            # Everything proxy._proxy and _settle do for quota and rate limits.
            req = limiter.check_request(TENANT)
            headers = rate_headers(req)
            tokens = quota.estimate_tokens(ENDPOINT, body)
            tok = limiter.check_tokens(TENANT, tokens)
            headers.update(rate_headers(req, tok))
            reservation = await quota.reserve(TENANT, tokens)
            limiter.refund_tokens(TENANT, tokens - USAGE.total_tokens)
            await quota.commit(reservation, USAGE)

        money_quota = QuotaManager(
            store, QuotaConfig(default=10**15, tenants_usd={TENANT: Decimal(10**8)})
        )
        pricing = Pricing(Config(models=BENCH_MODELS))

        async def budget(quota: QuotaManager = money_quota, pricing: Pricing = pricing) -> None:
            # The money half of admission and settlement (Admission.money, Call.settle).
            prompt, tokens = quota.estimate(ENDPOINT, CHAT)
            nanos = 0
            if quota.budget(TENANT)[0] > 0:
                nanos = pricing.estimate("bench-model", prompt, tokens - prompt)
            reservation = await quota.reserve(TENANT, tokens, nanos=nanos)
            spent = pricing.cost("gpt-4o-mini", USAGE) or 0
            await quota.commit(reservation, USAGE, spent)

        await checks()
        await budget()
        assert limiter.check_request(TENANT).allowed and limiter.check_tokens(TENANT, 1).allowed
        items.append(
            Item(
                f"quota reserve+commit + rate check_request+check_tokens, {backend}",
                None,
                checks,
                QUOTA_BUDGET,
            )
        )
        items.append(
            Item(
                f"  same + estimate_tokens, x-ratelimit headers, token refund, {backend}",
                None,
                whole,
                QUOTA_BUDGET,
            )
        )
        items.append(
            Item(
                f"  quota + money budget: estimate, price, reserve, cost, commit, {backend}",
                None,
                budget,
                QUOTA_BUDGET,
            )
        )
    # Features off: no limits configured, yet the proxy still calls both (unlimited paths).
    store = await open_store(StateConfig(backend="memory"))
    stores.append(store)
    free_quota = QuotaManager(store, QuotaConfig())
    free_limiter = RateLimiter(RateLimitConfig())

    async def unlimited() -> None:
        free_limiter.check_request(TENANT)
        tokens = free_quota.estimate_tokens(ENDPOINT, CHAT)
        free_limiter.check_tokens(TENANT, tokens)
        await free_quota.commit(await free_quota.reserve(TENANT, tokens), USAGE)

    items.append(Item("  same, nothing limited (features off), memory", None, unlimited))
    return items, stores


def metrics_items() -> list[Item]:
    """Issue 5 #5b: the Metrics calls of one request."""
    on = Metrics(True, True)
    off = Metrics(False, True)
    model, target = harness.MODEL, f"nginx/{harness.UPSTREAM_MODEL}"

    def one(m: Metrics = on) -> None:
        m.in_flight(1)
        m.tokens(TENANT, model, 24, 6)
        m.request_done(model, target, 200, 0.0123, 0.0101, None)
        m.in_flight(-1)

    def with_cache(m: Metrics = on) -> None:
        m.in_flight(1)
        m.cache_event("miss")
        m.tokens(TENANT, model, 24, 6)
        m.request_done(model, target, 200, 0.0123, 0.0101, None)
        m.in_flight(-1)

    def stream(m: Metrics = on) -> None:
        m.in_flight(1)
        m.tokens(TENANT, model, 12, 10)
        m.request_done(model, target, 200, 0.0123, 0.0101, 0.004)
        m.in_flight(-1)

    return [
        Item("metrics: in_flight +-1, tokens, request_done", one, None, METRICS_BUDGET),
        Item("  same + cache_event (cache on)", with_cache, None, METRICS_BUDGET),
        Item("  streamed (time-to-first-token too)", stream, None, METRICS_BUDGET),
        Item("  metrics disabled", lambda: one(off)),
    ]


def money_items() -> list[Item]:
    """The money issue: what a finished request adds: its price (looked up by the upstream model
    that answered), its cost in nano-dollars, and its line in the hourly usage rollup."""
    table = PriceTable.build()  # the shipped table, as a config with no prices: gets
    rollup = UsageRollup()  # the real wall clock, as the proxy's
    cached = Usage(2400, 310, 2710, cached_tokens=1800, reasoning_tokens=120)

    def one(model: str = "gpt-4o-mini", usage: Usage = USAGE) -> None:
        price = table.lookup(model)
        nanos = cost_nanos(usage, price) if price is not None else 0
        rollup.record(TENANT, model, ENDPOINT, usage, nanos)

    def snapshot() -> None:
        one("claude-sonnet-4-5-20250929", cached)

    def unpriced() -> None:
        one("llama3.1")

    pricing = Pricing(Config(models=BENCH_MODELS))
    metrics = Metrics(True, True)
    wired_rollup = UsageRollup()

    def wired(model: str = "gpt-4o-mini", usage: Usage = USAGE) -> None:
        # What Call.settle and Call.done add for money and history, as they do it (the token
        # metric was there before).
        nanos = pricing.cost(model, usage)
        if nanos is None:
            metrics.unpriced(model)
        elif nanos:
            metrics.cost(TENANT, "bench-model", nanos)
        wired_rollup.record(TENANT, "bench-model", ENDPOINT, usage, nanos or 0, False)

    price = table.lookup("gpt-4o-mini")
    assert price is not None and cost_nanos(USAGE, price) == 7_200
    one()
    wired()
    assert len(rollup) == 1 and len(wired_rollup) == 1
    return [
        Item("money: price lookup + cost_nanos + rollup.record", one, None, MONEY_BUDGET),
        Item(
            "  as wired: Pricing.cost + cost metric + rollup.record",
            wired,
            None,
            MONEY_BUDGET,
        ),
        Item("  same, dated Anthropic name, cached tokens", snapshot, None, MONEY_BUDGET),
        Item("  same, unpriced model (cost 0)", unpriced, None, MONEY_BUDGET),
        Item("  cost() as an exact Decimal (display, not per request)", lambda: cost(USAGE, price)),
    ]


def cache_items() -> list[Item]:
    """The cache's per-request work on the chat body: key, lookup; store on a miss."""
    cache = ResponseCache(10_000, 100 * 1024 * 1024, 300.0)
    cache.put(cache_key(TENANT, ENDPOINT, CHAT) or b"", CachedResponse(ANSWER, USAGE))
    misses = ResponseCache(1_000, 100 * 1024 * 1024, 300.0)  # full after warm-up: evicts too
    counter = itertools.count()

    def hit() -> None:
        directives = parse_cache_control(None)
        key = cache_key(TENANT, ENDPOINT, CHAT)
        assert key is not None
        assert cache.get(key, directives.max_age) is not None

    def miss() -> None:
        body = dict(CHAT, seed=next(counter))
        directives = parse_cache_control(None)
        key = cache_key(TENANT, ENDPOINT, body)
        assert key is not None
        if misses.get(key, directives.max_age) is None:
            misses.put(key, CachedResponse(ANSWER, USAGE))

    return [
        Item("cache: parse Cache-Control, key, get (hit)", hit),
        Item("cache: parse Cache-Control, key, get (miss), put", miss),
    ]


def request_items() -> list[Item]:
    """The rest of a request's gateway work, for scale."""
    key = "sk-bench-" + "x" * 32
    keys = [
        AuthKey(tenant=TENANT, key=Secret(key)),
        *(AuthKey(tenant=f"t{i}", key=Secret(f"sk-other-{i}")) for i in range(99)),
    ]
    auth = Authenticator(keys)
    bearer = CIMultiDictProxy(CIMultiDict({"Authorization": f"Bearer {key}"}))
    laptop = Authenticator([])
    tenant_header = CIMultiDictProxy(CIMultiDict({"X-Aigw-Tenant": TENANT}))
    assert auth.tenant(bearer) == TENANT and laptop.tenant(tenant_header) == TENANT
    hook = ValidationHook(frozenset({harness.MODEL, harness.STREAM_MODEL}))
    ctx = RequestContext("req_1", TENANT, ENDPOINT, CHAT, 0.0)

    async def validate() -> None:
        await hook.before_request(ctx)

    def tap_one_chunk() -> None:
        tap = StreamTap(strip_usage=True)
        tap.feed(SSE)
        tap.flush()

    def tap_per_event(collect: bool = False) -> None:
        tap = StreamTap(strip_usage=True, collect=collect)
        for event in SSE_EVENTS:
            tap.feed(event)
        tap.flush()

    tap = StreamTap(strip_usage=True)
    out = tap.feed(SSE)
    assert tap.usage == Usage(12, 10, 22) and b'"usage"' not in out and tap.done
    assert usage_from_body(ANSWER) == USAGE
    return [
        Item("auth: bearer key -> tenant (100 keys)", lambda: auth.tenant(bearer)),
        Item("auth: laptop mode (X-Aigw-Tenant)", lambda: laptop.tenant(tenant_header)),
        Item("json.loads of the request body (184 B)", lambda: json.loads(CHAT_RAW)),
        Item("validation hook on the chat body", None, validate),
        Item("usage_from_body of the answer (361 B)", lambda: usage_from_body(ANSWER)),
        Item("StreamTap: 14-event stream in 1 read", tap_one_chunk),
        Item("StreamTap: 14-event stream, 1 read per event", tap_per_event),
        Item("  same, events kept (cache on)", lambda: tap_per_event(True)),
    ]


def empty_item() -> Item:
    return Item("(loop and call overhead, in every row)", lambda: None)


# --- main --------------------------------------------------------------------------------


def pin(cpu: int | None) -> int | None:
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return None
    os.sched_setaffinity(0, {cpu})
    return cpu


def render(results: list[Result]) -> str:
    head = "| item | µs/request median | min | budget µs | within budget |"
    out = [head, "|---|---:|---:|---:|---|"]
    for r in results:
        budget = "-" if r.budget_us is None else f"{r.budget_us:g}"
        within = {None: "-", True: "yes", False: "**no**"}[r.within]
        out.append(f"| {r.name} | {r.median_us:.2f} | {r.min_us:.2f} | {budget} | {within} |")
    return "\n".join(out)


async def amain(args: argparse.Namespace) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="aigw-micro-") as tmp:
        quota, stores = await quota_items(Path(tmp))
        try:
            groups = {
                "balancer": balancer_items(),
                "quota": quota,
                "metrics": metrics_items(),
                "money": money_items(),
                "cache": cache_items(),
                "request": request_items(),
            }
            for group, members in groups.items():
                for item in members:
                    item.group = group
            items = [empty_item(), *itertools.chain.from_iterable(groups.values())]
            words = [w.lower() for w in args.only]
            if words:
                items = [i for i in items if any(w in f"{i.group} {i.name}".lower() for w in words)]
            # Rounds interleave the items, so a slow spell of a shared machine spreads over
            # all of them instead of landing on one.
            loops = [await calibrate(item, args.rep_ms) for item in items]
            samples: list[list[float]] = [[] for _ in items]
            for rnd in range(args.rounds):
                print(f"round {rnd + 1} of {args.rounds}", flush=True)
                for item, n, seen in zip(items, loops, samples, strict=True):
                    seen.extend(await measure(item, n, args.reps))
            results = []
            for item, n, seen in zip(items, loops, samples, strict=True):
                result = Result(
                    item.name, statistics.median(seen), min(seen), item.budget_us, n, len(seen)
                )
                print(
                    f"  {result.name:72} {result.median_us:8.2f} µs  (min {result.min_us:.2f})",
                    flush=True,
                )
                results.append(result)
            return results
        finally:
            for store in stores:
                await store.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="passes over all items")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per item and round")
    p.add_argument("--rep-ms", type=float, default=20.0, help="length of one repetition")
    p.add_argument("--cpu", type=int, default=int(harness.PROXY_CPU), help="core to pin to")
    p.add_argument("--no-pin", action="store_true", help="do not pin to a core")
    p.add_argument("--wait-quiet", type=int, default=0, metavar="S", help="see run.py")
    p.add_argument(
        "--only", nargs="*", default=[], metavar="WORD", help="items or groups matching a word"
    )
    p.add_argument("--output", type=Path, default=None, help="results JSON path")
    args = p.parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    cpu = None if args.no_pin else pin(args.cpu)
    if args.wait_quiet:
        harness.wait_quiet(args.wait_quiet)
    busy0 = harness.cpu_busy_seconds()
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    results = asyncio.run(amain(args))
    wall = time.monotonic() - t0
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    own = self1.ru_utime + self1.ru_stime - self0.ru_utime - self0.ru_stime
    other = None
    if cpu is not None:
        busy1 = harness.cpu_busy_seconds()
        other = max(0.0, busy1[str(cpu)] - busy0[str(cpu)] - own) / wall

    command = " ".join(["python", "bench/micro.py", *sys.argv[1:]] if argv is None else argv)
    print()
    print(
        f"{command}  --  {started:%Y-%m-%d %H:%M} UTC, {harness.cpu_model()}, "
        f"Python {platform.python_version()}, aigw {harness.git_describe()}"
    )
    where = f"pinned to CPU {cpu}" if cpu is not None else "not pinned"
    noise = f"; other work took {other:.0%} of that core meanwhile" if other is not None else ""
    print(
        f"{where}{noise}; per item {args.rounds} rounds x {args.reps} reps of ~{args.rep_ms:g} ms"
        " (median and best rep)\n"
    )
    print(render(results))
    over = [r.name.strip() for r in results if r.within is False]
    if over:
        print(f"\nOVER BUDGET: {', '.join(over)}")
    harness.RESULTS_DIR.mkdir(exist_ok=True)
    path = args.output or harness.RESULTS_DIR / f"micro-{started:%Y%m%d-%H%M%S}.json"
    payload = {
        "command": command,
        "started_utc": started.isoformat(),
        "python": platform.python_version(),
        "cpu": harness.cpu_model(),
        "pinned_cpu": cpu,
        "other_on_core": other,
        "aigw_commit": harness.git_describe(),
        "results": [{**dataclasses.asdict(r), "within_budget": r.within} for r in results],
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nraw results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
