"""Per-tenant rate limits: token buckets for requests and (optionally) tokens per minute.

Each bucket is stored as one float, its *theoretical arrival time* (GCRA, the token bucket
written as a timestamp): the moment the bucket would be full again. A bucket with `tat <= now`
is full and carries no information, so it is simply absent; `evict_idle()` (run automatically
every `max_idle` seconds from the check path) drops full buckets and rebuilds the dicts so memory
returns to baseline after a crowd of tenants leaves. The same single value maps one-to-one onto a
Redis key with a PX expiry: `aigw.limits.shared.SharedRateLimiter` keeps the buckets there,
shared by every instance, and falls back to this class's in-memory buckets when Redis is
unreachable.

`aigw.limits.admission.Admission` calls the async methods (`take_request`, `take_tokens`,
`settle_tokens`) so a shared limiter can do its round trip; here they only wrap the synchronous
checks. (The shared admission takes its buckets together with the quota instead.)

Unlimited (0) limits return the shared `UNLIMITED` decision and allocate nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from aigw.config import RateLimitConfig, RateLimitRule
from aigw.errors import RateLimitError


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    limit: int  # bucket size (burst); 0 = unlimited
    remaining: int  # whole units left after this check
    retry_after: float  # exact seconds until one more unit is available; 0 when allowed
    reset_after: float  # seconds until the bucket is full again


#: The decision for an unlimited tenant: shared, never allocated per request.
UNLIMITED = RateDecision(True, 0, 0, 0.0, 0.0)


@dataclass(frozen=True, slots=True)
class BucketShape:
    """Shape of one kind of bucket for one rule (shared by all tenants using the rule): one
    unit every `interval` seconds, at most `size` units at once."""

    interval: float  # seconds per unit
    size: int  # burst, in units
    span: float  # size * interval: how far tat may run ahead of now
    tolerance: float  # span plus a millionth of a unit against float drift


def _bucket(per_second: float, size: int) -> BucketShape | None:
    if per_second <= 0:
        return None
    interval = 1.0 / per_second
    span = size * interval
    return BucketShape(interval, size, span, span + interval * 1e-6)


def _request_bucket(rule: RateLimitRule) -> BucketShape | None:
    rps = rule.requests_per_second
    size = rule.burst if rule.burst > 0 else max(1, math.ceil(rps))
    return _bucket(rps, size)


def _token_bucket(rule: RateLimitRule) -> BucketShape | None:
    tpm = rule.tokens_per_minute
    return _bucket(tpm / 60.0, tpm)


class RateLimiter:
    """Token buckets per tenant. Not thread-safe: used from the event loop thread."""

    def __init__(
        self,
        config: RateLimitConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_idle: float = 60.0,
    ) -> None:
        self._clock = clock
        #: a full bucket is forgotten at most this many seconds after it filled up
        self.max_idle = max_idle
        self._requests: dict[str, float] = {}
        self._tokens: dict[str, float] = {}
        self._next_sweep = clock() + max_idle
        self._config = config
        self._build_rules(config)

    def _build_rules(self, config: RateLimitConfig) -> None:
        default = config.rule_for("")
        self._req_default = _request_bucket(default)
        self._tok_default = _token_bucket(default)
        # A tenant maps to None when its own rule is unlimited.
        self._req_rules = {t: _request_bucket(r) for t, r in config.tenants.items()}
        self._tok_rules = {t: _token_bucket(r) for t, r in config.tenants.items()}

    def reload(self, config: RateLimitConfig) -> None:
        """Apply new limits; buckets carry over, clamped to the new burst."""
        self._config = config
        self._build_rules(config)
        now = self._clock()
        self._requests = self._carry(self._requests, self._req_rules, self._req_default, now)
        self._tokens = self._carry(self._tokens, self._tok_rules, self._tok_default, now)

    @staticmethod
    def _carry(
        buckets: dict[str, float],
        rules: dict[str, BucketShape | None],
        default: BucketShape | None,
        now: float,
    ) -> dict[str, float]:
        kept: dict[str, float] = {}
        for tenant, tat in buckets.items():
            shape = rules.get(tenant, default)
            if shape is not None and tat > now:
                kept[tenant] = min(tat, now + shape.span)
        return kept

    @property
    def config(self) -> RateLimitConfig:
        return self._config

    @property
    def bucket_count(self) -> int:
        """Buckets held in memory (requests + tokens)."""
        return len(self._requests) + len(self._tokens)

    def request_bucket(self, tenant: str) -> BucketShape | None:
        """Shape of the tenant's request bucket; None when unlimited."""
        return self._req_rules.get(tenant, self._req_default)

    def token_bucket(self, tenant: str) -> BucketShape | None:
        """Shape of the tenant's token bucket; None when unlimited."""
        return self._tok_rules.get(tenant, self._tok_default)

    # --- the interface the proxy uses -----------------------------------------------------

    async def take_request(self, tenant: str) -> RateDecision:
        """`check_request()`, awaitable (a shared limiter asks its store)."""
        return self.check_request(tenant)

    async def take_tokens(self, tenant: str, tokens: int) -> RateDecision:
        """`check_tokens()`, awaitable."""
        return self.check_tokens(tenant, tokens)

    async def settle_tokens(self, tenant: str, estimate: int, used: int) -> None:
        """Replace a request's token estimate by what it used. Never raises."""
        if used > estimate:
            self.add_tokens(tenant, used - estimate)
        elif used < estimate:
            self.refund_tokens(tenant, estimate - used)

    # --- hot path -------------------------------------------------------------------------

    def check_request(self, tenant: str) -> RateDecision:
        """Take one request from the tenant's bucket if one is available."""
        shape = self._req_rules.get(tenant, self._req_default)
        if shape is None:
            return UNLIMITED
        now = self._clock()
        if now >= self._next_sweep:
            self.evict_idle(now)
        return _take(self._requests, tenant, shape, 1.0, now)

    def check_tokens(self, tenant: str, tokens: int) -> RateDecision:
        """Reserve an estimate of a request's tokens against tokens_per_minute. A request
        larger than the whole bucket waits for a full bucket and then takes all of it."""
        shape = self._tok_rules.get(tenant, self._tok_default)
        if shape is None:
            return UNLIMITED
        now = self._clock()
        # Swept here too: with only a token limit, check_request never reaches its sweep.
        if now >= self._next_sweep:
            self.evict_idle(now)
        return _take(self._tokens, tenant, shape, float(min(tokens, shape.size)), now)

    def add_tokens(self, tenant: str, tokens: int) -> None:
        """Charge tokens beyond the estimate (actual usage was higher). Never refuses: the
        debt delays the tenant's next requests instead."""
        shape = self._tok_rules.get(tenant, self._tok_default)
        if shape is None or tokens <= 0:
            return
        now = self._clock()
        tat = self._tokens.get(tenant, now)
        self._tokens[tenant] = (tat if tat > now else now) + tokens * shape.interval

    def refund_tokens(self, tenant: str, tokens: int) -> None:
        """Give back tokens the estimate over-counted (actual usage was lower, or none)."""
        shape = self._tok_rules.get(tenant, self._tok_default)
        if shape is None or tokens <= 0:
            return
        tat = self._tokens.get(tenant)
        if tat is None:
            return
        now = self._clock()
        tat -= tokens * shape.interval
        if tat > now:
            self._tokens[tenant] = tat
        else:  # full again
            del self._tokens[tenant]

    def evict_idle(self, now: float | None = None) -> int:
        """Forget every full bucket; returns how many were dropped. O(buckets), runs once per
        `max_idle` from the check path. The dicts are rebuilt, not pruned, because a dict never
        gives back its table memory on deletion."""
        if now is None:
            now = self._clock()
        self._next_sweep = now + self.max_idle
        before = len(self._requests) + len(self._tokens)
        self._requests = {t: tat for t, tat in self._requests.items() if tat > now}
        self._tokens = {t: tat for t, tat in self._tokens.items() if tat > now}
        return before - len(self._requests) - len(self._tokens)


def _take(
    buckets: dict[str, float], tenant: str, shape: BucketShape, units: float, now: float
) -> RateDecision:
    tat = buckets.get(tenant, now)
    if tat < now:
        tat = now
    new_tat = tat + units * shape.interval
    ahead = new_tat - now
    if ahead > shape.tolerance:
        # Rounded to the nanosecond: float drift must not turn 0.1 s into 101 ms for clients.
        retry = round(ahead - shape.span, 9)
        return RateDecision(False, shape.size, 0, retry if retry > 0 else 0.0, tat - now)
    buckets[tenant] = new_tat
    remaining = int((shape.span - ahead) / shape.interval + 1e-6)
    return RateDecision(True, shape.size, remaining, 0.0, ahead)


# --- headers and errors ------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """OpenAI's reset format (Go durations): `120ms`, `1s`, `1.5s`, `6m0s`, `1h2m3s`.
    Rounded up to the millisecond so a client that waits that long is never early."""
    ms = math.ceil(seconds * 1000.0 - 1e-6)
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    sec = f"{secs}" if millis == 0 else f"{secs}.{millis:03d}".rstrip("0")
    if hours:
        return f"{hours}h{minutes}m{sec}s"
    if minutes:
        return f"{minutes}m{sec}s"
    return f"{sec}s"


def headers(requests: RateDecision, tokens: RateDecision | None = None) -> dict[str, str]:
    """`x-ratelimit-*` headers for a response; a kind without a limit adds none."""
    result: dict[str, str] = {}
    if requests.limit:
        result["x-ratelimit-limit-requests"] = str(requests.limit)
        result["x-ratelimit-remaining-requests"] = str(requests.remaining)
        result["x-ratelimit-reset-requests"] = format_duration(requests.reset_after)
    if tokens is not None and tokens.limit:
        result["x-ratelimit-limit-tokens"] = str(tokens.limit)
        result["x-ratelimit-remaining-tokens"] = str(tokens.remaining)
        result["x-ratelimit-reset-tokens"] = format_duration(tokens.reset_after)
    return result


def limit_error(
    tenant: str, requests: RateDecision, tokens: RateDecision | None = None
) -> RateLimitError:
    """The 429 for a refused decision (whichever of the two refused), with `retry-after`,
    `retry-after-ms` and the `x-ratelimit-*` headers."""
    if not requests.allowed:
        kind, refused = "requests", requests
    else:
        assert tokens is not None and not tokens.allowed, "limit_error needs a refused decision"
        kind, refused = "tokens", tokens
    message = (
        f"Rate limit reached for tenant '{tenant}' on {kind}: limit {refused.limit}, "
        f"try again in {format_duration(refused.retry_after)}."
    )
    return RateLimitError(message, refused.retry_after, headers=headers(requests, tokens))
