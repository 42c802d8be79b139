"""Money budgets: what a request may cost before it runs, what it cost after, and how much a
tenant may spend per period.

A money budget is enforced exactly like a token quota, in the same step: a request reserves its
worst-case cost before it goes upstream (the prompt estimate at the highest prompt price plus
its most output at the highest output price), the store checks `spent + reserved + this <=
budget` atomically with the token check (`QuotaManager.reserve`), and when the request ends its
real cost replaces the reservation. Either limit can refuse (429 `insufficient_quota`). The
store keeps the counters (`cost_nanos`, `reserved_nanos`); this module decides the amounts:

- `Pricing`: the price table of the config (the shipped table under `prices:`), built once per
  config load and swapped on reload (`reload`), so a request never reads a file or builds a
  table. Each gateway model gets a reservation price: the worst over the targets it may be sent
  to, its fallbacks' included, taken per kind (the highest of any target's input, cached input
  and cache-write prices for the prompt, the highest output price), so a reservation never
  falls short whichever target answers and however the provider bills its cache.
  `estimate()` is what to hold, `cost()` what an answer cost (priced by the upstream model that
  answered, `x-aigw-model`; an unpriced model costs 0).
- `Budgets`: each tenant's budget per period from the config (`quota.tenants.NAME.usd`, else
  `quota.default_usd`), in nano-dollars; a runtime override (`aigw quota set TENANT 20 --usd`,
  `Override.usd_nanos`) wins over it. 0 means no money budget.
- `exceeded_message()`: the words of a refusal.

Money is integer nano-dollars throughout (`aigw.pricing`); a tenant with a budget holds at least
one nano-dollar per request, so a budget spent to the last nano-dollar refuses every request,
even one whose model has no price.
"""

from __future__ import annotations

from collections.abc import Mapping

from aigw.config import Config, ModelConfig, QuotaConfig
from aigw.exchange import Usage
from aigw.pricing import Price, PriceTable, cost_nanos, estimate_nanos, to_nanos, usd_text


class Pricing:
    """Prices of one config: reload in place (`reload`) when the config changes."""

    __slots__ = ("_reserve", "table")

    def __init__(self, config: Config) -> None:
        self.table = PriceTable.build()
        self._reserve: dict[str, Price] = {}
        self.reload(config)

    def reload(self, config: Config) -> None:
        """Build the table and the reservation prices of `config` (both swapped at once)."""
        table = PriceTable.build(
            {n: p for n, p in config.prices.items() if p.input is not None and p.output is not None}
        )
        self._reserve, self.table = reservation_prices(config.models, table), table

    def reservation_price(self, model: str) -> Price | None:
        """The worst price of a gateway model's targets; None when none of them is priced."""
        return self._reserve.get(model)

    def estimate(self, model: str, prompt_tokens: int, output_tokens: int) -> int:
        """Nano-dollars to reserve for a request of gateway `model` (rounded up)."""
        price = self._reserve.get(model)
        if price is None:
            return 0
        return estimate_nanos(prompt_tokens, output_tokens, price)

    def lookup(self, upstream_model: str) -> Price | None:
        return self.table.lookup(upstream_model)

    def cost(self, upstream_model: str | None, usage: Usage) -> int | None:
        """Nano-dollars `usage` cost on `upstream_model`; None when that model has no price
        (the request costs 0 and is counted as unpriced)."""
        if not upstream_model:
            return None
        price = self.table.lookup(upstream_model)
        if price is None:
            return None
        return cost_nanos(usage, price)


def reservation_prices(models: Mapping[str, ModelConfig], table: PriceTable) -> dict[str, Price]:
    """Per gateway model, the worst price of every upstream model it may be sent to (its
    targets and its fallbacks' targets): the highest prompt price of any kind, the highest
    output price. Models none of whose targets is priced are left out."""
    own: dict[str, list[Price]] = {}
    for name, model in models.items():
        found = (table.lookup(target.model or name) for target in model.targets)
        own[name] = [price for price in found if price is not None]
    worst: dict[str, Price] = {}
    for name, model in models.items():
        prices = list(own[name])
        for fallback in model.fallbacks:
            prices.extend(own.get(fallback, ()))
        if not prices:
            continue
        prompt = max(max(p.input, p.cached_input, p.cache_write) for p in prices)
        output = max(p.output for p in prices)
        worst[name] = Price.of(prompt, output)
    return worst


class Budgets:
    """Money budgets of the config, per tenant, in nano-dollars (0 = none)."""

    __slots__ = ("any", "default", "tenants")

    def __init__(self, config: QuotaConfig) -> None:
        self.default = to_nanos(config.default_usd)
        self.tenants = {tenant: to_nanos(usd) for tenant, usd in config.tenants_usd.items()}
        #: whether the config gives any tenant a budget (else only overrides can)
        self.any = config.has_money_budget

    def configured(self, tenant: str) -> int:
        return self.tenants.get(tenant, self.default)


def exceeded_message(
    tenant: str,
    budget: int,
    period: str,
    spent: int,
    reserved: int,
    nanos: int,
    reset: str | None,
) -> str:
    """Why a request was refused by the money budget (all amounts in nano-dollars)."""
    in_flight = f" (+${usd_text(reserved)} reserved by requests in flight)" if reserved else ""
    text = (
        f"Tenant '{tenant}' has spent ${usd_text(spent)} of its ${usd_text(budget)} {period} "
        f"budget{in_flight}; this request may cost up to ${usd_text(nanos)}."
    )
    if spent + nanos <= budget:
        return f"{text} Retry once the requests in flight have finished."
    return f"{text} {f'It resets at {reset}.' if reset else 'It does not reset.'}"
