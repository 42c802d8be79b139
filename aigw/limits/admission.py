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

Refusals. Here each step refuses on its own, in pipeline order: a request refused by its token
bucket has spent a request-bucket slot, one refused by its quota has spent a slot too (its token
estimate is given back when it settles). A shared admission decides all three at once and takes
nothing when any refuses.
"""

from __future__ import annotations

from aigw.exchange import Usage
from aigw.limits.quota import QuotaManager, Reservation
from aigw.limits.ratelimit import UNLIMITED, RateDecision, RateLimiter, limit_error
from aigw.limits.ratelimit import headers as rate_headers


class Charge:
    """What one request has provisionally taken of its tenant's limits (the quota reservation
    and any extension of it, the token-rate estimate), settled once when it ends."""

    __slots__ = (
        "estimate",
        "extensions",
        "limiter",
        "prompt_estimate",
        "reservation",
        "settled",
        "tokens_taken",
    )

    def __init__(self) -> None:
        self.estimate = 0  # worst-case tokens: what the quota holds for the request
        self.prompt_estimate = 0  # the prompt's share of `estimate`
        self.reservation: Reservation | None = None
        #: more quota taken while a stream ran past what `reservation` covers
        self.extensions: list[Reservation] = []
        self.limiter: RateLimiter | None = None  # set only when a token limit applies
        self.tokens_taken = 0  # what the token bucket really gave
        self.settled = False


class Admission:
    """In-process admission: the rate limiter's buckets, then the quota manager's reserve.
    Either part may be None (not running)."""

    __slots__ = ("limiter", "quota")

    def __init__(self, limiter: RateLimiter | None, quota: QuotaManager | None) -> None:
        self.limiter = limiter
        self.quota = quota

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
            charge.reservation = await quota.reserve(tenant, charge.estimate)

    async def settle(self, tenant: str, charge: Charge, usage: Usage | None) -> None:
        """Replace the request's worst-case charges by what it used (`usage=None`: nothing,
        the reservation is released). Called once per request."""
        if charge.limiter is not None:
            used = usage.total_tokens if usage is not None else 0
            await charge.limiter.settle_tokens(tenant, charge.tokens_taken, used)
        reservation = charge.reservation
        quota = self.quota
        if reservation is not None and quota is not None:
            if usage is None:
                await quota.release(reservation)
            else:
                await quota.commit(reservation, usage)
