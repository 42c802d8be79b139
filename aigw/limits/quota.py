"""Per-tenant token quotas and money budgets: calendar periods, reserve → commit/release,
runtime overrides.

A request reserves its worst case (prompt estimate + max completion tokens) before it goes
upstream; the answer's real usage then replaces the reservation (`commit`), or a failed request
drops it (`release`). The store does check-and-reserve atomically, so many concurrent requests
of one tenant can never push its recorded usage past the limit (as long as real usage stays
within the reservation, which `max_tokens` bounds for the completion).

Periods are calendar-aligned in `quota.timezone`: hourly, daily, weekly (Monday), monthly,
never. Usage is keyed by the period's start (`daily:2024-03-10`), so a new period simply starts
at zero; nothing sweeps old counters.

Limits: a runtime override (`aigw quota set`, persisted in the store) wins over
`quota.tenants[tenant]`, which wins over `quota.default`. 0 means unlimited; usage of unlimited
tenants is still recorded so `aigw quota show` can show it.

Money budgets (`aigw.limits.budget`) ride along: the same period, the same reservation, the same
atomic check in the store (`spent + reserved + cost <= budget` beside the token check), the same
runtime overrides (`aigw quota set TENANT 20 --usd`); either limit can refuse. A tenant with
either limit holds its token estimate in the store (a stream past it extends or is cut); a
tenant with neither holds nothing.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from aigw.config import MAX_QUOTA_TOKENS, PERIODS, QuotaConfig
from aigw.errors import QuotaExceededError, ServiceUnavailableError, UnknownTenantError
from aigw.exchange import Usage
from aigw.limits.budget import Budgets, exceeded_message
from aigw.pricing import MAX_BUDGET_USD, NANOS_PER_USD, usd_number
from aigw.state.base import Override, ReserveResult, StateStore
from aigw.tenants import (  # noqa: F401 - re-exported for callers of the quota API
    TENANT_RULE,
    InvalidTenantName,
    is_valid_tenant,
    validate_tenant,
)

# --- periods -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeriodWindow:
    """One calendar period: usage key, start and end (= next reset) in epoch seconds."""

    period: str
    key: str
    start: float
    end: float

    def next_reset(self) -> str | None:
        """The end as an ISO 8601 UTC string (`2024-03-11T04:00:00Z`); None for `never`."""
        if math.isinf(self.end):
            return None
        return datetime.fromtimestamp(self.end, UTC).isoformat().replace("+00:00", "Z")


_NEVER = PeriodWindow("never", "never", -math.inf, math.inf)


def _midnight(day: date, tz: tzinfo) -> float:
    # A midnight skipped by DST resolves (fold=0) to the transition instant: the day's start.
    return datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()


def period_window(period: str, now: float, tz: tzinfo) -> PeriodWindow:
    """The period containing `now`, aligned to the wall clock of `tz`.

    Days, weeks and months are computed on local dates and converted at the end, so a day is
    23 or 25 hours long across a DST change and months have their real length.
    """
    if period == "never":
        return _NEVER
    local = datetime.fromtimestamp(now, tz)
    if period == "hourly":
        # replace() keeps `fold`, so the repeated hour of a DST fall-back stays distinct.
        start_local = local.replace(minute=0, second=0, microsecond=0)
        start = start_local.timestamp()
        return PeriodWindow(
            period, f"hourly:{start_local.isoformat(timespec='minutes')}", start, start + 3600.0
        )
    today = local.date()
    if period == "daily":
        first, following, label = today, today + timedelta(days=1), today.isoformat()
    elif period == "weekly":
        first = today - timedelta(days=today.weekday())
        following, label = first + timedelta(days=7), first.isoformat()
    elif period == "monthly":
        first = today.replace(day=1)
        if first.month == 12:
            following = first.replace(year=first.year + 1, month=1)
        else:
            following = first.replace(month=first.month + 1)
        label = first.strftime("%Y-%m")
    else:
        raise ValueError(f"unknown quota period {period!r} (choose from {', '.join(PERIODS)})")
    return PeriodWindow(period, f"{period}:{label}", _midnight(first, tz), _midnight(following, tz))


# --- reservations and status -------------------------------------------------------------

#: `attempt(limit, window, reservation_id, held, budget, held_nanos)`: one try at reserving
#: (see `reserve`).
ReserveAttempt = Callable[[int, "PeriodWindow", int, int, int, int], Awaitable[ReserveResult]]

#: The largest money budget, in nano-dollars.
MAX_BUDGET_NANOS = MAX_BUDGET_USD * NANOS_PER_USD

#: How often a reserve is retried when a shared store reports changed overrides.
STALE_RETRIES = 8


@dataclass(slots=True)
class Reservation:
    """Tokens and money held for one in-flight request. Commit or release it exactly once;
    repeated calls are ignored."""

    tenant: str
    period_key: str
    tokens: int
    id: int
    done: bool = False
    #: nano-dollars held against the tenant's money budget (0: it has none)
    nanos: int = 0


@dataclass(frozen=True, slots=True)
class QuotaStatus:
    tenant: str
    input_tokens: int
    output_tokens: int
    total_tokens: int
    limit: int  # 0 = unlimited
    period: str
    percent_used: float
    next_reset: str | None  # ISO 8601 UTC, None for `never`
    reserved: int
    source: str  # "config" | "override"
    #: money spent in the period and the money budget per period, USD (0: no budget)
    cost_usd: float = 0.0
    budget_usd: float = 0.0
    budget_source: str = "config"  # "config" | "override"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- the manager -------------------------------------------------------------------------


class QuotaManager:
    """Quota enforcement for all tenants over one `StateStore`. Not thread-safe: use it from
    the event loop thread (that is what makes in-process reservations atomic)."""

    def __init__(
        self,
        store: StateStore,
        config: QuotaConfig,
        *,
        clock: Callable[[], float] = time.time,
        reservation_ttl: float = 3600.0,
    ) -> None:
        self._store = store
        self._clock = clock
        #: how long a shared store keeps a reservation of a crashed instance
        self.reservation_ttl = reservation_ttl
        self._ids = itertools.count(1)
        self.reload(config)

    def reload(self, config: QuotaConfig) -> None:
        """Apply a new config (SIGHUP). Overrides and recorded usage are kept."""
        if config.period not in PERIODS:
            raise ValueError(f"unknown quota period {config.period!r}")
        self._config = config
        self._budgets = Budgets(config)
        self._tz = ZoneInfo(config.timezone)
        self._windows: dict[str, PeriodWindow] = {}

    @property
    def config(self) -> QuotaConfig:
        return self._config

    @property
    def store(self) -> StateStore:
        return self._store

    def policy(self, tenant: str) -> tuple[int, str, str]:
        """`(limit, period, source)` in force for a tenant."""
        override = self._store.overrides.get(tenant)
        config = self._config
        if override is None:
            return config.tenants.get(tenant, config.default), config.period, "config"
        period = override.period or config.period
        if override.tokens is None:  # an override of the money budget only
            return config.tenants.get(tenant, config.default), period, "config"
        return override.tokens, period, "override"

    def budget(self, tenant: str) -> tuple[int, str]:
        """`(budget in nano-dollars, source)` in force for a tenant; 0 = no money budget."""
        override = self._store.overrides.get(tenant)
        if override is not None and override.usd_nanos is not None:
            return override.usd_nanos, "override"
        return self._budgets.configured(tenant), "config"

    def window(self, period: str) -> PeriodWindow:
        """The current window of `period`; recomputed only when the clock leaves it."""
        now = self._clock()
        window = self._windows.get(period)
        if window is None or not (window.start <= now < window.end):
            window = period_window(period, now, self._tz)
            self._windows[period] = window
        return window

    # --- hot path -------------------------------------------------------------------------

    async def reserve(
        self,
        tenant: str,
        tokens: int,
        attempt: ReserveAttempt | None = None,
        *,
        nanos: int = 0,
    ) -> Reservation:
        """Hold `tokens` (and `nanos` of money) for a request, or raise `QuotaExceededError`
        when used + reserved + tokens would pass the token limit or spent + reserved + nanos
        the money budget. A tenant with a budget holds at least one nano-dollar. Tenants with
        neither limit get a no-op reservation (the store only notes the tenant's current
        period).

        `attempt(limit, window, reservation_id, held, budget, held_nanos)` replaces the
        store's own `reserve`: the shared admission takes its rate-limit buckets in the same
        round trip (and raises its own refusals). Either way the quota's rules are these: the
        limits and period in force, a retry when another instance changed the overrides, the
        refusal."""
        if not is_valid_tenant(tenant):
            raise InvalidTenantName(tenant)
        if tokens < 0 or nanos < 0:
            raise ValueError("tokens and nanos must be >= 0")
        for _ in range(STALE_RETRIES):
            limit, period, _ = self.policy(tenant)
            budget, _ = self.budget(tenant)
            window = self.window(period)
            rid = next(self._ids)
            held = tokens if limit > 0 or budget > 0 else 0
            held_nanos = max(nanos, 1) if budget > 0 else 0
            if attempt is None:
                result = await self._store.reserve(
                    tenant,
                    window.key,
                    held,
                    limit,
                    reservation_id=rid,
                    ttl=self.reservation_ttl,
                    expires_at=window.end,
                    nanos=held_nanos,
                    budget=budget,
                )
            else:
                result = await attempt(limit, window, rid, held, budget, held_nanos)
            if result.stale:  # another instance changed an override: resolve the limit again
                continue
            if not result.allowed:
                raise self.refused(tenant, limit, budget, window, result, tokens, held_nanos)
            return Reservation(tenant, window.key, held, rid, nanos=held_nanos)
        raise overrides_unsettled()

    @staticmethod
    def refused(
        tenant: str,
        limit: int,
        budget: int,
        window: PeriodWindow,
        result: ReserveResult,
        tokens: int,
        nanos: int,
    ) -> QuotaExceededError:
        """The 429 for a reservation the store refused: the token quota's words, or the
        budget's when money refused it (a limit that would refuse even with nothing in flight
        is named first: retrying will not help)."""
        by_tokens = limit > 0 and result.used + result.reserved + tokens > limit
        by_money = budget > 0 and result.cost_nanos + result.reserved_nanos + nanos > budget
        tokens_final = by_tokens and result.used + tokens > limit
        money_final = by_money and result.cost_nanos + nanos > budget
        if by_money and (money_final or not tokens_final or not by_tokens):
            message = exceeded_message(
                tenant,
                budget,
                window.period,
                result.cost_nanos,
                result.reserved_nanos,
                nanos,
                window.next_reset(),
            )
        else:
            message = _exceeded_message(tenant, limit, window, result.used, result.reserved, tokens)
        return QuotaExceededError(message, retryable=not (tokens_final or money_final))

    async def commit(
        self, reservation: Reservation, usage: Usage | None, cost_nanos: int = 0
    ) -> None:
        """Replace the reservation by the real usage and its cost (nano-dollars). With
        `usage=None` (the upstream reported none) the reserved worst case is charged as total
        tokens (the caller says what it cost)."""
        if reservation.done:
            return
        reservation.done = True
        prompt, completion, total = charged_tokens(reservation, usage)
        await self._store.commit(
            reservation.tenant,
            reservation.period_key,
            reservation.tokens,
            prompt,
            completion,
            total,
            reservation_id=reservation.id,
            reserved_nanos=reservation.nanos,
            cost_nanos=cost_nanos,
        )

    async def release(self, reservation: Reservation) -> None:
        """The request failed before using anything: drop the reservation."""
        if reservation.done:
            return
        reservation.done = True
        if reservation.tokens or reservation.nanos:
            await self._store.release(
                reservation.tenant,
                reservation.period_key,
                reservation.tokens,
                reservation_id=reservation.id,
                reserved_nanos=reservation.nanos,
            )

    def estimate_tokens(self, endpoint: str, body: Mapping[str, Any]) -> int:
        """Worst-case tokens of a request from its parsed body: the prompt estimate plus
        `max_completion_tokens`/`max_tokens` (or `quota.default_max_tokens`) times `n`.
        Embeddings have no completion."""
        return self.estimate(endpoint, body)[1]

    def estimate(self, endpoint: str, body: Mapping[str, Any]) -> tuple[int, int]:
        """`(prompt estimate, worst-case total)` of `estimate_tokens`, from one walk."""
        prompt = self.estimate_prompt_tokens(endpoint, body)
        if endpoint == "embeddings":
            return prompt, prompt
        completion = _positive_int(body.get("max_completion_tokens"))
        if completion is None:
            completion = _positive_int(body.get("max_tokens"))
        if completion is None:
            completion = self._config.default_max_tokens
        return prompt, prompt + completion * (_positive_int(body.get("n")) or 1)

    def estimate_prompt_tokens(self, endpoint: str, body: Mapping[str, Any]) -> int:
        """Prompt tokens ≈ characters / 4 of the message text (plus tool schemas and calls),
        4 per message and 3 to prime the reply; token-id prompts count one per id; non-text
        content parts count like a low-detail image. Walks the parsed body once, never
        re-serializes it."""
        chars = 0
        tokens = 0
        if endpoint == "chat/completions":
            tokens = 3  # every reply is primed with a few tokens
            messages = body.get("messages")
            if isinstance(messages, list):
                for message in messages:
                    tokens += 4  # role and separators
                    if isinstance(message, dict):
                        c, t = _content_size(message.get("content"))
                        chars += c
                        tokens += t
                        name = message.get("name")
                        if isinstance(name, str):
                            chars += len(name)
                        tool_calls = message.get("tool_calls")
                        if tool_calls:
                            chars += _text_chars(tool_calls, 0)
            for key in ("tools", "functions"):
                extra = body.get(key)
                if extra:
                    chars += _text_chars(extra, 0)
        elif endpoint == "completions":
            chars, tokens = _prompt_size(body.get("prompt"), 0)
        elif endpoint == "embeddings":
            chars, tokens = _prompt_size(body.get("input"), 0)
        return tokens + -(-chars // 4)

    # --- admin ----------------------------------------------------------------------------

    async def set_limit(self, tenant: str, tokens: int, period: str | None = None) -> None:
        """Persist a runtime override: `tokens` per `period`; 0 = unlimited. Without a period
        the tenant keeps the one it has: its override's, else the configured one (which it then
        follows on reload). Takes effect on the next request."""
        validate_tenant(tenant)
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise ValueError("tokens must be an integer >= 0")
        if tokens > MAX_QUOTA_TOKENS:
            raise ValueError(f"tokens must be at most {MAX_QUOTA_TOKENS:,} (10**15)")
        if period is not None and (not isinstance(period, str) or period not in PERIODS):
            shown = repr(period) if isinstance(period, str) else type(period).__name__
            raise ValueError(f"unknown quota period {shown} (choose from {', '.join(PERIODS)})")
        await self._store.refresh_overrides()
        existing = self._store.overrides.get(tenant)
        if period is None:
            period = existing.period if existing is not None else None
        usd = existing.usd_nanos if existing is not None else None
        await self._store.set_override(tenant, Override(tokens, period, usd))

    async def set_budget(self, tenant: str, nanos: int, period: str | None = None) -> None:
        """Persist a runtime money budget: `nanos` nano-dollars per `period` (0 = no budget,
        whatever the config says); the tenant's token quota stays as it is. Without a period
        the tenant keeps the one it has (one period counts both). Takes effect on the next
        request."""
        validate_tenant(tenant)
        if isinstance(nanos, bool) or not isinstance(nanos, int) or nanos < 0:
            raise ValueError("a budget must be an amount of money >= 0")
        if nanos > MAX_BUDGET_NANOS:
            raise ValueError(f"a budget is at most {MAX_BUDGET_USD:,} US dollars")
        if period is not None and (not isinstance(period, str) or period not in PERIODS):
            shown = repr(period) if isinstance(period, str) else type(period).__name__
            raise ValueError(f"unknown quota period {shown} (choose from {', '.join(PERIODS)})")
        await self._store.refresh_overrides()
        existing = self._store.overrides.get(tenant)
        if period is None:
            period = existing.period if existing is not None else None
        tokens = existing.tokens if existing is not None else None
        await self._store.set_override(tenant, Override(tokens, period, nanos))

    async def reset(self, tenant: str, *, known: Collection[str] = ()) -> None:
        """Zero the tenant's usage in its current period (in-flight reservations stay).

        Raises `UnknownTenantError` for a tenant nobody knows (not in `known`, e.g. the tenants
        of auth.keys, nor in the config, the overrides or recorded usage): a typo must not
        create a tenant."""
        validate_tenant(tenant)
        await self._store.refresh_overrides()
        if not await self.is_known(tenant, known):
            raise UnknownTenantError(tenant)
        _, period, _ = self.policy(tenant)
        await self._store.reset_usage(tenant, self.window(period).key)

    async def is_known(self, tenant: str, known: Collection[str] = ()) -> bool:
        """Whether `tenant` is in `known`, has a quota in the config, an override, or recorded
        usage."""
        return (
            tenant in known
            or tenant in self._config.tenants
            or tenant in self._config.tenants_usd
            or tenant in self._store.overrides
            or tenant in await self._store.tenants()
        )

    async def status(self, tenant: str | None = None) -> list[QuotaStatus]:
        """Current-period usage of one tenant, or of every tenant known from usage, config or
        overrides (sorted by name)."""
        if tenant is not None:
            names = [validate_tenant(tenant)]
        await self._store.refresh_overrides()
        if tenant is None:
            known = await self._store.tenants()
            known.update(self._config.tenants)
            known.update(self._config.tenants_usd)
            known.update(self._store.overrides)
            names = sorted(known)
        policies = [self.policy(name) for name in names]
        budgets = [self.budget(name) for name in names]
        windows = [self.window(period) for _, period, _ in policies]
        counters = await self._store.get_usage(
            [(name, window.key) for name, window in zip(names, windows, strict=True)]
        )
        result = []
        for name, (limit, period, source), (budget, budget_source), window, usage in zip(
            names, policies, budgets, windows, counters, strict=True
        ):
            percent = round(usage.total_tokens * 100.0 / limit, 2) if limit > 0 else 0.0
            result.append(
                QuotaStatus(
                    tenant=name,
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                    total_tokens=usage.total_tokens,
                    limit=limit,
                    period=period,
                    percent_used=percent,
                    next_reset=window.next_reset(),
                    reserved=usage.reserved,
                    source=source,
                    cost_usd=usd_number(usage.cost_nanos),
                    budget_usd=usd_number(budget),
                    budget_source=budget_source,
                )
            )
        return result

    async def close(self) -> None:
        """Flush recorded usage. The store's owner closes the store."""
        await self._store.flush()


def charged_tokens(reservation: Reservation, usage: Usage | None) -> tuple[int, int, int]:
    """`(input, output, total)` a commit records: the usage, or without one the reserved
    worst case as total tokens."""
    if usage is None:
        return 0, 0, reservation.tokens
    prompt, completion = usage.prompt_tokens, usage.completion_tokens
    return prompt, completion, usage.total_tokens or prompt + completion


def overrides_unsettled() -> ServiceUnavailableError:
    """A reserve kept seeing changed overrides (`STALE_RETRIES` times in a row)."""
    return ServiceUnavailableError("Quota overrides keep changing; try again.")


def _exceeded_message(
    tenant: str, limit: int, window: PeriodWindow, used: int, reserved: int, tokens: int
) -> str:
    reset = window.next_reset()
    when = f"It resets at {reset}." if reset else "It does not reset."
    in_flight = f" (+{reserved:,} reserved by requests in flight)" if reserved else ""
    text = (
        f"Tenant '{tenant}' has used {used:,} of its {limit:,} token {window.period} quota"
        f"{in_flight}; this request may need up to {tokens:,} tokens."
    )
    if used + tokens <= limit:
        return f"{text} Retry once the requests in flight have finished."
    return f"{text} {when}"


# --- estimation helpers ------------------------------------------------------------------

_PART_TOKENS = 85  # a non-text content part (image, audio, file): OpenAI's low-detail image cost
_MAX_DEPTH = 16


def _positive_int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _content_size(content: object) -> tuple[int, int]:
    """(characters, fixed tokens) of a message's content: a string or a list of parts."""
    if isinstance(content, str):
        return len(content), 0
    chars = tokens = 0
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    chars += len(text)
                else:
                    tokens += _PART_TOKENS
            elif isinstance(part, str):
                chars += len(part)
    return chars, tokens


def _prompt_size(prompt: object, depth: int) -> tuple[int, int]:
    """(characters, tokens) of a prompt/input: string, token ids, or lists of either."""
    if isinstance(prompt, str):
        return len(prompt), 0
    if isinstance(prompt, int):
        return 0, 1
    chars = tokens = 0
    if isinstance(prompt, list) and depth < _MAX_DEPTH:
        for item in prompt:
            c, t = _prompt_size(item, depth + 1)
            chars += c
            tokens += t
    return chars, tokens


def _text_chars(value: object, depth: int) -> int:
    """Characters of every string and key in a JSON value (tool schemas, tool calls)."""
    if isinstance(value, str):
        return len(value)
    if depth >= _MAX_DEPTH:
        return 0
    if isinstance(value, dict):
        return sum(len(k) + _text_chars(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return sum(_text_chars(v, depth + 1) for v in value)
    return 0
