"""Catalog price fields beyond the flat ones: the 1-hour cache write, long-context tiers, service
tiers, and the shipped values of them and of the bound fields (context window, image maximum)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway_extproc.catalog.models import Catalog, ModelEntry
from gateway_extproc.catalog.pricing import (
    LongContext,
    Price,
    cost_micros,
    price_for_tier,
    usd_to_micros,
    worst_case_micros,
)
from gateway_extproc.errors import ConfigError
from gateway_extproc.tokens import Usage

RETIRED = Path(__file__).resolve().parents[1] / "fixtures" / "retired-models.yaml"
CHAT = {"provider": "openai", "schema": "openai", "max_output_tokens": 1000}
CLAUDE = {"provider": "anthropic", "schema": "anthropic", "max_output_tokens": 1000}
BAD_PRICE = "must be a number >= 0 with at most 6 decimal places"


@pytest.fixture(scope="module")
def shipped() -> Catalog:
    return Catalog.load([RETIRED])


def entry_of(*docs: Any, name: str = "m") -> ModelEntry:
    catalog = Catalog.from_documents([(f"doc{i}.yaml", d) for i, d in enumerate(docs)])
    entry = catalog.lookup(name)
    assert entry is not None
    return entry


def problems_of(*docs: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        Catalog.from_documents([(f"doc{i}.yaml", d) for i, d in enumerate(docs)])
    return info.value.problems


def usd(*values: str) -> tuple[int, ...]:
    return tuple(usd_to_micros(v) for v in values)


def rates(p: Price) -> tuple[int, ...]:
    """(input, cached_input, cache_write, 1-hour write, output, reasoning) in pico per token."""
    return (p.input, p.cached_input, p.cache_write, p.write_1h, p.output, p.reasoning)


# --- the 1-hour cache write --------------------------------------------------------------------


def test_one_hour_write_defaults_by_schema() -> None:
    # Anthropic: twice input (its published rule). OpenAI: the cache_write rate (OpenAI reports no
    # 1-hour writes; the default keeps them out of the worst case).
    claude = entry_of({"models": {"m": {**CLAUDE, "input": 3, "output": 15, "cache_write": 3.75}}})
    assert claude.price.cache_write_1h == usd_to_micros("6")
    gpt = entry_of({"models": {"m": {**CHAT, "input": 2, "output": 8, "cache_write": 2.5}}})
    assert gpt.price.cache_write_1h == usd_to_micros("2.5")
    explicit = {"models": {"m": {**CLAUDE, "input": 3, "output": 15, "cache_write_1h": "6.5"}}}
    assert entry_of(explicit).price.cache_write_1h == usd_to_micros("6.5")


def test_one_hour_write_price_is_validated() -> None:
    doc = {"models": {"m": {**CLAUDE, "input": 3, "output": 15, "cache_write_1h": "-1"}}}
    assert problems_of(doc) == [f"doc0.yaml: models.m.cache_write_1h: {BAD_PRICE} (got '-1')"]


# --- the 12-hour cache write (OpenAI) ----------------------------------------------------------


def test_twelve_hour_write_is_listed_or_none() -> None:
    listed = {
        "models": {
            "m": {**CHAT, "input": 2, "output": 10, "cache_write": 2.5, "cache_write_12h": 5}
        }
    }
    price = entry_of(listed).price
    assert price.cache_write_12h == usd_to_micros("5")
    assert price.with_12h_writes() == Price(
        *usd("2", "10", "2", "5", "10", "2.5"), cache_write_12h=usd_to_micros("5")
    )  # input, output, cached, cache_write (now the 12-hour rate), reasoning, 1-hour
    unlisted = entry_of({"models": {"m": {**CHAT, "input": 2, "output": 10, "cache_write": 2.5}}})
    assert unlisted.price.cache_write_12h is None and unlisted.price.with_12h_writes() is None
    free_writes = entry_of({"models": {"m": {**CHAT, "input": 2, "output": 10}}}).price
    assert free_writes.with_12h_writes() == free_writes  # no write fee: no retention changes it


def test_twelve_hour_write_problems_have_paths() -> None:
    claude = {"models": {"m": {**CLAUDE, "input": 3, "output": 15, "cache_write_12h": 6}}}
    assert problems_of(claude) == [
        "doc0.yaml: models.m.cache_write_12h: OpenAI's 12-hour cache write, for schema: openai "
        "only (Anthropic's 1-hour write is cache_write_1h)"
    ]
    bad = {"models": {"m": {**CHAT, "input": 2, "output": 10, "cache_write_12h": "x"}}}
    assert problems_of(bad) == [f"doc0.yaml: models.m.cache_write_12h: {BAD_PRICE} (got 'x')"]


def test_shipped_twelve_hour_writes(shipped: Catalog) -> None:
    """gpt-6.2-sol's page: "A 12-hour cache write costs $5 per million tokens for short-context
    requests"; above 272K the cache rates double (the 12-hour one is taken to double too)."""
    sol = shipped.lookup("gpt-6.2-sol")
    assert sol is not None and sol.price.long_context is not None
    twelve = sol.price.with_12h_writes()
    assert twelve is not None and twelve.long_context is not None
    assert (twelve.cache_write, twelve.long_context.price.cache_write) == usd("5", "10")
    listed = sorted(e.name for e in shipped.models() if e.price.cache_write_12h is not None)
    assert listed == ["gpt-6.2-sol"]


# --- long-context tiers ------------------------------------------------------------------------


def test_long_context_tier_defaults_like_the_model() -> None:
    tier = {"above_input_tokens": 200_000, "input": 6, "output": "22.5"}
    entry = entry_of({"models": {"m": {**CLAUDE, "input": 3, "output": 15, "long_context": tier}}})
    long = entry.price.long_context
    assert long is not None and long.above_input_tokens == 200_000
    # cached_input and cache_write default to the tier's input, the 1h write to twice it,
    # reasoning to the tier's output; a tier has no tier of its own.
    assert rates(long.price) == usd("6", "6", "6", "12", "22.5", "22.5")
    assert long.price.long_context is None
    assert entry.prices_long_context


def test_long_context_for_an_embedding_model_needs_only_input() -> None:
    body = {"provider": "openai", "schema": "openai", "embedding": True, "input": "0.1"}
    body["long_context"] = {"above_input_tokens": 8000, "input": "0.2"}
    entry = entry_of({"models": {"m": body}})
    tier = Price(200_000, 0, 200_000, 200_000, 0, cache_write_1h=200_000)
    assert entry.price.long_context == LongContext(8000, tier)


LONG_CONTEXT_PROBLEMS = [
    (5, ["models.m.long_context: must be a mapping of above_input_tokens and prices (got 5)"]),
    ({"input": 6, "output": 9}, ["models.m.long_context.above_input_tokens: required"]),
    (
        {"above_input_tokens": 0, "input": -1, "output": 9, "ouput": 3},
        [
            "models.m.long_context.above_input_tokens: must be a positive integer (got 0)",
            f"models.m.long_context.input: {BAD_PRICE} (got -1)",
            "models.m.long_context.ouput: unknown key (did you mean 'output'?)",
        ],
    ),
    ({"above_input_tokens": True, "input": 6, "output": 9}, ["must be a positive integer"]),
    ({"above_input_tokens": 10, "input": 6}, ["models.m.long_context: needs output price(s)"]),
    (
        {"above_input_tokens": 10, "input": 6, "output": 9, "long_context": {}},
        ["models.m.long_context.long_context: unknown key"],
    ),
]


@pytest.mark.parametrize(("tier", "expected"), LONG_CONTEXT_PROBLEMS)
def test_long_context_problems_have_paths(tier: object, expected: list[str]) -> None:
    problems = problems_of(
        {"models": {"m": {**CHAT, "input": 3, "output": 15, "long_context": tier}}}
    )
    assert len(problems) == len(expected), problems
    for problem, want in zip(problems, expected, strict=True):
        assert problem.startswith("doc0.yaml: models.m.long_context"), problem
        assert want in problem, problems


# --- service tiers -----------------------------------------------------------------------------


def test_service_tiers_default_like_the_model_and_are_found_by_price_for_tier() -> None:
    tiers = {"priority": {"input": 4, "output": 16}, "flex": {"input": 1, "cached_input": "0.1"}}
    tiers["flex"]["output"] = 4
    entry = entry_of({"models": {"m": {**CHAT, "input": 2, "output": 8, "service_tiers": tiers}}})
    assert [name for name, _ in entry.service_tiers] == ["flex", "priority"]
    priority = price_for_tier(entry, "priority")
    assert priority is not None and rates(priority) == usd("4", "4", "4", "4", "16", "16")
    flex = price_for_tier(entry, "flex")
    assert flex is not None and rates(flex) == usd("1", "0.1", "1", "1", "4", "4")
    assert price_for_tier(entry, "scale") is None
    assert price_for_tier(entry, "default") is entry.price


def test_a_service_tier_needs_a_long_context_tier_when_the_model_has_one() -> None:
    long = {"above_input_tokens": 272_000, "input": 4, "output": 15}
    body = {**CHAT, "input": 2, "output": 10, "long_context": long}
    body["service_tiers"] = {"flex": {"input": 1, "output": 5}}
    problems = problems_of({"models": {"m": body}})
    assert problems == [
        "doc0.yaml: models.m.service_tiers.flex.long_context: required, as the model's standard "
        "price has a long-context tier (or leave this service tier out: it is then refused)"
    ]
    body["service_tiers"] = {"flex": {"input": 1, "output": 5, "long_context": long}}
    flex = price_for_tier(entry_of({"models": {"m": body}}), "flex")
    assert flex is not None and flex.long_context is not None
    # 300,000 flex tokens cross the flex tier's threshold: 300,000 x $4 + 10 x $15
    assert cost_micros(Usage(input_tokens=300_000, output_tokens=10), flex) == 1_200_150


SERVICE_TIER_PROBLEMS = [
    (["priority"], "models.m.service_tiers: must be a mapping of service tier"),
    (
        {"prority": {"input": 1, "output": 1}},
        "models.m.service_tiers.prority: unknown service tier",
    ),
    ({"priority": 3}, "models.m.service_tiers.priority: must be a mapping of prices (got 3)"),
    ({"priority": {"input": 1}}, "models.m.service_tiers.priority: needs output price(s)"),
    (
        {"priority": {"input": "x", "output": 1}},
        f"models.m.service_tiers.priority.input: {BAD_PRICE} (got 'x')",
    ),
    (
        {"priority": {"input": 1, "output": 1, "free": True}},
        "models.m.service_tiers.priority.free: unknown key",
    ),
    (
        {"flex": {"input": 1, "output": 1, "long_context": {"input": 2, "output": 2}}},
        "models.m.service_tiers.flex.long_context.above_input_tokens: required",
    ),
    ({"auto": {"input": 1, "output": 1}}, "models.m.service_tiers.auto: unknown service tier"),
]


@pytest.mark.parametrize(("tiers", "expected"), SERVICE_TIER_PROBLEMS)
def test_service_tier_problems_have_paths(tiers: object, expected: str) -> None:
    problems = problems_of(
        {"models": {"m": {**CHAT, "input": 2, "output": 8, "service_tiers": tiers}}}
    )
    assert len(problems) == 1 and problems[0].startswith("doc0.yaml: "), problems
    assert expected in problems[0], problems


def test_every_problem_of_the_new_fields_reported_at_once() -> None:
    doc = {
        "models": {
            "a": {**CHAT, "input": 2, "output": 8, "long_context": {"input": 4}},
            "b": {**CHAT, "input": 2, "output": 8, "service_tiers": {"flex": {"output": 1}}},
            "c": {**CLAUDE, "free": True, "long_context": {"above_input_tokens": 1, "input": 1}},
            "d": {**CLAUDE, "input": 1, "output": 5, "cache_write_1h": None},
        }
    }
    assert problems_of(doc) == [
        "doc0.yaml: models.a.long_context.above_input_tokens: required",
        f"doc0.yaml: models.d.cache_write_1h: {BAD_PRICE} (got None)",
        "doc0.yaml: models.b.service_tiers.flex: needs input price(s)",
        "doc0.yaml: models.c: free: true conflicts with prices (long_context)",
    ]


def test_operator_files_replace_tiers_and_free_drops_them() -> None:
    long = {"above_input_tokens": 100, "input": 4, "output": 15}
    priority = {"input": 4, "output": 20, "long_context": long}
    shipped = {
        "models": {
            "m": {
                **CHAT,
                "input": 2,
                "output": 10,
                "long_context": long,
                "service_tiers": {"priority": priority},
            }
        }
    }
    # A nested field is replaced whole; the other fields stay.
    override = {
        "models": {"m": {"long_context": {"above_input_tokens": 50, "input": 3, "output": 12}}}
    }
    entry = entry_of(shipped, override)
    assert entry.price.long_context is not None
    assert entry.price.long_context.above_input_tokens == 50
    assert entry.price.long_context.price.cached_input == usd_to_micros("3")
    assert [name for name, _ in entry.service_tiers] == ["priority"]
    # free: true drops every inherited price, tiers included: free in any tier, at any length.
    free = entry_of(shipped, {"models": {"m": {"free": True}}})
    assert free.price == Price.free() and free.service_tiers == ()
    assert price_for_tier(free, "priority") == Price.free() and free.prices_long_context


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"context_window": 1_000_000}, True),  # the whole 1M window at one price
        ({"context_window": 200_000}, False),  # a beta would unlock prompts with unknown prices
        ({}, False),  # window unknown
        ({"long_context": {"above_input_tokens": 200_000, "input": 6, "output": 22.5}}, True),
    ],
)
def test_prices_long_context(fields: dict[str, Any], expected: bool) -> None:
    entry = entry_of({"models": {"m": {**CLAUDE, "input": 3, "output": 15, **fields}}})
    assert entry.prices_long_context is expected


# --- shipped values ----------------------------------------------------------------------------

# Models without an official context window or image maximum: the field is left out, not guessed.
NO_CONTEXT_WINDOW = {
    *("gpt-5", "gpt-4.1", "gpt-4.1-mini", "gpt-4o", "gpt-4o-mini", "o3"),
    *("gpt-3.5-turbo-instruct", "babbage-002", "davinci-002"),
    *("text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002"),
    *("claude-opus-4-7", "o4-mini", "gpt-4o-mini-search-preview"),
    *("azure/gpt-4o", "azure/gpt-4o-mini", "azure/gpt-4.1", "azure/gpt-4.1-mini"),
    "azure/text-embedding-3-small",
}
NO_IMAGE_MAXIMUM = {
    *("gpt-6.2-sol", "gpt-6.1-sol", "gpt-6-sol", "gpt-6.1-terra", "gpt-6-luna"),
    *("gpt-3.5-turbo-instruct", "babbage-002", "davinci-002", "gpt-4o-mini-search-preview"),
    *("text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002"),
    "azure/text-embedding-3-small",
    # Gemini tiles a large image into 258-token tiles with no published maximum.
    *("gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"),
    *("vertex-gemini-2.5-pro", "vertex-gemini-2.5-flash"),
}


def test_shipped_bound_fields(shipped: Catalog) -> None:
    names = {e.name for e in shipped.models()}
    assert names >= NO_CONTEXT_WINDOW | NO_IMAGE_MAXIMUM
    for entry in shipped.models():
        assert (entry.context_window is None) is (entry.name in NO_CONTEXT_WINDOW), entry.name
        assert (entry.image_input_tokens is None) is (entry.name in NO_IMAGE_MAXIMUM), entry.name
        if entry.context_window is not None:
            assert entry.context_window > entry.max_output_tokens, entry.name
            image = entry.image_input_tokens or 0
            assert image <= entry.context_window, entry.name


@pytest.mark.parametrize(
    ("name", "window", "image"),
    [
        ("gpt-6.2-sol", 1_050_000, None),
        ("gpt-5.6-luna", 1_050_000, 1_050_000),
        ("gpt-5.4-nano", 400_000, 12_000),
        ("gpt-4o-mini", None, 48_169),
        ("gpt-4o", None, 1_445),
        ("claude-opus-4-5", 200_000, 1_568),
        ("claude-sonnet-4-5", 1_000_000, 1_568),
        ("claude-opus-5-5", 1_000_000, 4_784),
        ("claude-haiku-4-5", 200_000, 1_568),
    ],
)
def test_shipped_bound_values(shipped: Catalog, name: str, window: int, image: int) -> None:
    entry = shipped.lookup(name)
    assert entry is not None
    assert (entry.context_window, entry.image_input_tokens) == (window, image)


# (model, threshold, input, cached_input, cache_write, 1h write, output) of the long-context tier
SHIPPED_LONG_CONTEXT = [
    ("gpt-6.2-sol", 272_000, "4", "0.20", "5", "5", "15"),
    ("gpt-6.1-sol", 272_000, "4", "0.20", "5", "5", "15"),
    ("gpt-6-sol", 272_000, "4", "0.40", "5", "5", "15"),
    ("gpt-6.1-terra", 272_000, "2", "0.10", "2.50", "2.50", "7.50"),
    ("gpt-6-luna", 272_000, "0.20", "0.02", "0.25", "0.25", "0.75"),
    ("gpt-5.6-luna", 272_000, "0.40", "0.04", "0.50", "0.50", "1.80"),
    ("claude-sonnet-4-5", 200_000, "6", "0.60", "7.50", "12", "22.50"),
    ("claude-haiku-5-5", 100_000, "0.50", "0.50", "0.625", "1", "2.50"),
    ("gemini-2.5-pro", 200_000, "2.50", "0.25", "2.50", "2.50", "15"),
    ("vertex-gemini-2.5-pro", 200_000, "2.50", "0.25", "2.50", "2.50", "15"),
]


@pytest.mark.parametrize(
    ("name", "above", "inp", "cached", "write", "write_1h", "out"), SHIPPED_LONG_CONTEXT
)
def test_shipped_long_context_tiers(
    shipped: Catalog,
    name: str,
    above: int,
    inp: str,
    cached: str,
    write: str,
    write_1h: str,
    out: str,
) -> None:
    entry = shipped.lookup(name)
    assert entry is not None and entry.prices_long_context
    long = entry.price.long_context
    assert long is not None and long.above_input_tokens == above
    assert rates(long.price) == usd(inp, cached, write, write_1h, out, out)
    # Long prompts never cost less per token than short ones.
    assert all(t >= b for t, b in zip(rates(long.price), rates(entry.price), strict=True))


def test_only_the_listed_models_have_long_context_tiers(shipped: Catalog) -> None:
    tiered = {e.name for e in shipped.models() if e.price.long_context is not None}
    assert tiered == {row[0] for row in SHIPPED_LONG_CONTEXT}


def test_a_long_prompt_on_a_shipped_model_costs_the_tier_price(shipped: Catalog) -> None:
    entry = shipped.lookup("gpt-6.2-sol")
    assert entry is not None
    # 300,000 uncached + 100,000 cached input, 2,000 output: all at the >272K rates.
    # 300,000 x $4 = 1,200,000 + 100,000 x $0.20 = 20,000 + 2,000 x $15 = 30,000
    usage = Usage(input_tokens=300_000, cached_input_tokens=100_000, output_tokens=2000)
    assert cost_micros(usage, entry.price) == 1_250_000
    assert worst_case_micros(400_000, 2000, entry.price) >= 1_250_000
    # The same request under the threshold is billed at the base rates.
    short = Usage(input_tokens=172_000, cached_input_tokens=100_000, output_tokens=2000)
    assert cost_micros(short, entry.price) == 344_000 + 10_000 + 20_000


# (model, tier, input, cached_input, output)
SHIPPED_SERVICE_TIERS = [
    ("gpt-5", "priority", "2.50", "0.25", "20"),
    ("gpt-5-mini", "priority", "0.45", "0.045", "3.60"),
    ("gpt-4.1", "priority", "3.50", "0.875", "14"),
    ("gpt-4.1-mini", "priority", "0.70", "0.175", "2.80"),
    ("gpt-4o", "priority", "4.25", "2.125", "17"),
    ("gpt-4o-mini", "priority", "0.25", "0.125", "1"),
    ("o3", "priority", "3.50", "0.875", "14"),
    ("o4-mini", "priority", "2", "0.50", "8"),
    ("gpt-6-sol", "flex", "1", "0.10", "5"),
    ("gpt-6.1-sol", "flex", "1", "0.05", "5"),
    ("gpt-6.1-terra", "flex", "0.50", "0.025", "2.50"),
    ("gpt-6-luna", "flex", "0.05", "0.005", "0.25"),
]


@pytest.mark.parametrize(("name", "tier", "inp", "cached", "out"), SHIPPED_SERVICE_TIERS)
def test_shipped_service_tiers(
    shipped: Catalog, name: str, tier: str, inp: str, cached: str, out: str
) -> None:
    entry = shipped.lookup(name)
    assert entry is not None
    p = price_for_tier(entry, tier)
    assert p is not None and (p.input, p.cached_input, p.output) == usd(inp, cached, out)
    if entry.price.long_context is not None:  # flex above 272K: the standard long-context rates
        assert p.long_context == entry.price.long_context


def test_only_the_listed_service_tiers_are_priced(shipped: Catalog) -> None:
    listed = {(name, tier) for name, tier, *_ in SHIPPED_SERVICE_TIERS}
    for entry in shipped.models():
        for tier in ("priority", "flex", "scale"):
            priced = price_for_tier(entry, tier) is not None
            assert priced is ((entry.name, tier) in listed), (entry.name, tier)
        for tier in (None, "auto", "default"):
            assert price_for_tier(entry, tier) is entry.price


# Anthropic's pricing table lists the 1-hour write; the catalog's default (2x input) must match it.
OFFICIAL_ONE_HOUR = {
    **dict.fromkeys(("claude-fable-5-1", "claude-mythos-5-1", "claude-fable-5"), "20"),
    **dict.fromkeys(("claude-opus-5", "claude-opus-4-8", "claude-opus-4-7"), "10"),
    **dict.fromkeys(("claude-opus-4-6", "claude-opus-4-5"), "10"),
    **dict.fromkeys(("claude-sonnet-5", "claude-sonnet-5-5"), "4"),
    "claude-haiku-5-5": "0.20",
}


@pytest.mark.parametrize(("name", "write_1h"), sorted(OFFICIAL_ONE_HOUR.items()))
def test_shipped_one_hour_writes_match_the_official_table(
    shipped: Catalog, name: str, write_1h: str
) -> None:
    entry = shipped.lookup(name)
    assert entry is not None and entry.price.cache_write_1h == usd_to_micros(write_1h)
