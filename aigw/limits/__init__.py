"""Policy: what a tenant may do (rate limits, token quotas, money budgets) and what a request
has taken.

    ratelimit.py   token buckets (GCRA) per tenant, for requests and tokens per minute
    quota.py       tokens and money per calendar period: reserve before, commit or release after
    budget.py      money: prices of a config, the worst-case reservation price, budgets in USD
    admission.py   the steps the proxy calls (`Admission`) and what a request holds (`Charge`)
    shared.py      the same rules with the state in a shared store (redis), one round trip each

The state stores (`aigw.state`) only store numbers; `build_limits` picks the in-process or the
shared versions for a store, in this one place.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from aigw.config import Config
from aigw.limits.admission import Admission, Charge
from aigw.limits.budget import Pricing
from aigw.limits.quota import QuotaManager
from aigw.limits.ratelimit import RateLimiter
from aigw.state.base import StateStore
from aigw.usage_history import UsageRollup

__all__ = ["Admission", "Charge", "Limits", "Pricing", "build_limits"]


@dataclass(frozen=True, eq=False)
class Limits:
    """The gateway's limits over one store; reloaded in place, replaced only with the store.
    `pricing` prices requests for the money budgets, the cost metric and the usage history;
    `history` is the hourly usage rollup a background task flushes into the store."""

    quota: QuotaManager
    rate: RateLimiter
    admission: Admission
    pricing: Pricing
    history: UsageRollup

    def reload(self, config: Config) -> None:
        self.rate.reload(config.rate_limit)
        self.quota.reload(config.quota)
        self.pricing.reload(config)

    async def close(self) -> None:
        """Flush what the quota recorded (the store's owner closes the store)."""
        await self.quota.close()


def build_limits(
    store: StateStore,
    config: Config,
    *,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
) -> Limits:
    """The limits of `config` over `store`: the shared versions when the store is shared by
    several instances (their buckets and reservations must live there too), else in-process.

    `clock` times the rate limiter's buckets, `wall_clock` the quota's calendar periods."""
    # A shared store drops the reservations of a crashed instance after this long: the
    # longest a request may take, plus slack for the settle after it.
    ttl = config.server.request_timeout + 60.0
    quota = QuotaManager(store, config.quota, clock=wall_clock, reservation_ttl=ttl)
    pricing = Pricing(config)
    if store.shared:
        from aigw.limits.shared import SharedAdmission, SharedRateLimiter, SharedStore

        shared = cast(SharedStore, store)
        rate: RateLimiter = SharedRateLimiter(config.rate_limit, shared, clock=clock)
        admission: Admission = SharedAdmission(
            cast(SharedRateLimiter, rate), quota, shared, pricing
        )
    else:
        rate = RateLimiter(config.rate_limit, clock=clock)
        admission = Admission(rate, quota, pricing)
    return Limits(quota, rate, admission, pricing, UsageRollup())
