"""Admission: the limits a request passes before it goes upstream, and their settlement after.

The proxy talks to one `Admission` per gateway, in three calls:

    take_request(tenant)                  before the body is read   (request bucket)
    admit(tenant, charge, decision, hdrs) after parse and hooks     (token bucket, quota)
    settle(tenant, charge, usage)         once, when the request ends

This class is the in-process admission over the in-memory rate limiter and any store's quota
manager: each step does exactly what the proxy did inline before (no round trips exist to save).
The shared version (`aigw.limits.shared.SharedAdmission`, picked by `build_limits` for a
shared store) takes the request bucket, the token bucket and the quota reservation in one
server-side script at `admit` (its `take_request` takes nothing), and settles the quota and the
token bucket in one more, so a request costs it two round trips with every limit on.

Money. A tenant with a money budget also reserves the request's worst-case cost, priced by
`Pricing` for the gateway model the request names (`Charge.ctx.model`), in the same step as its
token reservation; `Charge.cost_nanos` (what the answer cost, set by the caller) replaces it at
settlement.

Refusals. Here each step refuses on its own, in pipeline order: a request refused by its token
bucket has spent a request-bucket slot, one refused by its quota has spent a slot too (its token
estimate is given back when it settles). A shared admission decides all three at once and takes
nothing when any refuses.
"""

from __future__ import annotations

from aigw.exchange import RequestContext, Usage
from aigw.limits.budget import Pricing
from aigw.limits.quota import QuotaManager, Reservation
from aigw.limits.ratelimit import UNLIMITED, RateDecision, RateLimiter, limit_error
from aigw.limits.ratelimit import headers as rate_headers


class Charge:
    """What one request has provisionally taken of its tenant's limits (the quota reservation
    and any extension of it, the token-rate estimate), settled once when it ends; and, once it
    ended, what it cost."""

    __slots__ = (
        "cost_nanos",
        "ctx",
        "estimate",
        "extensions",
        "limiter",
        "prompt_estimate",
        "reservation",
        "settled",
        "tokens_taken",
        "usage",
    )

    def __init__(self, ctx: RequestContext | None = None) -> None:
        #: the request (its gateway model prices the money reservation)
        self.ctx = ctx
        self.estimate = 0  # worst-case tokens: what the quota holds for the request
        self.prompt_estimate = 0  # the prompt's share of `estimate`
        self.reservation: Reservation | None = None
        #: more quota taken while a stream ran past what `reservation` covers
        self.extensions: list[Reservation] = []
        self.limiter: RateLimiter | None = None  # set only when a token limit applies
        self.tokens_taken = 0  # what the token bucket really gave
        self.settled = False
        #: what the request used and cost (nano-dollars), known once it settled
        self.usage: Usage | None = None
        self.cost_nanos = 0

    @property
    def output_estimate(self) -> int:
        """The completion's share of `estimate` (max output tokens times n)."""
        return self.estimate - self.prompt_estimate


class Admission:
    """In-process admission: the rate limiter's buckets, then the quota manager's reserve.
    Either part may be None (not running)."""

    __slots__ = ("limiter", "pricing", "quota")

    def __init__(
        self,
        limiter: RateLimiter | None,
        quota: QuotaManager | None,
        pricing: Pricing | None = None,
    ) -> None:
        self.limiter = limiter
        self.quota = quota
        self.pricing = pricing

    def money(self, tenant: str, charge: Charge, tokens: int | None = None) -> int:
        """Nano-dollars to hold for `charge` (or for `tokens` more of its output, a stream's
        extension); 0 when the tenant has no money budget."""
        quota, pricing, ctx = self.quota, self.pricing, charge.ctx
        if quota is None or pricing is None or ctx is None or quota.budget(tenant)[0] <= 0:
            return 0
        if tokens is not None:
            return pricing.estimate(ctx.model, 0, tokens)
        return pricing.estimate(ctx.model, charge.prompt_estimate, charge.output_estimate)

    async def take_request(self, tenant: str) -> RateDecision:
        """Take one slot of the tenant's request bucket, or raise the 429. The decision is
        handed back to `admit()` (and its headers go on the response)."""
        limiter = self.limiter
        if limiter is None:
            return UNLIMITED
        decision = await limiter.take_request(tenant)
        if not decision.allowed:
            raise limit_error(tenant, decision)
        return decision

    async def admit(
        self, tenant: str, charge: Charge, requests: RateDecision, headers: dict[str, str]
    ) -> None:
        """Take `charge.estimate` from the token bucket and reserve it against the quota, or
        raise (429 `rate_limit_exceeded` / `insufficient_quota`). Records what was taken on
        `charge` and adds the `x-ratelimit-*` headers to `headers`."""
        limiter = self.limiter
        if limiter is not None:
            tokens = await limiter.take_tokens(tenant, charge.estimate)
            if not tokens.allowed:
                raise limit_error(tenant, requests, tokens)
            if tokens.limit:
                charge.limiter = limiter
                # A request larger than the bucket takes only the bucket: settle that.
                charge.tokens_taken = min(charge.estimate, tokens.limit)
                headers.update(rate_headers(requests, tokens))
        quota = self.quota
        if quota is not None:
            nanos = self.money(tenant, charge)
            charge.reservation = await quota.reserve(tenant, charge.estimate, nanos=nanos)

    async def extend(self, tenant: str, charge: Charge, tokens: int) -> Reservation:
        """Reserve `tokens` more output for a stream past its reservation (and their worst
        cost against a money budget), or raise `QuotaExceededError`."""
        quota = self.quota
        if quota is None:
            raise RuntimeError("no quota manager")
        nanos = self.money(tenant, charge, tokens)
        extension = await quota.reserve(tenant, tokens, nanos=nanos)
        charge.extensions.append(extension)
        return extension

    async def settle(self, tenant: str, charge: Charge, usage: Usage | None) -> None:
        """Replace the request's worst-case charges by what it used (`usage=None`: nothing,
        the reservation is released) and `charge.cost_nanos`. Called once per request."""
        if charge.limiter is not None:
            used = usage.total_tokens if usage is not None else 0
            await charge.limiter.settle_tokens(tenant, charge.tokens_taken, used)
        reservation = charge.reservation
        quota = self.quota
        if reservation is not None and quota is not None:
            if usage is None:
                await quota.release(reservation)
            else:
                await quota.commit(reservation, usage, charge.cost_nanos)
