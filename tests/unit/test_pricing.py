"""Exact cost arithmetic: hand-computed examples, rounding boundaries and Fraction cross-checks."""

from __future__ import annotations

import dataclasses
import math
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_extproc.apis import Schema
from gateway_extproc.catalog.models import ModelEntry
from gateway_extproc.catalog.pricing import (
    LongContext,
    Price,
    cost_micros,
    cost_pico,
    format_usd,
    price_for_tier,
    usd_to_micros,
    worst_case_micros,
)
from gateway_extproc.tokens import Usage


def price(
    input: str,
    output: str,
    cached_input: str | None = None,
    cache_write: str | None = None,
    reasoning: str | None = None,
    cache_write_1h: str | None = None,
    long_context: LongContext | None = None,
) -> Price:
    """A Price from list prices in USD per 1M tokens, defaulted like the catalog does for
    `schema: openai` (the 1-hour write at the 5-minute rate) unless `cache_write_1h` is given."""
    write = cache_write or input
    return Price(
        input=usd_to_micros(input),
        output=usd_to_micros(output),
        cached_input=usd_to_micros(cached_input or input),
        cache_write=usd_to_micros(write),
        reasoning=usd_to_micros(reasoning or output),
        cache_write_1h=usd_to_micros(cache_write_1h or write),
        long_context=long_context,
    )


GPT_4O = price("2.50", "10.00", cached_input="1.25")
GPT_4O_MINI = price("0.15", "0.60", cached_input="0.075")
SONNET = price("3.00", "15.00", cached_input="0.30", cache_write="3.75")
REASONER = price("1.00", "4.00", reasoning="8.00")


# Every expectation is worked out by hand: tokens x ($ per 1M) = micro-dollars.
COST_CASES = [
    # 1,000 x $2.50 = 2,500 + 500 x $10.00 = 5,000
    ("gpt-4o input+output", Usage(input_tokens=1000, output_tokens=500), GPT_4O, 7_500),
    # uncached 1,000 x $2.50 = 2,500 + cached 2,000 x $1.25 = 2,500; cached never at the full rate
    (
        "gpt-4o cached at cached rate",
        Usage(input_tokens=1000, cached_input_tokens=2000),
        GPT_4O,
        5_000,
    ),
    # 100 x $3 = 300 + write 1,000 x $3.75 = 3,750 + read 5,000 x $0.30 = 1,500 + 200 x $15 = 3,000
    (
        "anthropic cache write and read",
        Usage(
            input_tokens=100,
            cache_write_input_tokens=1000,
            cached_input_tokens=5000,
            output_tokens=200,
        ),
        SONNET,
        8_550,
    ),
    # 400 visible x $4 = 1,600 + 600 reasoning x $8 = 4,800
    (
        "reasoning at its own rate",
        Usage(output_tokens=1000, reasoning_tokens=600),
        REASONER,
        6_400,
    ),
    # reasoning beyond output is clamped: 100 x $8 = 800 (not 300 x $8, not negative visible)
    (
        "reasoning > output clamped",
        Usage(output_tokens=100, reasoning_tokens=300),
        REASONER,
        800,
    ),
    # reasoning at the output rate when it does not differ: 1,000 x $10 = 10,000
    ("reasoning at output rate", Usage(output_tokens=1000, reasoning_tokens=900), GPT_4O, 10_000),
    # 1 cached token x $0.075 = 0.075 -> 0
    ("fraction rounds down", Usage(cached_input_tokens=1), GPT_4O_MINI, 0),
    # 7 x $0.075 = 0.525 -> 1
    ("fraction rounds up", Usage(cached_input_tokens=7), GPT_4O_MINI, 1),
    # 1,000 x $0.0375 = 37.5 -> 38 (half up, not to even)
    ("$0.0375 half up", Usage(input_tokens=1000), price("0.0375", "0.15"), 38),
    # 1,000,000 x $0.15 = 150,000 + 1,000,000 x $0.60 = 600,000
    (
        "one million each",
        Usage(input_tokens=1_000_000, output_tokens=1_000_000),
        GPT_4O_MINI,
        750_000,
    ),
    ("zero usage", Usage(), GPT_4O, 0),
    ("free model", Usage(input_tokens=10**9, output_tokens=10**9), Price.free(), 0),
    # 10^15 tokens x $1,000,000.000001 = 10^15 x 10^6 + 10^9 micro-dollars, exactly
    (
        "huge counts and prices",
        Usage(input_tokens=10**15),
        price("1000000.000001", "0"),
        10**21 + 10**9,
    ),
]


@pytest.mark.parametrize(
    ("usage", "the_price", "expected"),
    [case[1:] for case in COST_CASES],
    ids=[case[0] for case in COST_CASES],
)
def test_cost_micros_hand_computed(usage: Usage, the_price: Price, expected: int) -> None:
    assert cost_micros(usage, the_price) == expected


ROUNDING_CASES = [
    # (pico-dollars per token, tokens, micro-dollars): the pico remainder decides the rounding
    (500_000, 1, 1),  # exactly half -> up
    (499_999, 1, 0),  # just below half -> down
    (500_001, 1, 1),
    (1_500_000, 1, 2),  # 1.5 -> 2
    (2_500_000, 1, 3),  # 2.5 -> 3 (banker's rounding would give 2)
    (1_499_999, 1, 1),
    (100_000, 5, 1),  # 0.5 from five tokens -> 1
    (99_999, 5, 0),  # 0.499995 -> 0
    (1, 500_000, 1),  # $0.000001 per 1M: half a micro-dollar -> 1
    (1, 499_999, 0),
]


@pytest.mark.parametrize(("pico_per_token", "tokens", "expected"), ROUNDING_CASES)
def test_rounding_half_up_at_the_boundary(pico_per_token: int, tokens: int, expected: int) -> None:
    p = Price(pico_per_token, 0, 0, 0, 0)
    assert cost_pico(Usage(input_tokens=tokens), p) == pico_per_token * tokens
    assert cost_micros(Usage(input_tokens=tokens), p) == expected


def test_rounding_happens_once_per_request_not_per_kind() -> None:
    # 0.5 + 0.5 micro-dollars: rounded once = 1; rounding each kind would give 2.
    p = Price(input=500_000, output=0, cached_input=500_000, cache_write=0, reasoning=0)
    assert cost_micros(Usage(input_tokens=1, cached_input_tokens=1), p) == 1


@pytest.mark.parametrize(
    "usage",
    [
        Usage(input_tokens=-1),
        Usage(cached_input_tokens=-1),
        Usage(cache_write_input_tokens=-1),
        Usage(output_tokens=-1),
        Usage(reasoning_tokens=-1),
        Usage(cache_write_1h_input_tokens=-1),
    ],
)
def test_negative_token_counts_are_rejected(usage: Usage) -> None:
    with pytest.raises(ValueError, match="negative token count"):
        cost_micros(usage, GPT_4O)


# --- property tests against an independent Fraction computation --------------------------------

tokens = st.integers(min_value=0, max_value=10**15)
picos = st.integers(min_value=0, max_value=10**12)  # up to $1,000,000 per 1M tokens


def dollars(pico: int) -> str:
    """The list-price string for a pico-per-token price, as an operator would write it."""
    return f"{pico // 10**6}.{pico % 10**6:06d}"


@settings(database=None, max_examples=300)
@given(
    usage=st.builds(Usage, tokens, tokens, tokens, tokens, tokens),
    prices=st.tuples(picos, picos, picos, picos, picos),
)
def test_cost_matches_fraction_arithmetic(usage: Usage, prices: tuple[int, ...]) -> None:
    p = Price(*prices)
    per_million = [Fraction(dollars(x)) for x in prices]  # USD per 1M tokens, from the strings
    reasoning = min(usage.reasoning_tokens, usage.output_tokens)
    usd = (
        usage.input_tokens * per_million[0]
        + (usage.output_tokens - reasoning) * per_million[1]
        + usage.cached_input_tokens * per_million[2]
        + usage.cache_write_input_tokens * per_million[3]
        + reasoning * per_million[4]
    ) / 10**6
    exact_micros = usd * 10**6
    expected = math.floor(exact_micros + Fraction(1, 2))  # half up
    assert cost_micros(usage, p) == expected
    assert abs(Fraction(cost_micros(usage, p)) - exact_micros) <= Fraction(1, 2)


@settings(database=None, max_examples=300)
@given(
    usage=st.builds(Usage, tokens, tokens, tokens, tokens, tokens),
    prices=st.tuples(picos, picos, picos, picos, picos),
)
def test_worst_case_bounds_every_actual_cost(usage: Usage, prices: tuple[int, ...]) -> None:
    p = Price(*prices)
    bound = worst_case_micros(usage.total_input_tokens, usage.output_tokens, p)
    assert cost_micros(usage, p) <= bound


WORST_CASES = [
    # 1,000 x $2.50 = 2,500 + 16,384 x $10.00 = 163,840
    ("gpt-4o", 1000, 16_384, GPT_4O, 166_340),
    # input at the dearer cache-write rate: 1,000 x $3.75 = 3,750 + 1 x $15 = 15
    ("cache write dearer than input", 1000, 1, SONNET, 3_765),
    # output at the dearer reasoning rate: 1,000 x $8 = 8,000
    ("reasoning dearer than output", 0, 1000, REASONER, 8_000),
    # 1 x $0.15 = 0.15 -> rounded up to 1
    ("rounds up", 1, 0, GPT_4O_MINI, 1),
    ("nothing", 0, 0, GPT_4O, 0),
]


@pytest.mark.parametrize(
    ("input_tokens", "max_output", "the_price", "expected"),
    [case[1:] for case in WORST_CASES],
    ids=[case[0] for case in WORST_CASES],
)
def test_worst_case_micros(
    input_tokens: int, max_output: int, the_price: Price, expected: int
) -> None:
    assert worst_case_micros(input_tokens, max_output, the_price) == expected


def test_worst_case_rejects_negative_counts() -> None:
    with pytest.raises(ValueError):
        worst_case_micros(-1, 0, GPT_4O)
    with pytest.raises(ValueError):
        worst_case_micros(0, -1, GPT_4O)


# --- 1-hour cache writes ----------------------------------------------------------------------

SONNET_1H = price("3.00", "15.00", cached_input="0.30", cache_write="3.75", cache_write_1h="6.00")
NO_1H_PRICE = Price(input=3_000_000, output=15_000_000, cached_input=0, cache_write=0, reasoning=0)

ONE_HOUR_CASES = [
    # 100 x $3 = 300 + 5m 1,000 x $3.75 = 3,750 + 1h 2,000 x $6 = 12,000 + 10 x $15 = 150
    (
        "1h writes at their own rate",
        Usage(
            input_tokens=100,
            cache_write_input_tokens=1000,
            cache_write_1h_input_tokens=2000,
            output_tokens=10,
        ),
        SONNET_1H,
        16_200,
    ),
    # cache_write_1h None is Anthropic's rule, twice input: 1,000 x $6 = 6,000 (not the $0 5m rate)
    ("None is twice input", Usage(cache_write_1h_input_tokens=1000), NO_1H_PRICE, 6_000),
    # 1h 1 x $0.25 (2 x $0.125) + 5m 1 x $0.30 = 0.55 -> 1: rounded once over both kinds
    (
        "rounded once with the 5m write",
        Usage(cache_write_input_tokens=1, cache_write_1h_input_tokens=1),
        Price(input=125_000, output=0, cached_input=0, cache_write=300_000, reasoning=0),
        1,
    ),
]


@pytest.mark.parametrize(
    ("usage", "the_price", "expected"),
    [case[1:] for case in ONE_HOUR_CASES],
    ids=[case[0] for case in ONE_HOUR_CASES],
)
def test_one_hour_cache_writes(usage: Usage, the_price: Price, expected: int) -> None:
    assert cost_micros(usage, the_price) == expected


def test_one_hour_write_rate_defaults_to_twice_input() -> None:
    assert NO_1H_PRICE.write_1h == 6_000_000
    assert dataclasses.replace(NO_1H_PRICE, cache_write_1h=0).write_1h == 0  # free is free
    assert Price.free().write_1h == 0


# --- long-context tiers ------------------------------------------------------------------------

# GPT-6.2 Sol: above 272K input tokens input and cache rates double, output x1.5, whole request.
SOL_LONG = LongContext(272_000, price("4.00", "15.00", cached_input="0.20", cache_write="5.00"))
SOL = price("2.00", "10.00", cached_input="0.10", cache_write="2.50", long_context=SOL_LONG)

LONG_CASES = [
    # at the threshold the base tier: 272,000 x $2 = 544,000 + 1,000 x $10 = 10,000
    ("at the threshold", Usage(input_tokens=272_000, output_tokens=1000), 554_000),
    # one over: every token at the tier: 272,001 x $4 = 1,088,004 + 1,000 x $15 = 15,000
    ("one token over", Usage(input_tokens=272_001, output_tokens=1000), 1_103_004),
    # cache reads count toward the threshold: 1 x $4 = 4 + 272,000 x $0.20 = 54,400
    ("cache reads count", Usage(input_tokens=1, cached_input_tokens=272_000), 54_404),
    # so do both kinds of cache write: (136,000 + 136,001) x $5 = 1,360,005
    (
        "cache writes count",
        Usage(cache_write_input_tokens=136_000, cache_write_1h_input_tokens=136_001),
        1_360_005,
    ),
    # output does not: 272,000 x $2 = 544,000 + 1,000,000 x $10 = 10,000,000
    ("output does not count", Usage(input_tokens=272_000, output_tokens=10**6), 10_544_000),
    # reasoning is output, at the tier's output rate: 300,000 x $4 + 500 x $15 = 1,207,500
    (
        "reasoning at the tier rate",
        Usage(input_tokens=300_000, output_tokens=500, reasoning_tokens=500),
        1_207_500,
    ),
]


@pytest.mark.parametrize(
    ("usage", "expected"),
    [case[1:] for case in LONG_CASES],
    ids=[case[0] for case in LONG_CASES],
)
def test_long_context_tier_prices_the_whole_request(usage: Usage, expected: int) -> None:
    assert cost_micros(usage, SOL) == expected


WORST_LONG_CASES = [
    # a bound at the threshold cannot reach the tier: 272,000 x $2.50 (cache write) + 1,000 x $10
    ("bound at the threshold", 272_000, 1000, SOL, 690_000),
    # one over: the tier is dearer, 272,001 x $5 (its cache write) + 1,000 x $15
    ("bound over the threshold", 272_001, 1000, SOL, 1_375_005),
    # a (misconfigured) tier cheaper than the base: the base still bounds a shorter prompt
    (
        "cheaper tier",
        100,
        0,
        price("2", "2", long_context=LongContext(10, price("1", "1"))),
        200,
    ),
]


@pytest.mark.parametrize(
    ("input_tokens", "max_output", "the_price", "expected"),
    [case[1:] for case in WORST_LONG_CASES],
    ids=[case[0] for case in WORST_LONG_CASES],
)
def test_worst_case_with_long_context(
    input_tokens: int, max_output: int, the_price: Price, expected: int
) -> None:
    assert worst_case_micros(input_tokens, max_output, the_price) == expected


small_tokens = st.integers(min_value=0, max_value=400_000)
some_tokens = st.one_of(small_tokens, tokens)
one_hour = st.one_of(st.none(), picos)


def prices_strategy(with_tier: bool) -> st.SearchStrategy[Price]:
    base = st.builds(Price, picos, picos, picos, picos, picos, one_hour)
    if not with_tier:
        return base
    tier = st.builds(LongContext, st.integers(min_value=0, max_value=500_000), base)
    return st.builds(dataclasses.replace, base, long_context=st.one_of(st.none(), tier))


def usages() -> st.SearchStrategy[Usage]:
    return st.builds(Usage, *[some_tokens] * 6)


def exact_micros(usage: Usage, p: Price) -> Fraction:
    """Independently of `pricing`: the tier by the rule, each kind at its USD-per-1M rate."""
    tier = p.long_context
    if tier is not None and usage.total_input_tokens > tier.above_input_tokens:
        p = tier.price
    per_million = {
        field: Fraction(dollars(getattr(p, field)))
        for field in ("input", "output", "cached_input", "cache_write", "reasoning")
    }
    write_1h = 2 * p.input if p.cache_write_1h is None else p.cache_write_1h
    reasoning = min(usage.reasoning_tokens, usage.output_tokens)
    return (
        usage.input_tokens * per_million["input"]
        + usage.cached_input_tokens * per_million["cached_input"]
        + usage.cache_write_input_tokens * per_million["cache_write"]
        + usage.cache_write_1h_input_tokens * Fraction(dollars(write_1h))
        + (usage.output_tokens - reasoning) * per_million["output"]
        + reasoning * per_million["reasoning"]
    )  # USD per 1M tokens x tokens = micro-dollars


@settings(database=None, max_examples=400)
@given(usage=usages(), p=prices_strategy(with_tier=True))
def test_cost_with_1h_and_tiers_matches_fraction_arithmetic(usage: Usage, p: Price) -> None:
    exact = exact_micros(usage, p)
    assert cost_micros(usage, p) == math.floor(exact + Fraction(1, 2))


@settings(database=None, max_examples=400)
@given(
    usage=usages(),
    p=prices_strategy(with_tier=True),
    extra_input=small_tokens,
    extra_output=small_tokens,
)
def test_worst_case_bounds_any_usage_within_the_counts(
    usage: Usage, p: Price, extra_input: int, extra_output: int
) -> None:
    # Any usage whose input (all kinds) and output fit the counts costs at most the bound.
    bound = worst_case_micros(
        usage.total_input_tokens + extra_input, usage.output_tokens + extra_output, p
    )
    assert cost_micros(usage, p) <= bound
    assert exact_micros(usage, p) <= bound


# --- service tiers -----------------------------------------------------------------------------

GPT_4O_PRIORITY = price("4.25", "17.00", cached_input="2.125")
GPT_4O_ENTRY = ModelEntry(
    "gpt-4o",
    "openai",
    Schema.OPENAI,
    16_384,
    GPT_4O,
    service_tiers=(("priority", GPT_4O_PRIORITY),),
)
FREE_ENTRY = ModelEntry("llama", "vllm", Schema.OPENAI, 4096, Price.free(), free=True)


@pytest.mark.parametrize("tier", [None, "auto", "default", "standard_only"])
def test_standard_service_tiers_get_the_standard_price(tier: str | None) -> None:
    assert price_for_tier(GPT_4O_ENTRY, tier) is GPT_4O


def test_a_priced_service_tier_gets_its_price() -> None:
    assert price_for_tier(GPT_4O_ENTRY, "priority") is GPT_4O_PRIORITY
    # 1,000 x $4.25 + 1,000 x $2.125 + 100 x $17 = 4,250 + 2,125 + 1,700
    usage = Usage(input_tokens=1000, cached_input_tokens=1000, output_tokens=100)
    assert cost_micros(usage, GPT_4O_PRIORITY) == 8_075


@pytest.mark.parametrize("tier", ["flex", "scale", "ultrafast", "Priority", "", "standard"])
def test_a_service_tier_the_catalog_cannot_price_is_none(tier: str) -> None:
    assert price_for_tier(GPT_4O_ENTRY, tier) is None


@pytest.mark.parametrize("tier", [None, "priority", "flex", "anything"])
def test_a_free_model_is_free_in_any_tier(tier: str | None) -> None:
    assert price_for_tier(FREE_ENTRY, tier) == Price.free()


# --- USD strings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (0, "0.000000"),
        (1, "0.000001"),
        (1_234, "0.001234"),
        (12_000_000, "12.000000"),
        (12_345_678, "12.345678"),
        (-1, "-0.000001"),
        (-12_345_678, "-12.345678"),
        (10**21, "1000000000000000.000000"),
    ],
)
def test_format_usd(micros: int, text: str) -> None:
    assert format_usd(micros) == text


@pytest.mark.parametrize(
    ("value", "micros"),
    [
        ("12.50", 12_500_000),
        ("0.075", 75_000),
        (0.075, 75_000),  # YAML float: parsed through its shortest repr, exactly
        (0.0375, 37_500),
        (2.5, 2_500_000),
        (100, 100_000_000),
        (0, 0),
        ("0", 0),
        ("0.000001", 1),
        (Decimal("0.000001"), 1),
        ("0.0750000", 75_000),  # trailing zeros beyond 6 places carry no precision
        ("1e3", 1_000_000_000),
        ("-3.5", -3_500_000),
        (" 2 ", 2_000_000),
        ("12345678901234567890.123456", 12345678901234567890123456),  # beyond Decimal precision
    ],
)
def test_usd_to_micros_accepts(value: object, micros: int) -> None:
    assert usd_to_micros(value) == micros


@pytest.mark.parametrize(
    "value",
    [
        "0.0000001",
        0.0000001,
        "1e-7",
        "1.2345678",
        True,
        False,
        None,
        "abc",
        "",
        "1,5",
        "nan",
        float("nan"),
        float("inf"),
        "-Infinity",
        [1],
        {"usd": 1},
    ],
)
def test_usd_to_micros_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        usd_to_micros(value)


@settings(database=None)
@given(st.integers(min_value=-(10**24), max_value=10**24))
def test_format_usd_round_trips_through_usd_to_micros(micros: int) -> None:
    text = format_usd(micros)
    assert usd_to_micros(text) == micros
    assert Fraction(text) * 10**6 == micros


@settings(database=None)
@given(st.integers(min_value=-(10**15) + 1, max_value=10**15 - 1))
def test_yaml_floats_with_six_places_parse_exactly(micros: int) -> None:
    # A YAML float with <= 15 significant digits keeps its text through repr(): exact again.
    assert usd_to_micros(float(format_usd(micros))) == micros
