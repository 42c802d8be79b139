"""Prices and what a request costs, exactly.

Prices are USD per million tokens, by the upstream model that answered (the one in
`x-aigw-model`): `input`, `cached_input` (prompt tokens read from the provider's cache; default
`input`), `cache_write` (prompt tokens written to it, Anthropic's cache creation; default `input`)
and `output` (completion tokens, reasoning included). aigw ships a dated table
(`aigw/prices/default.json`); the config's `prices:` overrides it: **an entry there replaces the
shipped entry of that model whole** (a field it leaves out defaults as above, never to the
shipped value), so what the config says is the whole price.

Cost follows the canonical accounting of `aigw.exchange.Usage`: `prompt_tokens` includes the
cached and the cache-write tokens, so a request pays
`(prompt - cached - cache_write) * input + cached * cached_input + cache_write * cache_write
+ completion * output`, over a million. Every dialect's usage maps onto `Usage` first
(`usage_from_responses_json`, `usage_from_messages_json` below, `Usage.from_json` for chat).

Money is exact. A price is a `Decimal`; a cost is computed on integers (each price scaled to a
whole number once, when the table is built) and is exact as a `Decimal`. Money in the state store,
the usage history and budgets is an integer count of **nano-dollars** (10^-9 USD):

- exact: a token costs `price * 1000` nano-dollars, a whole number for any price with at most
  three decimals (every shipped price), so every request's cost, and any sum of them, is exact;
  a price with more decimals is rounded half-even to the nano-dollar per request (at most
  $0.0005 over a million requests);
- bounded: a 64-bit counter holds $9.2 billion; budgets are capped at `MAX_BUDGET_USD` ($10^9),
  and `to_nanos` saturates at `MAX_NANOS`, so a store never overflows. (Micro-dollars would hold
  more but round every request: $2.50 per million is 2.5 micro-dollars a token.)

Lookup (`PriceTable.lookup`) tries the model name as given, then, in this order, each of these
spellings, and takes the first one priced:
1. lower case;
2. without a provider prefix: up to the last `/` (OpenRouter's `openai/gpt-4o`) and Bedrock's
   `anthropic.` / `us.anthropic.`;
3. without a snapshot suffix, repeatedly: `-2024-08-06` (OpenAI), `-20241022` and Bedrock's
   `-20241022-v2:0` (Anthropic), Vertex's `-v2@20241022`, and `-latest`;
4. with a dot between two digits written as a dash (OpenRouter's `claude-3.5-sonnet`).
So `gpt-4o-2024-08-06` costs what `gpt-4o` does, unless the table prices that snapshot itself
(`gpt-4o-2024-05-13` is): the exact name always wins.

This module reads no config and imports nothing of the daemon: the config hands it a mapping of
`PriceLike` entries.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation
from typing import Final, Protocol

from aigw.exchange import Usage

NANOS_PER_USD: Final = 10**9
#: The most a money counter holds (a signed 64-bit integer: what SQLite and Redis count in).
MAX_NANOS: Final = 2**63 - 1
#: The largest money budget per period (config and `aigw quota set --usd`): far beyond any real
#: budget, 10^18 nano-dollars, well inside `MAX_NANOS` with room for reservations on top.
MAX_BUDGET_USD: Final = 10**9
#: The largest price per million tokens accepted.
MAX_PRICE_USD: Final = 10**6
#: Most decimals a price or budget may be written with (a nano-dollar is the 9th).
MAX_DECIMALS: Final = 9

#: Enough digits that scaling an amount by a power of ten never rounds it (the default context
#: keeps 28 significant digits).
_WIDE: Final = Context(prec=200)


class PriceLike(Protocol):
    """What a `prices:` entry of the config offers (`aigw.config.PriceConfig`)."""

    @property
    def input(self) -> Decimal | None: ...
    @property
    def cached_input(self) -> Decimal | None: ...
    @property
    def cache_write(self) -> Decimal | None: ...
    @property
    def output(self) -> Decimal | None: ...


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens of one model. Build with `Price.of()` (the defaults applied)."""

    input: Decimal
    cached_input: Decimal
    cache_write: Decimal
    output: Decimal
    # The four prices as integers over one power of ten (`input = _input / 10**_decimals`),
    # so a cost is integer arithmetic.
    _decimals: int = field(init=False, repr=False, compare=False)
    _input: int = field(init=False, repr=False, compare=False)
    _cached: int = field(init=False, repr=False, compare=False)
    _write: int = field(init=False, repr=False, compare=False)
    _output: int = field(init=False, repr=False, compare=False)
    # scaled cost * _nano_mul = nano-dollars (0 when the price has more than 3 decimals: then
    # scaled cost / _nano_div, rounded)
    _nano_mul: int = field(init=False, repr=False, compare=False)
    _nano_div: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        values = (self.input, self.cached_input, self.cache_write, self.output)
        for value in values:
            if not value.is_finite() or value < 0:
                raise ValueError(f"a price must be a finite number >= 0, not {value}")
        decimals = max(0, *(-_exponent(v) for v in values))
        scale = 10**decimals
        ints = [int(v * scale) for v in values]
        object.__setattr__(self, "_decimals", decimals)
        object.__setattr__(self, "_nano_mul", 10 ** (3 - decimals) if decimals <= 3 else 0)
        object.__setattr__(self, "_nano_div", 10 ** max(decimals - 3, 0))
        for name, scaled in zip(("_input", "_cached", "_write", "_output"), ints, strict=True):
            object.__setattr__(self, name, scaled)

    @classmethod
    def of(
        cls,
        input: Decimal | int | str,
        output: Decimal | int | str,
        cached_input: Decimal | int | str | None = None,
        cache_write: Decimal | int | str | None = None,
    ) -> Price:
        base = Decimal(input)
        return cls(
            base,
            base if cached_input is None else Decimal(cached_input),
            base if cache_write is None else Decimal(cache_write),
            Decimal(output),
        )

    @classmethod
    def from_config(cls, entry: PriceLike) -> Price:
        """A config entry (input and output are required; the loader checked that)."""
        if entry.input is None or entry.output is None:
            raise ValueError("a price needs input and output")
        return cls.of(entry.input, entry.output, entry.cached_input, entry.cache_write)

    def to_dict(self) -> dict[str, str]:
        """Exact decimal strings (JSON numbers would go through binary floats)."""
        return {
            "input": str(self.input),
            "cached_input": str(self.cached_input),
            "cache_write": str(self.cache_write),
            "output": str(self.output),
        }


def _exponent(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    return exponent if isinstance(exponent, int) else 0


# --- cost ----------------------------------------------------------------------------------


def _scaled_cost(usage: Usage, price: Price) -> int:
    """The cost in units of 10^-(6 + price._decimals) USD: exact, an integer."""
    prompt = max(usage.prompt_tokens, 0)
    cached = max(usage.cached_tokens, 0)
    written = max(usage.cache_write_tokens, 0)
    # An upstream that counts more cached tokens than prompt tokens bills no plain input.
    plain = max(prompt - cached - written, 0)
    return (
        plain * price._input
        + cached * price._cached
        + written * price._write
        + max(usage.completion_tokens, 0) * price._output
    )


def cost(usage: Usage, price: Price) -> Decimal:
    """What an answer with this usage costs, in USD, exactly (quantise only to display it)."""
    return Decimal(_scaled_cost(usage, price)).scaleb(-(6 + price._decimals), _WIDE)


def cost_nanos(usage: Usage, price: Price) -> int:
    """`cost()` in nano-dollars: exact when the price has at most 3 decimals, else rounded
    half-even to the nano-dollar; saturates at `MAX_NANOS`. (Once per request: written for
    speed, the same sum as `_scaled_cost`.)"""
    cached = usage.cached_tokens
    written = usage.cache_write_tokens
    completion = usage.completion_tokens
    plain = usage.prompt_tokens - cached - written
    if plain >= 0 and cached >= 0 and written >= 0 and completion >= 0:
        scaled = (
            plain * price._input
            + cached * price._cached
            + written * price._write
            + completion * price._output
        )
    else:  # inconsistent counts: the careful sum
        scaled = _scaled_cost(usage, price)
    mul = price._nano_mul
    nanos = scaled * mul if mul else _div_half_even(scaled, price._nano_div)
    return nanos if nanos <= MAX_NANOS else MAX_NANOS


def estimate_cost(prompt_tokens: int, max_output_tokens: int, price: Price) -> Decimal:
    """What to reserve before the call: the prompt estimate at the input price (no cache
    discount is known yet) plus the most output the request may produce at the output price."""
    scaled = max(prompt_tokens, 0) * price._input + max(max_output_tokens, 0) * price._output
    return Decimal(scaled).scaleb(-(6 + price._decimals), _WIDE)


def estimate_nanos(prompt_tokens: int, max_output_tokens: int, price: Price) -> int:
    """`estimate_cost()` in nano-dollars, rounded up (a reservation never falls short);
    saturates at `MAX_NANOS`."""
    scaled = max(prompt_tokens, 0) * price._input + max(max_output_tokens, 0) * price._output
    mul = price._nano_mul
    nanos = scaled * mul if mul else _div_up(scaled, price._nano_div)
    return nanos if nanos <= MAX_NANOS else MAX_NANOS


def _div_up(numerator: int, divisor: int) -> int:
    return -(-numerator // divisor)


def _div_half_even(numerator: int, divisor: int) -> int:
    quotient, remainder = divmod(numerator, divisor)
    twice = 2 * remainder
    if twice > divisor or (twice == divisor and quotient % 2 == 1):
        quotient += 1
    return quotient


# --- money units ---------------------------------------------------------------------------


def to_nanos(usd: Decimal | int | str) -> int:
    """USD as integer nano-dollars, rounded half-even below the nano-dollar, saturating at
    `MAX_NANOS`. ValueError for a negative, non-finite or unreadable amount."""
    try:
        value = usd if isinstance(usd, Decimal) else Decimal(usd)
    except (InvalidOperation, ValueError, TypeError):  # Decimal("x") raises InvalidOperation
        raise ValueError(f"not an amount of money: {usd!r}") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"an amount of money must be a finite number >= 0, not {usd}")
    nanos = int(value.scaleb(9, _WIDE).to_integral_value(ROUND_HALF_EVEN, _WIDE))
    return nanos if nanos <= MAX_NANOS else MAX_NANOS


_USD_TEXT = re.compile(r"\$?([0-9]+(?:[_,][0-9]+)*)(?:\.([0-9]+))?", re.ASCII)


def parse_usd(text: str) -> Decimal:
    """A money amount as a person types it (`aigw quota set TENANT 20 --usd`, the admin
    socket): `20`, `20.50`, `$1,000` or `1_000.25`; from 0 to `MAX_BUDGET_USD`, at most 9
    decimals. ValueError with the reason otherwise."""
    shown = text if len(text) <= 32 else text[:32] + "…"
    m = _USD_TEXT.fullmatch(text.strip())
    if m is None:
        if text.strip().startswith("-"):
            raise ValueError(f"an amount cannot be negative (got {shown}); 0 means no budget")
        raise ValueError(f"an amount is a number of US dollars like 20 or 20.50, not {shown!r}")
    whole, frac = m.group(1).replace("_", "").replace(",", ""), m.group(2) or ""
    if len(frac) > MAX_DECIMALS:
        raise ValueError(f"an amount has at most {MAX_DECIMALS} decimals, got {shown}")
    value = Decimal(f"{whole}.{frac}" if frac else whole)
    if value > MAX_BUDGET_USD:
        raise ValueError(f"an amount is at most {MAX_BUDGET_USD:,} US dollars, got {shown}")
    return value


def from_nanos(nanos: int) -> Decimal:
    """Integer nano-dollars as exact USD."""
    return Decimal(nanos).scaleb(-9, _WIDE)


def usd_number(nanos: int) -> float:
    """The JSON number for a `cost_usd` / `budget_usd`: USD to the nano-dollar. Its text is the
    exact amount for anything under $10^6 (15 significant digits round-trip through a float),
    and exact to the cent far beyond."""
    return float(from_nanos(nanos))


def usd_text(nanos: int, *, decimals: int | None = None) -> str:
    """USD as plain decimal text, no exponent, never through a float: with `decimals`, rounded
    half-even to that many places; else exact, trailing zeros dropped down to cents
    (`12.50`, `0.000075`)."""
    value = from_nanos(nanos)
    if decimals is not None:
        return f"{value.quantize(Decimal(1).scaleb(-decimals), ROUND_HALF_EVEN):f}"
    text = f"{value:f}"
    whole, _, frac = text.partition(".")
    frac = frac.rstrip("0")
    return f"{whole}.{frac.ljust(2, '0')}"


# --- usage of the other dialects -----------------------------------------------------------
# Readers for the usage objects of OpenAI Responses and Anthropic Messages, into the canonical
# `Usage`. (Chat Completions: `Usage.from_json`.) Named so the dialect modules can take them
# over; they belong with the dialects once those exist.


def _count(data: Mapping[str, object], key: str) -> int:
    value = data.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(key)
    count = int(value)
    if count < 0:
        raise ValueError(key)  # a negative count would credit the tenant
    return count


def _details(data: Mapping[str, object], key: str) -> Mapping[str, object]:
    details = data.get(key)
    return details if isinstance(details, dict) else {}


def usage_from_responses_json(data: object) -> Usage | None:
    """An OpenAI Responses `usage` (`input_tokens` with `input_tokens_details.cached_tokens`,
    `output_tokens` with `output_tokens_details.reasoning_tokens`): the same accounting as chat,
    other names. None when absent or malformed."""
    if not isinstance(data, dict):
        return None
    try:
        prompt = _count(data, "input_tokens")
        completion = _count(data, "output_tokens")
        total = _count(data, "total_tokens") or prompt + completion
        cached = _count(_details(data, "input_tokens_details"), "cached_tokens")
        reasoning = _count(_details(data, "output_tokens_details"), "reasoning_tokens")
    except (TypeError, ValueError, OverflowError):
        return None
    return Usage(prompt, completion, total, cached, 0, reasoning)


def usage_from_messages_json(data: object) -> Usage | None:
    """An Anthropic Messages `usage`. Its `input_tokens` leaves out the cache: the canonical
    prompt is `input_tokens + cache_read_input_tokens + cache_creation_input_tokens`, of which
    the reads are cached and the creations cache writes. Thinking is inside `output_tokens` and
    not reported apart. None when absent or malformed."""
    if not isinstance(data, dict):
        return None
    try:
        plain = _count(data, "input_tokens")
        read = _count(data, "cache_read_input_tokens")
        written = _count(data, "cache_creation_input_tokens")
        completion = _count(data, "output_tokens")
    except (TypeError, ValueError, OverflowError):
        return None
    prompt = plain + read + written
    return Usage(prompt, completion, prompt + completion, read, written, 0)


# --- the table -----------------------------------------------------------------------------

_PROVIDER_PREFIX = re.compile(r"^(?:.*/|(?:[a-z]+\.)?anthropic\.)")
_SNAPSHOT_SUFFIXES = (
    re.compile(r"-\d{4}-\d{2}-\d{2}$"),  # gpt-4o-2024-08-06
    re.compile(r"-\d{8}(?:-v\d+:\d+)?$"),  # claude-3-5-sonnet-20241022, Bedrock's -v2:0
    re.compile(r"(?:-v\d+)?@\d{8}$"),  # Vertex: claude-3-5-sonnet-v2@20241022
    re.compile(r"-latest$"),
)
_DIGIT_DOT_DIGIT = re.compile(r"(?<=\d)\.(?=\d)")
#: Names looked up once are remembered; past this many distinct names, the memo starts over
#: (model names come from the config, but an upstream could answer with anything).
_MEMO_LIMIT: Final = 4096


def spellings(model: str) -> Iterator[str]:
    """The names `lookup` tries for `model`, in order (see the module docstring)."""
    tried = [model]
    yield model
    name = model.lower()
    stripped = _PROVIDER_PREFIX.sub("", name) or name
    shorter = [name, stripped]
    changed = True
    while changed:  # one suffix may hide another: -20241022-v2:0, -v2@20241022
        changed = False
        for suffix in _SNAPSHOT_SUFFIXES:
            cut = suffix.sub("", shorter[-1])
            if cut and cut != shorter[-1]:
                shorter.append(cut)
                changed = True
    for candidate in shorter:
        if candidate not in tried:
            tried.append(candidate)
            yield candidate
    for candidate in list(tried):
        dashed = _DIGIT_DOT_DIGIT.sub("-", candidate)
        if dashed not in tried:
            tried.append(dashed)
            yield dashed


@dataclass(frozen=True, slots=True)
class ShippedPrice:
    price: Price
    source: str
    checked: str


@dataclass(frozen=True, slots=True)
class ShippedTable:
    as_of: str
    prices: Mapping[str, ShippedPrice]  # aliases included


@functools.cache
def shipped_table() -> ShippedTable:
    """aigw's own price table, read from the package once (when the first config is loaded)."""
    from importlib.resources import files

    text = (files("aigw") / "prices" / "default.json").read_text(encoding="utf-8")
    return parse_shipped_table(text)


def parse_shipped_table(text: str) -> ShippedTable:
    data = json.loads(text, parse_float=Decimal)
    prices: dict[str, ShippedPrice] = {}
    for name, entry in data["models"].items():
        price = Price.of(
            entry["input"], entry["output"], entry.get("cached_input"), entry.get("cache_write")
        )
        shipped = ShippedPrice(price, str(entry["source"]), str(entry["checked"]))
        for key in (name, *entry.get("aliases", ())):
            if key in prices:
                raise ValueError(f"the shipped price table names {key!r} twice")
            prices[key] = shipped
    return ShippedTable(str(data["as_of"]), prices)


class PriceTable:
    """Prices by upstream model name: the config's over the shipped table. Built when a config
    is loaded (the table is read then, never on a request); `lookup` is a dict lookup once a
    name has been seen."""

    __slots__ = ("_memo", "_prices")

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self._prices = dict(prices)
        self._memo: dict[str, Price | None] = {}

    @classmethod
    def build(
        cls, overrides: Mapping[str, PriceLike] | None = None, *, shipped: bool = True
    ) -> PriceTable:
        """The shipped table (unless `shipped=False`) with the config's entries over it, each
        replacing the shipped entry of its model whole."""
        prices: dict[str, Price] = {}
        if shipped:
            prices.update((name, p.price) for name, p in shipped_table().prices.items())
        for name, entry in (overrides or {}).items():
            prices[name] = Price.from_config(entry)
        return cls(prices)

    def lookup(self, model: str) -> Price | None:
        """The price of `model`, or None when it has none (its requests cost 0)."""
        try:
            return self._memo[model]
        except KeyError:
            pass
        found = None
        for name in spellings(model):
            found = self._prices.get(name)
            if found is not None:
                break
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        self._memo[model] = found
        return found

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and self.lookup(model) is not None

    def __len__(self) -> int:
        return len(self._prices)

    def names(self) -> list[str]:
        return sorted(self._prices)
