"""aigw/pricing.py: the cost of every token class in every dialect against hand-computed figures,
exact sums over 100,000 requests, money units, price lookup and the shipped price table."""

from __future__ import annotations

import json
import random
import re
from datetime import date
from decimal import Decimal
from fractions import Fraction
from importlib.resources import files
from typing import Any

import pytest

from aigw.config import PriceConfig
from aigw.exchange import Usage
from aigw.pricing import (
    MAX_BUDGET_USD,
    MAX_NANOS,
    Price,
    PriceTable,
    cost,
    cost_nanos,
    estimate_cost,
    estimate_nanos,
    from_nanos,
    parse_shipped_table,
    parse_usd,
    shipped_table,
    spellings,
    to_nanos,
    usage_from_messages_json,
    usage_from_responses_json,
    usd_number,
    usd_text,
)
from aigw.usage_history import UsageRollup, summarise

TABLE = PriceTable.build()

# --- every token class in every dialect, by hand -----------------------------------------------

#: (dialect, upstream model, raw usage JSON, the canonical Usage it reads as, cost in USD as
#: worked out by hand from the provider's price page). Prices per million tokens:
#: gpt-4o 2.50 in / 1.25 cached / 10 out; o3 2 / 0.50 / 8; o4-mini 1.10 / 0.275 / 4.40;
#: claude-sonnet-4-5 3 in / 0.30 cache read / 3.75 cache write / 15 out; claude-3-haiku 0.25 /
#: 0.03 / 0.30 / 1.25.
DIALECT_CASES: list[tuple[str, str, dict[str, Any], Usage, str]] = [
    (
        "chat", "gpt-4o",
        {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500},
        Usage(1000, 500, 1500),
        "0.0075",  # 1000 x 2.50 + 500 x 10 = 2,500 + 5,000 = 7,500 per million
    ),
    (
        "chat", "gpt-4o",
        {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200,
         "prompt_tokens_details": {"cached_tokens": 400},
         "completion_tokens_details": {"reasoning_tokens": 50}},
        Usage(1000, 200, 1200, cached_tokens=400, reasoning_tokens=50),
        "0.004",  # 600 x 2.50 + 400 x 1.25 + 200 x 10 = 1,500 + 500 + 2,000
    ),
    (
        "chat", "o3",  # reasoning tokens are output tokens, billed once, at the output price
        {"prompt_tokens": 120, "completion_tokens": 1000, "total_tokens": 1120,
         "completion_tokens_details": {"reasoning_tokens": 800}},
        Usage(120, 1000, 1120, reasoning_tokens=800),
        "0.00824",  # 120 x 2 + 1000 x 8 = 240 + 8,000
    ),
    (
        "responses", "o4-mini",
        {"input_tokens": 2000, "input_tokens_details": {"cached_tokens": 1500},
         "output_tokens": 300, "output_tokens_details": {"reasoning_tokens": 200},
         "total_tokens": 2300},
        Usage(2000, 300, 2300, cached_tokens=1500, reasoning_tokens=200),
        "0.0022825",  # 500 x 1.10 + 1500 x 0.275 + 300 x 4.40 = 550 + 412.5 + 1,320
    ),
    (
        "responses", "gpt-4o",
        {"input_tokens": 10, "output_tokens": 5},  # no details, no total
        Usage(10, 5, 15),
        "0.000075",  # 10 x 2.50 + 5 x 10 = 25 + 50
    ),
    (
        "messages", "claude-sonnet-4-5",
        {"input_tokens": 100, "cache_creation_input_tokens": 2000,
         "cache_read_input_tokens": 5000, "output_tokens": 400},
        Usage(7100, 400, 7500, cached_tokens=5000, cache_write_tokens=2000),
        "0.0153",  # 100 x 3 + 5000 x 0.30 + 2000 x 3.75 + 400 x 15 = 300 + 1,500 + 7,500 + 6,000
    ),
    (
        "messages", "claude-3-haiku",
        {"input_tokens": 7, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
         "output_tokens": 3},
        Usage(7, 3, 10),
        "0.00000550",  # 7 x 0.25 + 3 x 1.25 = 1.75 + 3.75
    ),
    (
        "messages", "claude-3-haiku",
        {"input_tokens": 1, "cache_read_input_tokens": 1_000_000, "output_tokens": 0},
        Usage(1_000_001, 0, 1_000_001, cached_tokens=1_000_000),
        "0.03000025",  # 1 x 0.25 + 1,000,000 x 0.03
    ),
]  # fmt: skip

READERS = {
    "chat": Usage.from_json,
    "responses": usage_from_responses_json,
    "messages": usage_from_messages_json,
}


@pytest.mark.parametrize(
    ("dialect", "model", "raw", "usage", "usd"),
    DIALECT_CASES,
    ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(DIALECT_CASES)],
)
def test_cost_of_each_dialects_usage_matches_the_hand_computed_figure(
    dialect: str, model: str, raw: dict[str, Any], usage: Usage, usd: str
) -> None:
    read = READERS[dialect](raw)
    assert read == usage
    price = TABLE.lookup(model)
    assert price is not None
    assert cost(usage, price) == Decimal(usd)
    assert cost_nanos(usage, price) == to_nanos(Decimal(usd))


def test_each_token_class_is_billed_at_its_own_price() -> None:
    price = Price.of("1", "4", cached_input="0.5", cache_write="2")
    million = 1_000_000
    assert cost(Usage(million, 0, million), price) == 1  # plain input
    assert cost(Usage(million, 0, million, cached_tokens=million), price) == Decimal("0.5")
    assert cost(Usage(million, 0, million, cache_write_tokens=million), price) == 2
    assert cost(Usage(0, million, million), price) == 4  # output
    # reasoning is part of completion_tokens: it adds nothing on top
    assert cost(Usage(0, million, million, reasoning_tokens=million), price) == 4
    mixed = Usage(
        4 * million, million, 5 * million, cached_tokens=million, cache_write_tokens=million
    )
    assert cost(mixed, price) == 2 * 1 + Decimal("0.5") + 2 + 4


def test_cache_prices_default_to_the_input_price() -> None:
    price = Price.of("3", "15")
    assert (price.cached_input, price.cache_write) == (Decimal(3), Decimal(3))
    usage = Usage(1000, 0, 1000, cached_tokens=300, cache_write_tokens=200)
    assert cost(usage, price) == cost(Usage(1000, 0, 1000), price) == Decimal("0.003")


def test_inconsistent_or_negative_counts_never_credit() -> None:
    price = Price.of("1", "1")
    # more cached than prompt: no plain input is billed, the cached ones are
    assert cost(Usage(10, 0, 10, cached_tokens=30), price) == Decimal("0.00003")
    assert cost_nanos(Usage(10, 0, 10, cached_tokens=30), price) == 30_000
    assert cost(Usage(-5, -5, -10), price) == 0
    assert cost_nanos(Usage(-5, -5, -10), price) == 0


@pytest.mark.parametrize(
    ("reader", "raw"),
    [
        (usage_from_responses_json, None),
        (usage_from_responses_json, [1, 2]),
        (usage_from_responses_json, {"input_tokens": -1, "output_tokens": 2}),
        (usage_from_responses_json, {"input_tokens": True, "output_tokens": 2}),
        (usage_from_responses_json, {"input_tokens": "many"}),
        (usage_from_messages_json, "usage"),
        (usage_from_messages_json, {"input_tokens": 1, "cache_read_input_tokens": -7}),
        (usage_from_messages_json, {"input_tokens": {"n": 1}}),
    ],
)
def test_malformed_usage_reads_as_none(reader: Any, raw: object) -> None:
    assert reader(raw) is None


def test_cost_nanos_is_cost_in_nano_dollars_for_any_price() -> None:
    rng = random.Random(11)
    for _ in range(3000):
        digits = rng.choice([0, 1, 2, 3, 4, 6, 9])
        price = Price.of(
            *(Decimal(rng.randrange(0, 10**6)).scaleb(-digits) for _ in range(2)),
            cached_input=Decimal(rng.randrange(0, 10**5)).scaleb(-digits),
            cache_write=Decimal(rng.randrange(0, 10**6)).scaleb(-digits),
        )
        prompt = rng.randrange(0, 10**7)
        cached = rng.randrange(0, prompt + 1)
        written = rng.randrange(0, prompt - cached + 1)
        usage = Usage(prompt, rng.randrange(0, 10**6), 0, cached, written)
        assert cost_nanos(usage, price) == to_nanos(cost(usage, price))


def test_a_price_with_more_than_three_decimals_rounds_half_even_to_the_nano_dollar() -> None:
    price = Price.of("0.0005", "0.0015")  # half a nano-dollar a token, 1.5 nano-dollars
    assert cost(Usage(1, 0, 1), price) == Decimal("0.0000000005")
    assert cost_nanos(Usage(1, 0, 1), price) == 0  # 0.5 -> 0 (even)
    assert cost_nanos(Usage(3, 0, 3), price) == 2  # 1.5 -> 2 (even)
    assert cost_nanos(Usage(0, 1, 1), price) == 2  # 1.5 -> 2
    assert cost_nanos(Usage(0, 5, 5), price) == 8  # 7.5 -> 8
    assert cost_nanos(Usage(7, 0, 7), price) == 4  # 3.5 -> 4


def test_estimate_is_prompt_at_input_plus_max_output_at_output_rounded_up() -> None:
    price = TABLE.lookup("gpt-4o")
    assert price is not None
    # 1000 x 2.50 + 4096 x 10 = 2,500 + 40,960 per million
    assert estimate_cost(1000, 4096, price) == Decimal("0.04346")
    assert estimate_nanos(1000, 4096, price) == 43_460_000
    odd = Price.of("0.0001", "0.0001")  # 0.1 nano-dollar a token
    assert estimate_cost(1, 0, odd) == Decimal("1E-10")
    assert estimate_nanos(1, 0, odd) == 1  # a reservation never falls short
    assert estimate_nanos(-5, -5, odd) == 0


# --- exact sums ----------------------------------------------------------------------------------


def _oracle(price_text: dict[str, str]) -> Any:
    """An independent reckoning from the price strings (not the code under test): each price
    as an exact fraction times 10^9 (a whole number for up to 9 decimals); a request's cost in
    units of 10^-15 USD."""
    scaled = []
    for key in ("input", "cached_input", "cache_write", "output"):
        value = Fraction(price_text[key]) * 10**9
        assert value.denominator == 1
        scaled.append(int(value))
    inp, cached, write, out = scaled

    def femto_usd(usage: Usage) -> int:
        plain = usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens
        return (
            plain * inp
            + usage.cached_tokens * cached
            + usage.cache_write_tokens * write
            + usage.completion_tokens * out
        )

    return femto_usd


FEMTO = 10**15


def test_the_sum_over_100000_recorded_requests_is_exact_to_the_cent() -> None:
    rng = random.Random(20261203)
    models = ["gpt-4o", "gpt-4o-mini", "o4-mini", "gpt-5-nano", "claude-sonnet-4-5",
              "claude-3-haiku", "claude-opus-4-1"]  # fmt: skip
    prices = {m: TABLE.lookup(m) for m in models}
    oracles = {m: _oracle(p.to_dict()) for m, p in prices.items() if p is not None}
    rollup = UsageRollup(clock=lambda: 0.0)
    exact = 0
    start = 1_700_000_000
    for i in range(100_000):
        model = rng.choice(models)
        prompt = rng.randrange(1, 200_000)
        cached = rng.randrange(0, prompt + 1) if rng.random() < 0.5 else 0
        written = rng.randrange(0, prompt - cached + 1) if model.startswith("claude") else 0
        completion = rng.randrange(0, 8_000)
        usage = Usage(prompt, completion, prompt + completion, cached, written, completion // 3)
        price = prices[model]
        assert price is not None
        nanos = cost_nanos(usage, price)
        rollup.record(f"t{i % 7}", model, "chat/completions", usage, nanos, at=start + i * 30)
        exact += oracles[model](usage)
    report = summarise(rollup.drain(), start, "tenant")
    total = from_nanos(report.totals.cost_nanos)
    # Every shipped price has at most 3 decimals: each request's cost is a whole number of
    # nano-dollars, so the sum is exact, not just to the cent.
    assert Fraction(total) == Fraction(exact, FEMTO)
    assert report.totals.requests == 100_000
    assert sum(b.counts.cost_nanos for b in report.buckets) == report.totals.cost_nanos
    # and the JSON number carries the same amount
    assert Decimal(json.dumps(report.to_dict()["totals"]["cost_usd"])) == total


def test_a_sum_with_sub_nano_prices_stays_within_a_cent() -> None:
    rng = random.Random(7)
    price = Price.of("0.0375", "0.1505", cached_input="0.00375")  # 4 decimals: rounding
    oracle = _oracle(price.to_dict())
    exact = 0
    total = 0
    for _ in range(100_000):
        prompt = rng.randrange(1, 50_000)
        usage = Usage(prompt, rng.randrange(0, 4000), 0, rng.randrange(0, prompt + 1))
        total += cost_nanos(usage, price)
        exact += oracle(usage)
    error = abs(Fraction(total, 10**9) - Fraction(exact, FEMTO))
    assert 0 < error <= Fraction(100_000, 2 * 10**9)  # at most half a nano-dollar a request
    assert from_nanos(total).quantize(Decimal("0.01")) == (Decimal(exact) / FEMTO).quantize(
        Decimal("0.01")
    )


# --- money units ---------------------------------------------------------------------------------


def test_nano_dollars_round_trip_and_saturate() -> None:
    assert to_nanos("20") == 20 * 10**9
    assert to_nanos(Decimal("0.000000001")) == 1
    assert to_nanos(Decimal("0.0000000015")) == 2  # half-even
    assert to_nanos(Decimal("0.0000000025")) == 2
    assert from_nanos(to_nanos("12.345678912")) == Decimal("12.345678912")
    assert to_nanos(MAX_BUDGET_USD) == 10**18 < MAX_NANOS
    assert to_nanos(Decimal("1e30")) == MAX_NANOS
    for bad in ("-1", "NaN", "Infinity", "twenty", ""):
        with pytest.raises(ValueError):
            to_nanos(bad)


def test_a_10_to_the_15_token_request_saturates_instead_of_overflowing() -> None:
    price = TABLE.lookup("o1-pro")  # $600 per million output tokens, the dearest shipped
    assert price is not None
    huge = Usage(10**15, 10**15, 2 * 10**15)
    assert cost(huge, price) == Decimal(10**15 * 750) / 10**6  # exact as a Decimal
    assert cost_nanos(huge, price) == MAX_NANOS  # a 64-bit counter cannot take more
    assert estimate_nanos(10**15, 10**15, price) == MAX_NANOS
    # a 10^15-token day at gpt-4o-mini's prices still fits, exactly
    cheap = TABLE.lookup("gpt-4o-mini")
    assert cheap is not None
    assert cost_nanos(Usage(10**15, 0, 10**15), cheap) == 150_000_000 * 10**9


@pytest.mark.parametrize(
    ("nanos", "text", "cents"),
    [
        (0, "0.00", "0.00"),
        (75_000, "0.000075", "0.00"),
        (12_500_000_000, "12.50", "12.50"),
        (1_234_567_891_234, "1234.567891234", "1234.57"),
        (5_000_000, "0.005", "0.00"),  # half-even: 0.005 -> 0.00
        (15_000_000, "0.015", "0.02"),
    ],
)
def test_usd_text_is_exact_plain_decimal(nanos: int, text: str, cents: str) -> None:
    assert usd_text(nanos) == text
    assert usd_text(nanos, decimals=2) == cents


def test_usd_number_is_the_exact_amount_as_a_json_number() -> None:
    rng = random.Random(3)
    for _ in range(2000):
        nanos = rng.randrange(0, 10**15)  # up to a million dollars
        assert Decimal(json.dumps(usd_number(nanos))) == from_nanos(nanos)


# --- lookup ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "priced_as"),
    [
        ("gpt-4o", "gpt-4o"),
        ("gpt-4o-2024-08-06", "gpt-4o"),  # a dated snapshot falls back to its model
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),  # unless the table prices it itself
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("openai/gpt-4.1-mini", "gpt-4.1-mini"),  # OpenRouter's provider prefix
        ("openai/gpt-5-2025-08-07", "gpt-5"),
        ("GPT-4.1", "gpt-4.1"),
        ("o3-2025-04-16", "o3"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-opus-4-20250514", "claude-opus-4"),
        ("claude-opus-4-0", "claude-opus-4"),  # an alias in the table
        ("claude-3-7-sonnet-latest", "claude-3-7-sonnet"),
        ("anthropic/claude-3.5-sonnet", "claude-3-5-sonnet"),  # OpenRouter's spelling
        ("anthropic/claude-opus-4.1", "claude-opus-4-1"),
        ("us.anthropic.claude-3-5-haiku-20241022-v1:0", "claude-3-5-haiku"),  # Bedrock
        ("anthropic.claude-3-haiku-20240307-v1:0", "claude-3-haiku"),
        ("claude-3-5-sonnet-v2@20241022", "claude-3-5-sonnet"),  # Vertex
    ],
)
def test_lookup_normalises_the_usual_spellings(name: str, priced_as: str) -> None:
    expected = shipped_table().prices[priced_as].price
    assert TABLE.lookup(name) == expected
    assert name in TABLE


@pytest.mark.parametrize("name", ["mock", "llama3.1", "gpt-4o-mini-tts", "claude", "", "o"])
def test_unknown_models_have_no_price(name: str) -> None:
    assert TABLE.lookup(name) is None
    assert name not in TABLE


def test_spellings_are_tried_exact_first_and_each_once() -> None:
    tried = list(spellings("openai/GPT-4o-2024-08-06"))
    assert tried[0] == "openai/GPT-4o-2024-08-06"
    assert tried.index("gpt-4o-2024-08-06") < tried.index("gpt-4o")
    assert len(tried) == len(set(tried))


def test_a_config_entry_replaces_the_shipped_one_whole_and_adds_models() -> None:
    table = PriceTable.build(
        {
            "gpt-4o": PriceConfig(input=Decimal("2"), output=Decimal("8")),
            "llama3.1": PriceConfig(input=Decimal(0), output=Decimal(0)),
        }
    )
    gpt = table.lookup("gpt-4o")
    # cached_input was 1.25 in the shipped table: the config's entry is the whole price
    assert gpt == Price.of("2", "8", cached_input="2", cache_write="2")
    assert table.lookup("gpt-4o-2024-11-20") == gpt  # snapshots follow the override
    assert table.lookup("gpt-4o-2024-05-13") == Price.of("5", "15")  # its own entry stays
    assert table.lookup("llama3.1") == Price.of(0, 0)  # free, but priced
    assert table.lookup("gpt-4.1") == shipped_table().prices["gpt-4.1"].price
    assert PriceTable.build({}, shipped=False).lookup("gpt-4o") is None


def test_lookup_memory_is_bounded() -> None:
    table = PriceTable.build()
    for i in range(10_000):
        assert table.lookup(f"no-such-model-{i}") is None
    assert len(table._memo) <= 4096
    assert table.lookup("gpt-4o") is not None


@pytest.mark.parametrize("bad", ["-1", "NaN", "Infinity"])
def test_a_price_must_be_finite_and_not_negative(bad: str) -> None:
    with pytest.raises(ValueError):
        Price.of(bad, "1")


# --- the shipped table -------------------------------------------------------------------------


def test_the_shipped_table_is_dated_sourced_and_complete() -> None:
    raw = json.loads((files("aigw") / "prices" / "default.json").read_text(encoding="utf-8"))
    as_of = date.fromisoformat(raw["as_of"])
    for name, entry in raw["models"].items():
        assert entry["source"] in raw["sources"], name
        assert date.fromisoformat(entry["checked"]) <= as_of, name
        assert set(entry) <= {"aliases", "input", "cached_input", "cache_write", "output",
                              "source", "checked"}, name  # fmt: skip
        price = shipped_table().prices[name].price
        assert price.cached_input <= price.input, name  # a cache read is never dearer
        # every price a whole number of nano-dollars per token: sums stay exact
        for value in (price.input, price.cached_input, price.cache_write, price.output):
            assert (value * 1000) == int(value * 1000), (name, value)
    names = set(shipped_table().prices)
    for family in ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o1",
                   "o3", "o3-mini", "o4-mini", "gpt-5", "gpt-5-mini", "gpt-5-nano",
                   "claude-opus-4-1", "claude-opus-4", "claude-sonnet-4-5", "claude-sonnet-4",
                   "claude-haiku-4-5", "claude-3-7-sonnet", "claude-3-5-sonnet",
                   "claude-3-5-haiku", "claude-3-opus", "claude-3-haiku"):  # fmt: skip
        assert family in names
    # Anthropic's cache writes cost 1.25 x input (5 minutes), reads 0.1 x (Claude 3 Haiku:
    # 1.2 x and 0.12 x): a typo shows here
    for name in names:
        price = shipped_table().prices[name].price
        if name == "claude-3-haiku":
            assert (price.cache_write, price.cached_input) == (Decimal("0.30"), Decimal("0.03"))
        elif name.startswith("claude-"):
            assert price.cache_write == price.input * Decimal("1.25"), name
            assert price.cached_input == price.input / 10, name


def test_a_name_twice_in_the_shipped_table_is_refused() -> None:
    text = json.dumps(
        {"as_of": "2026-01-01", "models": {
            "a": {"input": 1, "output": 1, "source": "x", "checked": "2026-01-01"},
            "b": {"aliases": ["a"], "input": 1, "output": 1, "source": "x",
                  "checked": "2026-01-01"}}}
    )  # fmt: skip
    with pytest.raises(ValueError, match="'a' twice"):
        parse_shipped_table(text)


def test_shipped_prices_keep_their_decimals_exactly() -> None:
    text = (files("aigw") / "prices" / "default.json").read_text(encoding="utf-8")
    assert re.search(r'"gpt-4o-mini": \{"input": 0\.15, "cached_input": 0\.075', text)
    assert shipped_table().prices["gpt-4o-mini"].price.cached_input == Decimal("0.075")


@pytest.mark.parametrize(
    ("text", "usd"),
    [
        ("20", "20"),
        ("20.50", "20.50"),
        ("$1,000", "1000"),
        ("1_000.25", "1000.25"),
        ("0", "0"),
        (" 0.000000001 ", "0.000000001"),
        ("1000000000", "1000000000"),
    ],
)
def test_parse_usd(text: str, usd: str) -> None:
    assert parse_usd(text) == Decimal(usd)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("-5", "cannot be negative"),
        ("twenty", "like 20 or 20.50"),
        ("1e3", "like 20"),
        ("20.", "like 20"),
        ("0.0000000001", "at most 9 decimals"),
        ("1000000000.01", "at most 1,000,000,000"),
        ("NaN", "like 20"),
        ("", "like 20"),
    ],
)
def test_parse_usd_refuses(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_usd(text)
