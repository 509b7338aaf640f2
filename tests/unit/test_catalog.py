"""The price catalog: the shipped file, lookups, operator overrides and all-at-once validation."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path
from typing import Any

import pytest

from gateway_extproc.apis import Schema
from gateway_extproc.catalog.models import Catalog, ModelEntry, Price
from gateway_extproc.catalog.pricing import usd_to_micros
from gateway_extproc.errors import ConfigError


@pytest.fixture(scope="module")
def shipped() -> Catalog:
    return Catalog.load()


def catalog_of(*docs: Any) -> Catalog:
    return Catalog.from_documents([(f"doc{i}.yaml", doc) for i, doc in enumerate(docs)])


def problems_of(*docs: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        catalog_of(*docs)
    return info.value.problems


BAD_PRICE = "must be a number >= 0 with at most 6 decimal places"
CHAT = {"provider": "local", "schema": "openai", "max_output_tokens": 1000}


# --- the shipped catalog -----------------------------------------------------------------------

# The built-in providers the shipped catalog names.
PROVIDERS = ["openai", "anthropic", "gemini", "azure", "bedrock", "vertex"]
SHIPPED_MODELS = [
    *("gpt-6.2-sol", "gpt-6.1-sol", "gpt-6-sol", "gpt-6.1-terra", "gpt-6-luna"),
    *("gpt-5.6-luna", "gpt-5.4-nano", "gpt-5", "gpt-5-mini", "gpt-5-nano"),
    *("gpt-4.1", "gpt-4.1-mini", "gpt-4o", "gpt-4o-mini"),
    *("o3", "gpt-3.5-turbo-instruct", "babbage-002", "davinci-002"),
    *("text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002"),
    *("claude-fable-5-1", "claude-mythos-5-1", "claude-fable-5", "claude-mythos-5"),
    *("claude-opus-5-5", "claude-opus-5", "claude-opus-4-8", "claude-opus-4-7"),
    *("claude-opus-4-6", "claude-opus-4-5"),
    *("claude-sonnet-5-5", "claude-sonnet-5", "claude-sonnet-4-6", "claude-sonnet-4-5"),
    *("claude-haiku-5-5", "claude-haiku-4-5"),
    *("gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"),
    *("azure/gpt-4o", "azure/gpt-4o-mini", "azure/gpt-4.1", "azure/gpt-4.1-mini"),
    "azure/text-embedding-3-small",
    # Claude on Bedrock: named by their Bedrock ids (global and US inference profiles).
    *(
        "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
    ),
    *(
        "global.anthropic.claude-haiku-4-5-20251001-v1:0",
        "us.anthropic.claude-haiku-4-5-20251001-v1:0",
    ),
    *("vertex-claude-sonnet-4-6", "vertex-claude-haiku-4-5"),
    *("vertex-gemini-2.5-pro", "vertex-gemini-2.5-flash"),
]


def test_shipped_catalog_loads_with_date_and_expected_models(shipped: Catalog) -> None:
    assert isinstance(shipped.prices_as_of, datetime.date)
    assert sorted(e.name for e in shipped.models()) == sorted(SHIPPED_MODELS)
    assert [e.name for e in shipped.models()] == sorted(e.name for e in shipped.models())


def test_every_shipped_entry_is_priced_and_consistent(shipped: Catalog) -> None:
    for entry in shipped.models():
        assert not entry.free, entry.name  # list prices only; free is for self-hosted models
        assert entry.price.input > 0, entry.name
        assert entry.provider in PROVIDERS, entry.name
        if entry.provider == "vertex":  # Gemini and Claude models, each in its own API
            assert entry.schema in (Schema.GEMINI, Schema.ANTHROPIC), entry.name
        else:
            assert entry.schema is Schema({"azure": "openai"}.get(entry.provider, entry.provider))
        if entry.embedding:
            assert entry.price.output == 0 and entry.max_output_tokens == 0, entry.name
        else:
            assert entry.price.output > 0 and entry.max_output_tokens > 0, entry.name
        assert entry.price.cached_input <= entry.price.input, entry.name
    assert shipped.validate_providers(PROVIDERS) == []


# (model, input, output, cached_input, cache_write, cache_write_1h, cache_write_12h) in USD per 1M
# tokens. The 1-hour write defaults to twice input for Anthropic (its rule) and to cache_write for
# OpenAI; the 12-hour write (OpenAI only) is None unless listed (Price.with_12h_writes).
SHIPPED_PRICES = [
    ("gpt-6.2-sol", "2", "10", "0.10", "2.50", "2.50", "5"),
    ("gpt-6.1-terra", "1", "5", "0.05", "1.25", "1.25", None),
    ("gpt-6-luna", "0.10", "0.50", "0.01", "0.125", "0.125", None),
    ("gpt-5", "1.25", "10", "0.125", "1.25", "1.25", None),
    ("gpt-5-mini", "0.25", "2", "0.025", "0.25", "0.25", None),
    ("gpt-5-nano", "0.05", "0.40", "0.005", "0.05", "0.05", None),
    ("gpt-4.1", "2", "8", "0.50", "2", "2", None),
    ("gpt-4o", "2.50", "10", "1.25", "2.50", "2.50", None),
    ("gpt-4o-mini", "0.15", "0.60", "0.075", "0.15", "0.15", None),
    ("o3", "2", "8", "0.50", "2", "2", None),
    ("text-embedding-3-small", "0.02", "0", "0.02", "0.02", "0.02", None),
    ("claude-sonnet-4-5", "3", "15", "0.30", "3.75", "6", None),
    ("claude-sonnet-5-5", "2", "10", "0.10", "2.50", "4", None),
    ("claude-haiku-4-5", "1", "5", "0.10", "1.25", "2", None),
    ("claude-opus-5-5", "4", "20", "0.20", "5", "8", None),
    ("claude-fable-5-1", "10", "50", "0.25", "12.50", "20", None),
    # Bedrock: global profiles at Anthropic's rates, geographic ones 10% above.
    ("bedrock-claude-sonnet-4-5", "3", "15", "0.30", "3.75", "6", None),
    (
        "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "3.30",
        "16.50",
        "0.33",
        "4.125",
        "6.60",
        None,
    ),
    ("bedrock-claude-haiku-4-5", "1", "5", "0.10", "1.25", "2", None),
    ("us.anthropic.claude-haiku-4-5-20251001-v1:0", "1.10", "5.50", "0.11", "1.375", "2.20", None),
]


@pytest.mark.parametrize(
    ("name", "inp", "out", "cached", "write", "write_1h", "write_12h"), SHIPPED_PRICES
)
def test_shipped_prices(
    shipped: Catalog,
    name: str,
    inp: str,
    out: str,
    cached: str,
    write: str,
    write_1h: str,
    write_12h: str | None,
) -> None:
    entry = shipped.lookup(name)
    assert entry is not None
    as_pico = [usd_to_micros(x) for x in (inp, out, cached, write, out, write_1h)]
    expected = Price(
        *as_pico, cache_write_12h=None if write_12h is None else usd_to_micros(write_12h)
    )
    assert dataclasses.replace(entry.price, long_context=None) == expected


LOOKUPS = [
    ("gpt-4o", "gpt-4o"),  # exact
    ("gpt-4o-2024-08-06", "gpt-4o"),  # listed alias
    ("gpt-4o-2030-01-31", "gpt-4o"),  # OpenAI-style dated snapshot not listed
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
    ("gpt-4.1-mini-2030-12-01", "gpt-4.1-mini"),
    ("claude-sonnet-4-5", "claude-sonnet-4-5"),
    ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),  # listed alias
    ("claude-sonnet-4-5-20300101", "claude-sonnet-4-5"),  # Anthropic-style dated snapshot
    ("claude-opus-4-5-20251101", "claude-opus-4-5"),  # listed alias
    ("gpt-5-nano-2025-08-07", "gpt-5-nano"),  # listed alias
    ("claude-opus-4-6-20300101", "claude-opus-4-6"),  # Anthropic-style dated, no listed alias
    ("gpt-6.2-sol-2030-01-01", "gpt-6.2-sol"),  # dotted name, OpenAI-style dated
    ("gpt-4o-2024-13-01", None),  # not a date
    ("gpt-4o-20241301", None),
    ("gpt-4o-2024-08-6", None),
    ("gpt-4o-2024-0806", None),
    ("claude-sonnet-4-5-2025092", None),
    ("-2024-08-06", None),
    ("unknown-model", None),
    ("unknown-model-2024-08-06", None),
    ("GPT-4O", None),  # names are exact
    ("", None),
]


@pytest.mark.parametrize(("asked", "expected"), LOOKUPS)
def test_lookup(shipped: Catalog, asked: str, expected: str | None) -> None:
    entry = shipped.lookup(asked)
    assert (entry.name if entry else None) == expected


def test_exact_dated_name_beats_the_dated_fallback() -> None:
    # A snapshot priced differently from its undated model is listed as its own model (the shipped
    # catalog had gpt-4o-2024-05-13 until OpenAI shut it down on 2026-10-23).
    doc = {
        "models": {
            "gpt-4o": {**CHAT, "input": "2.50", "output": 10},
            "gpt-4o-2024-05-13": {**CHAT, "input": 5, "output": 15},
        }
    }
    catalog = catalog_of(doc)
    dearer = catalog.lookup("gpt-4o-2024-05-13")
    assert dearer is not None and dearer.name == "gpt-4o-2024-05-13"
    assert dearer.price.input == 5_000_000
    fallback = catalog.lookup("gpt-4o-2024-08-06")
    assert fallback is not None and fallback.name == "gpt-4o"


def test_every_name_and_alias_resolves_to_its_model(shipped: Catalog) -> None:
    for entry in shipped.models():
        for name in (entry.name, *entry.aliases):
            assert shipped.lookup(name) is entry


# --- defaults and free models ------------------------------------------------------------------


def test_price_defaults() -> None:
    catalog = catalog_of({"models": {"m": {**CHAT, "input": 1, "output": "2.5"}}})
    entry = catalog.lookup("m")
    assert entry == ModelEntry(
        name="m",
        provider="local",
        schema=Schema.OPENAI,
        max_output_tokens=1000,
        price=Price(1_000_000, 2_500_000, 1_000_000, 1_000_000, 2_500_000, 1_000_000),
    )
    assert catalog.prices_as_of is None


def test_free_model_is_explicit_zero() -> None:
    entry = catalog_of({"models": {"llama": {**CHAT, "free": True}}}).lookup("llama")
    assert entry is not None and entry.free and entry.price == Price.free()


def test_embedding_needs_only_input() -> None:
    doc = {
        "models": {"emb": {"provider": "p", "schema": "openai", "embedding": True, "input": 0.1}}
    }
    entry = catalog_of(doc).lookup("emb")
    assert entry is not None and entry.embedding
    assert (entry.price.input, entry.price.output, entry.max_output_tokens) == (100_000, 0, 0)


# OpenAI's reasoning models: o-series, GPT-5.x and GPT-6.x (reasoning tokens billed as output, never
# streamed). Claude models think only when a request enables `thinking`. Gemini 2.5 Pro and Flash
# think by default and show none of it (`thoughtsTokenCount` billed as output); Flash-Lite thinks
# only with a thinking budget set in the request.
HIDDEN_REASONING = {
    *("gpt-6.2-sol", "gpt-6.1-sol", "gpt-6-sol", "gpt-6.1-terra", "gpt-6-luna"),
    *("gpt-5.6-luna", "gpt-5.4-nano", "gpt-5", "gpt-5-mini", "gpt-5-nano", "o3"),
    *("gemini-2.5-pro", "gemini-2.5-flash"),
    *("vertex-gemini-2.5-pro", "vertex-gemini-2.5-flash"),
}


def test_the_shipped_reasoning_models_say_their_reasoning_is_hidden(shipped: Catalog) -> None:
    flagged = {entry.name for entry in shipped.models() if entry.hidden_reasoning}
    assert flagged == HIDDEN_REASONING


def test_hidden_reasoning_is_an_operator_field_defaulting_to_false() -> None:
    doc = {"models": {"r": {**CHAT, "input": 1, "output": 4, "hidden_reasoning": True}}}
    catalog = catalog_of({"models": {"plain": {**CHAT, "input": 1, "output": 1}}}, doc)
    assert [(e.name, e.hidden_reasoning) for e in catalog.models()] == [
        ("plain", False),
        ("r", True),
    ]
    unflagged = catalog_of(doc, {"models": {"r": {"hidden_reasoning": False}}}).lookup("r")
    assert unflagged is not None and unflagged.hidden_reasoning is False


def test_reasoning_price_when_it_differs() -> None:
    doc = {"models": {"r": {**CHAT, "input": 1, "output": 4, "reasoning": 8}}}
    entry = catalog_of(doc).lookup("r")
    assert entry is not None and (entry.price.output, entry.price.reasoning) == (
        4 * 10**6,
        8 * 10**6,
    )


@pytest.mark.parametrize(
    ("raw", "pico"),
    [(0.075, 75_000), ("0.075", 75_000), (0.0375, 37_500), (3, 3_000_000), (0, 0), ("1e2", 10**8)],
)
def test_price_values_accepted(raw: object, pico: int) -> None:
    entry = catalog_of({"models": {"m": {**CHAT, "input": raw, "output": 1}}}).lookup("m")
    assert entry is not None and entry.price.input == pico


@pytest.mark.parametrize(
    "raw", [-1, -0.5, "abc", True, float("nan"), float("inf"), "1e-7", 0.0000001, None, [1], ""]
)
def test_price_values_rejected(raw: object) -> None:
    assert problems_of({"models": {"m": {**CHAT, "input": raw, "output": 1}}}) == [
        f"doc0.yaml: models.m.input: {BAD_PRICE} (got {raw!r})"
    ]


# --- operator files ----------------------------------------------------------------------------


def test_operator_files_merge_fields_add_and_remove(tmp_path: Path) -> None:
    first = tmp_path / "first.yaml"
    first.write_text(
        'prices_as_of: "2026-01-15"\n'
        "models:\n"
        "  gpt-4o: {input: 2.25}\n"  # field-level: output and cached_input stay
        "  o3: {remove: true}\n"
        "  llama-3-70b: {provider: vllm, schema: openai, max_output_tokens: 8192, free: true}\n"
        "  claude-haiku-4-5: {free: true}\n"  # free drops the inherited prices
    )
    second = tmp_path / "second.yaml"
    second.write_text("models:\n  gpt-4o: {output: 9.5, aliases: [my-4o]}\n")
    catalog = Catalog.load([first, second])

    assert catalog.prices_as_of == datetime.date(2026, 1, 15)
    gpt_4o = catalog.lookup("my-4o")
    assert gpt_4o is not None and gpt_4o.name == "gpt-4o"
    assert gpt_4o.price == Price(2_250_000, 9_500_000, 1_250_000, 2_250_000, 9_500_000, 2_250_000)
    assert gpt_4o.max_output_tokens == 16_384 and gpt_4o.provider == "openai"
    assert gpt_4o.aliases == ("my-4o",)  # aliases are replaced, not appended
    assert catalog.lookup("gpt-4o-2024-08-06") is gpt_4o  # still, by the dated fallback
    for gone in ("o3", "o3-2025-04-16", "o3-2030-01-01"):
        assert catalog.lookup(gone) is None
    llama = catalog.lookup("llama-3-70b")
    assert llama is not None and llama.free and llama.price == Price.free()
    haiku = catalog.lookup("claude-haiku-4-5-20251001")
    assert haiku is not None and haiku.free and haiku.price == Price.free()
    assert catalog.validate_providers(PROVIDERS) == [
        f"{first}: models.llama-3-70b.provider: 'vllm' is not a configured provider "
        "(known: anthropic, azure, bedrock, gemini, openai, vertex)"
    ]


def test_removed_model_can_be_added_again() -> None:
    base = {"models": {"m": {**CHAT, "input": 1, "output": 1, "aliases": ["m-latest"]}}}
    again = {"models": {"m": {**CHAT, "free": True}}}
    entry = catalog_of(base, {"models": {"m": {"remove": True}}}, again).lookup("m")
    assert entry is not None and entry.free and entry.aliases == ()


def test_empty_operator_documents_change_nothing() -> None:
    base = {"models": {"m": {**CHAT, "input": 1, "output": 1}}}
    assert [e.name for e in catalog_of(base, None, {}, {"models": None}).models()] == ["m"]


def test_load_reports_unreadable_and_invalid_files_together(tmp_path: Path) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("models: [unclosed\n")
    duplicate = tmp_path / "dup.yaml"
    duplicate.write_text("models:\n  gpt-4o: {input: 1}\n  gpt-4o: {input: 2}\n")
    typo = tmp_path / "typo.yaml"
    typo.write_text("models:\n  gpt-4o: {inptu: 1}\n")
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as info:
        Catalog.load([bad_yaml, missing, duplicate, typo])
    problems = info.value.problems
    assert len(problems) == 4, problems
    assert problems[0].startswith(f"{bad_yaml}: invalid YAML: ")
    assert problems[1] == f"{missing}: cannot read: No such file or directory"
    assert problems[2].startswith(f"{duplicate}: invalid YAML: ")
    assert "found duplicate key 'gpt-4o'" in problems[2]
    assert problems[3] == f"{typo}: models.gpt-4o.inptu: unknown key (did you mean 'input'?)"


# --- validation: every problem at once ---------------------------------------------------------


def test_every_validation_error_reported_at_once() -> None:
    base = {
        "prices_as_of": "2025-11-01",
        "currency": "USD",
        "models": {
            "good": {**CHAT, "input": 1, "output": 2, "aliases": ["good-latest"]},
            "taken": {**CHAT, "input": 1, "output": 2},
        },
    }
    operator = {
        "prices_as_of": "Nov 2025",
        "currency": "EUR",
        "modles": {},
        "models": {
            "good": {"input": "abc"},
            "unpriced": {**CHAT},
            "half-priced": {**CHAT, "input": 1},
            "typo": {**CHAT, "inptu": 1, "output": 2},
            "bad-schema": {**CHAT, "schema": "vertex", "input": 1, "output": 2},
            "zero-max": {**CHAT, "max_output_tokens": 0, "input": 1, "output": 2},
            "bool-max": {**CHAT, "max_output_tokens": True, "input": 1, "output": 2},
            "no-fields": {"input": 1, "output": 2},
            "free-and-priced": {**CHAT, "free": True, "output": 2},
            "free-yes": {**CHAT, "free": "yes"},
            "negative": {**CHAT, "input": -1, "output": 2},
            "precise": {**CHAT, "input": "0.0000001", "output": 2},
            "dup-alias": {**CHAT, "input": 1, "output": 2, "aliases": ["good-latest"]},
            "alias-name": {**CHAT, "input": 1, "output": 2, "aliases": ["taken"]},
            "self-alias": {**CHAT, "input": 1, "output": 2, "aliases": ["x", "self-alias", "x"]},
            "bad-aliases": {**CHAT, "input": 1, "output": 2, "aliases": "good"},
            "bad-provider": {**CHAT, "provider": "", "input": 1, "output": 2},
            "remove-and-more": {"remove": True, "input": 1},
            "never-existed": {"remove": True},
            "not-a-mapping": "gpt-4o",
            5: {**CHAT, "input": 1, "output": 2},
        },
    }
    problems = problems_of(base, operator)
    op = "doc1.yaml"
    expected = [
        f"{op}: prices_as_of: must be a date YYYY-MM-DD (got 'Nov 2025')",
        f"{op}: currency: must be USD (got 'EUR')",
        f"{op}: modles: unknown key (did you mean 'models'?)",
        f"{op}: models.good.input: must be a number >= 0 with at most 6 decimal places (got 'abc')",
        f"{op}: models.unpriced: needs input and output prices, or free: true",
        f"{op}: models.half-priced: needs input and output prices, or free: true",
        f"{op}: models.typo.inptu: unknown key (did you mean 'input'?)",
        f"{op}: models.typo: needs input and output prices, or free: true",
        f"{op}: models.bad-schema.schema: must be one of openai, anthropic, gemini, bedrock "
        "(got 'vertex')",
        f"{op}: models.zero-max.max_output_tokens: must be a positive integer (got 0)",
        f"{op}: models.bool-max.max_output_tokens: must be a positive integer (got True)",
        f"{op}: models.no-fields.provider: required",
        f"{op}: models.no-fields.schema: required",
        f"{op}: models.no-fields.max_output_tokens: required",
        f"{op}: models.free-and-priced: free: true conflicts with prices (output)",
        f"{op}: models.free-yes.free: must be true or false (got 'yes')",
        f"{op}: models.negative.input: {BAD_PRICE} (got -1)",
        f"{op}: models.precise.input: must be a number >= 0 with at most 6 decimal places "
        "(got '0.0000001')",
        f"{op}: models.dup-alias.aliases[0]: 'good-latest' is already an alias of good",
        f"{op}: models.alias-name.aliases[0]: 'taken' is already the name of a model (doc0.yaml)",
        f"{op}: models.self-alias.aliases[1]: 'self-alias' is the model's own name",
        f"{op}: models.self-alias.aliases[2]: 'x' is listed twice",
        f"{op}: models.bad-aliases.aliases: must be a list of model names (got 'good')",
        f"{op}: models.bad-provider.provider: must be a non-empty string without surrounding "
        "spaces (got '')",
        f"{op}: models.remove-and-more.remove: cannot be combined with other fields",
        f"{op}: models.never-existed.remove: no such model in an earlier catalog",
        f"{op}: models.not-a-mapping: must be a mapping of model fields (got 'gpt-4o')",
        f"{op}: models: model name 5: must be a non-empty string without surrounding spaces",
    ]
    missing = [p for p in expected if p not in problems]
    unexpected = [p for p in problems if p not in expected]
    assert (missing, unexpected) == ([], [])
    assert len(problems) == len(expected)


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ([], "doc0.yaml: must be a mapping with keys prices_as_of, currency, models"),
        ({"models": []}, "doc0.yaml: models: must be a mapping of model name to fields"),
        ({"prices_as_of": "2025-13-01"}, "doc0.yaml: prices_as_of: must be a date YYYY-MM-DD"),
        ({"models": {" m": CHAT}}, "doc0.yaml: models: model name ' m': must be a non-empty"),
        (
            {"models": {"e": {"provider": "p", "schema": "openai", "embedding": True}}},
            "doc0.yaml: models.e: needs an input price, or free: true",
        ),
        (
            {"models": {"m": {**CHAT, "input": 1, "output": 1, "aliases": ["ok", 3]}}},
            "doc0.yaml: models.m.aliases: must be a list of model names; each must be",
        ),
        ({"models": {"m": {**CHAT, "input": 1, "output": 1, "embedding": 1}}}, "embedding: must"),
        (
            {"models": {"m": {**CHAT, "input": 1, "output": 1, "hidden_reasoning": "yes"}}},
            "doc0.yaml: models.m.hidden_reasoning: must be true or false",
        ),
        ({"models": {"m": {**CHAT, "input": 1, "output": 1, "max_output_tokens": 1.5}}}, "max_"),
    ],
)
def test_single_problems(doc: object, problem: str) -> None:
    problems = problems_of(doc)
    assert len(problems) == 1 and problem in problems[0], problems


def test_yaml_date_objects_are_accepted() -> None:
    catalog = catalog_of({"prices_as_of": datetime.date(2025, 11, 1)})
    assert catalog.prices_as_of == datetime.date(2025, 11, 1)
    assert problems_of({"prices_as_of": datetime.datetime(2025, 11, 1, 12, 0)})


def test_constructor_rejects_ambiguous_names() -> None:
    one = ModelEntry("a", "p", Schema.OPENAI, 1, Price.free(), free=True, aliases=("b",))
    two = ModelEntry("b", "p", Schema.OPENAI, 1, Price.free(), free=True)
    with pytest.raises(ValueError, match="more than one model"):
        Catalog([one, two])
