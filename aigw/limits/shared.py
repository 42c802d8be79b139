"""The limits shared by every instance on one store (redis): the same rules as the in-process
ones, with the buckets and the quota in the store, decided in one round trip each way.

The store only stores (numbers in, numbers out: `SharedStore`); what a reply means for a
request (the decision, the headers, the refusal) is decided here, with the rate limiter's and
the quota manager's own rules (`BucketShape`, `QuotaManager.reserve`), never repeated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from aigw.config import RateLimitConfig
from aigw.errors import StateUnavailableError
from aigw.exchange import Usage
from aigw.limits.admission import Admission, Charge
from aigw.limits.budget import Pricing
from aigw.limits.quota import PeriodWindow, QuotaManager, charged_tokens
from aigw.limits.ratelimit import UNLIMITED, BucketShape, RateDecision, RateLimiter, limit_error
from aigw.limits.ratelimit import headers as rate_headers
from aigw.state.base import ReserveResult, UsageKey
from aigw.state.redis import AdmitReply, BucketStep


class SharedStore(Protocol):
    """What the shared limits need of a store (`aigw.state.redis.RedisStore` is one)."""

    on_failure: str

    def bucket_key(self, tenant: str, kind: str) -> str: ...

    async def take(
        self, key: str, interval: float, size: int, units: float
    ) -> BucketStep | None: ...

    async def adjust(self, key: str, interval: float, units: float) -> bool: ...

    async def admit(
        self,
        tenant: str,
        period_key: str,
        tokens: int,
        limit: int,
        *,
        reservation_id: int,
        ttl: float,
        expires_at: float | None = None,
        requests: tuple[float, int] | None = None,
        token_bucket: tuple[float, int] | None = None,
        units: float = 0.0,
        nanos: int = 0,
        budget: int = 0,
    ) -> AdmitReply | None: ...

    async def settle(
        self,
        tenant: str,
        period_key: str,
        reserved: int,
        input_tokens: int,
        output_tokens: int,
        total_tokens: int,
        *,
        reservation_id: int,
        token_interval: float | None = None,
        token_delta: float = 0.0,
        reserved_nanos: int = 0,
        cost_nanos: int = 0,
    ) -> bool: ...

    def reserve_locally(
        self,
        key: UsageKey,
        tokens: int,
        limit: int,
        reservation_id: int,
        nanos: int = 0,
        budget: int = 0,
    ) -> ReserveResult: ...

    def unavailable_error(self) -> StateUnavailableError: ...


def decision(shape: BucketShape | None, step: BucketStep | None, *, taken: bool) -> RateDecision:
    """What a bucket's step means for the request. `taken`: the units were taken (when they fit
    but something else refused, the bucket is reported as it stands now)."""
    if shape is None or step is None:
        return UNLIMITED
    if step.fits:
        ahead = step.lead if taken else step.lead_now
        remaining = int((shape.span - ahead) / shape.interval + 1e-6)
        return RateDecision(True, shape.size, remaining, 0.0, ahead)
    retry = round(step.lead, 9)
    return RateDecision(False, shape.size, 0, retry if retry > 0 else 0.0, step.lead_now)


def _shape_args(shape: BucketShape | None) -> tuple[float, int] | None:
    return None if shape is None else (shape.interval, shape.size)


class SharedRateLimiter(RateLimiter):
    """Token buckets in the store, shared by every instance; the inherited in-memory buckets
    serve while the store is unreachable under `fail_open`. Tenants without a limit never leave
    the process. The shared buckets run on the store's clock; `clock` times only the in-memory
    buckets."""

    def __init__(
        self,
        config: RateLimitConfig,
        store: SharedStore,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(config, clock=clock)
        self.store = store

    async def take_request(self, tenant: str) -> RateDecision:
        shape = self.request_bucket(tenant)
        if shape is None:
            return UNLIMITED
        step = await self.store.take(
            self.store.bucket_key(tenant, "req"), shape.interval, shape.size, 1.0
        )
        if step is not None:
            return decision(shape, step, taken=True)
        self._check_open()
        return self.check_request(tenant)

    async def take_tokens(self, tenant: str, tokens: int) -> RateDecision:
        shape = self.token_bucket(tenant)
        if shape is None:
            return UNLIMITED
        units = float(min(tokens, shape.size))
        step = await self.store.take(
            self.store.bucket_key(tenant, "tok"), shape.interval, shape.size, units
        )
        if step is not None:
            return decision(shape, step, taken=True)
        self._check_open()
        return self.check_tokens(tenant, tokens)

    async def settle_tokens(self, tenant: str, estimate: int, used: int) -> None:
        shape = self.token_bucket(tenant)
        if shape is None or used == estimate:
            return
        key = self.store.bucket_key(tenant, "tok")
        if await self.store.adjust(key, shape.interval, float(used - estimate)):
            return
        if self.store.on_failure == "fail_open":
            self.settle_locally(tenant, estimate, used)

    def settle_locally(self, tenant: str, estimate: int, used: int) -> None:
        """Correct the in-memory bucket (the store is unreachable)."""
        if used > estimate:
            self.add_tokens(tenant, used - estimate)
        elif used < estimate:
            self.refund_tokens(tenant, estimate - used)

    def _check_open(self) -> None:
        if self.store.on_failure != "fail_open":
            raise self.store.unavailable_error()


class _Unreachable(Exception):
    """The store did not answer the admission: fall back per its failure policy."""


class SharedAdmission(Admission):
    """Admission with one round trip each way (see `aigw.limits.admission`).

    `admit` runs one script that checks the request bucket, the token bucket, the quota and the
    overrides version together and takes all three or nothing: a request refused by any limit
    spends no request slot, no tokens and no quota. It also means the request bucket is checked
    after the body is read and the hooks ran (`take_request` takes nothing), unlike in-process
    admission. `settle` runs one script that commits or releases the reservation and corrects
    the token bucket.

    While the store is unreachable: `fail_closed` refuses with 503; `fail_open` admits with the
    limiter's in-memory buckets and the store's local quota accounting, each in turn."""

    __slots__ = ("_limiter", "store")

    def __init__(
        self,
        limiter: SharedRateLimiter,
        quota: QuotaManager,
        store: SharedStore,
        pricing: Pricing | None = None,
    ) -> None:
        super().__init__(limiter, quota, pricing)
        self._limiter = limiter
        self.store = store

    async def take_request(self, tenant: str) -> RateDecision:
        return UNLIMITED  # taken with the rest, all or nothing, in `admit`

    async def admit(
        self, tenant: str, charge: Charge, requests: RateDecision, headers: dict[str, str]
    ) -> None:
        limiter, store, quota = self._limiter, self.store, self.quota
        assert quota is not None  # build_limits gives this class a quota manager
        req_shape = limiter.request_bucket(tenant)
        tok_shape = limiter.token_bucket(tenant)
        estimate = charge.estimate
        units = float(min(estimate, tok_shape.size)) if tok_shape is not None else 0.0
        nanos = self.money(tenant, charge)

        async def attempt(
            limit: int, window: PeriodWindow, rid: int, held: int, budget: int, held_nanos: int
        ) -> ReserveResult:
            reply = await store.admit(
                tenant,
                window.key,
                held,
                limit,
                reservation_id=rid,
                ttl=quota.reservation_ttl,
                expires_at=window.end,
                requests=_shape_args(req_shape),
                token_bucket=_shape_args(tok_shape),
                units=units,
                nanos=held_nanos,
                budget=budget,
            )
            if reply is None:
                raise _Unreachable
            if reply.stale:
                return ReserveResult(False, 0, 0, stale=True)
            req = decision(req_shape, reply.requests, taken=reply.allowed)
            tok = decision(tok_shape, reply.tokens, taken=reply.allowed)
            if not (req.allowed and tok.allowed):
                raise limit_error(tenant, req, tok)
            if req.limit or tok.limit:
                headers.update(rate_headers(req, tok))
            return ReserveResult(
                reply.allowed,
                reply.used,
                reply.reserved,
                cost_nanos=reply.cost_nanos,
                reserved_nanos=reply.reserved_nanos,
            )

        try:
            charge.reservation = await quota.reserve(tenant, estimate, attempt, nanos=nanos)
        except _Unreachable:
            return await self._admit_locally(tenant, charge, headers)
        if tok_shape is not None:
            charge.limiter = limiter
            charge.tokens_taken = int(units)

    async def _admit_locally(self, tenant: str, charge: Charge, headers: dict[str, str]) -> None:
        """The store is unreachable: the outage policy of the limiter and the store."""
        store, limiter, quota = self.store, self._limiter, self.quota
        assert quota is not None
        if store.on_failure != "fail_open":
            raise store.unavailable_error()
        requests = limiter.check_request(tenant)
        if not requests.allowed:
            raise limit_error(tenant, requests)
        tokens = limiter.check_tokens(tenant, charge.estimate)
        if not tokens.allowed:
            raise limit_error(tenant, requests, tokens)
        if requests.limit or tokens.limit:
            headers.update(rate_headers(requests, tokens))
        if tokens.limit:
            charge.limiter = limiter
            charge.tokens_taken = min(charge.estimate, tokens.limit)
        nanos = self.money(tenant, charge)
        charge.reservation = await quota.reserve(tenant, charge.estimate, nanos=nanos)

    async def settle(self, tenant: str, charge: Charge, usage: Usage | None) -> None:
        limiter = self._limiter
        used = usage.total_tokens if usage is not None else 0
        taken = charge.tokens_taken  # what the bucket gave, which may be less than the estimate
        shape = None
        if charge.limiter is not None and used != taken:
            shape = limiter.token_bucket(tenant)
        delta = float(used - taken)
        reservation = charge.reservation
        if reservation is not None and not reservation.done:
            reservation.done = True
            # Without usage the request failed before using anything: a release.
            counted = (0, 0, 0) if usage is None else charged_tokens(reservation, usage)
            adjusted = await self.store.settle(
                tenant,
                reservation.period_key,
                reservation.tokens,
                *counted,
                reservation_id=reservation.id,
                token_interval=None if shape is None else shape.interval,
                token_delta=delta,
                reserved_nanos=reservation.nanos,
                cost_nanos=0 if usage is None else charge.cost_nanos,
            )
        elif shape is not None:
            key = self.store.bucket_key(tenant, "tok")
            adjusted = await self.store.adjust(key, shape.interval, delta)
        else:
            return
        if not adjusted and self.store.on_failure == "fail_open":
            limiter.settle_locally(tenant, taken, used)
