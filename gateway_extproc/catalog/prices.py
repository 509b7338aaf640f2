"""The price fields of a catalog model: parsed from YAML, checked, and defaulted into a `Price`.

Flat fields are USD per 1M tokens (`input`, `output`, `cached_input`, `cache_write`,
`cache_write_1h`, `cache_write_12h`, `reasoning`). Two nested fields hold more of the same:

    long_context:      # the whole request at these prices when its input exceeds the threshold
      above_input_tokens: 272000
      input: 4.00
      output: 15.00    # cached_input, cache_write, cache_write_1h, reasoning: optional
    service_tiers:     # prices of a requested `service_tier` (OpenAI priority / flex / scale)
      priority: {input: 4.00, cached_input: 0.20, output: 20.00}

Every level defaults like the model itself: `cached_input` and `cache_write` to its own `input`,
`reasoning` to its own `output`, `cache_write_1h` to twice its `input` (Anthropic's rule) for
`schema: anthropic` and to its own `cache_write` for `schema: openai` (OpenAI reports no 1-hour
writes; the default keeps them from raising the worst-case reservation). `cache_write_12h` is
OpenAI's 12-hour cache write (`schema: openai` only); unset, it stays None (see
`Price.with_12h_writes`: the level's `cache_write` where that carries no fee, else unknown).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from gateway_extproc.apis import Schema
from gateway_extproc.catalog.pricing import (
    CACHE_WRITE_1H_TIMES_INPUT,
    LongContext,
    Price,
    scaled_decimal,
)

PRICE_FIELDS = (
    "input",
    "output",
    "cached_input",
    "cache_write",
    "cache_write_1h",
    "cache_write_12h",
    "reasoning",
)
TIERED_FIELDS = ("long_context", "service_tiers")  # dropped with the prices by `free: true`
SERVICE_TIERS = ("priority", "flex", "scale")
_LONG_CONTEXT_KEYS = ("above_input_tokens", *PRICE_FIELDS)
_SERVICE_TIER_KEYS = (*PRICE_FIELDS, "long_context")


class FieldProblems(ValueError):
    """Problems inside a nested field, as (sub-path, message) pairs: the caller prefixes its own
    path, giving `models.m.service_tiers.priority.input: must be ...`."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{sub}: {msg}" for sub, msg in problems))


def parse_price(raw: object) -> int:
    try:
        pico = scaled_decimal(raw)  # USD per 1M tokens x 10^6 = pico-USD per token
    except ValueError:
        pico = -1
    if pico < 0:
        raise ValueError("must be a number >= 0 with at most 6 decimal places")
    return pico


def unknown_key(key: object, expected: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(key), list(expected), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"expected one of {', '.join(expected)}"
    return f"unknown key ({hint})"


def _mapping(raw: object, what: str) -> Mapping[Any, Any]:
    if not isinstance(raw, Mapping):
        raise FieldProblems([("", f"must be a mapping of {what} (got {raw!r})")])
    return raw


def parse_long_context(raw: object) -> dict[str, int]:
    """`{above_input_tokens: N, input: .., output: .., ...}`: the threshold and prices in pico."""
    body = _mapping(raw, "above_input_tokens and prices")
    parsed: dict[str, int] = {}
    problems: list[tuple[str, str]] = []
    for key, value in body.items():
        if key == "above_input_tokens":
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                problems.append((f".{key}", f"must be a positive integer (got {value!r})"))
            else:
                parsed[key] = value
        elif key in PRICE_FIELDS:
            try:
                parsed[key] = parse_price(value)
            except ValueError as exc:
                problems.append((f".{key}", f"{exc} (got {value!r})"))
        else:
            problems.append((f".{key}", unknown_key(key, _LONG_CONTEXT_KEYS)))
    if "above_input_tokens" not in body:
        problems.append((".above_input_tokens", "required"))
    if problems:
        raise FieldProblems(problems)
    return parsed


def parse_service_tiers(raw: object) -> dict[str, dict[str, Any]]:
    """`{priority: {input: .., output: .., long_context: {...}}, flex: {...}}`."""
    body = _mapping(raw, f"service tier ({', '.join(SERVICE_TIERS)}) to prices")
    parsed: dict[str, dict[str, Any]] = {}
    problems: list[tuple[str, str]] = []
    for tier, prices in body.items():
        if tier not in SERVICE_TIERS:
            problems.append(
                (f".{tier}", f"unknown service tier (expected one of {', '.join(SERVICE_TIERS)})")
            )
            continue
        if not isinstance(prices, Mapping):
            problems.append((f".{tier}", f"must be a mapping of prices (got {prices!r})"))
            continue
        fields: dict[str, Any] = {}
        for key, value in prices.items():
            try:
                if key == "long_context":
                    fields[key] = parse_long_context(value)
                elif key in PRICE_FIELDS:
                    fields[key] = parse_price(value)
                else:
                    problems.append((f".{tier}.{key}", unknown_key(key, _SERVICE_TIER_KEYS)))
            except FieldProblems as exc:
                problems += [(f".{tier}.{key}{sub}", msg) for sub, msg in exc.problems]
            except ValueError as exc:
                problems.append((f".{tier}.{key}", f"{exc} (got {value!r})"))
        parsed[str(tier)] = fields
    if problems:
        raise FieldProblems(problems)
    return parsed


class PriceBuilder:
    """Defaults parsed price fields into `Price` values, reporting what is missing with its path.

    `fields` holds the model's parsed fields (prices in pico, `long_context`, `service_tiers`).
    Problems are appended to `problems`; a method returns None when it reported one.
    """

    def __init__(self, schema: Schema, embedding: bool, problems: list[str]) -> None:
        self.schema = schema
        self.embedding = embedding
        self.problems = problems

    def price(self, path: str, fields: Mapping[str, Any]) -> Price | None:
        """The model's standard price (with its long-context tier, if any)."""
        return self._price(path, fields)

    def service_tiers(
        self, path: str, fields: Mapping[str, Any], standard: Price
    ) -> tuple[tuple[str, Price], ...] | None:
        tiers: list[tuple[str, Price]] = []
        before = len(self.problems)
        for name, tier_fields in sorted(fields.get("service_tiers", {}).items()):
            tier_path = f"{path}.service_tiers.{name}"
            price = self._price(tier_path, tier_fields)
            if price is None:
                continue
            if standard.long_context is not None and price.long_context is None:
                self.problems.append(
                    f"{tier_path}.long_context: required, as the model's standard price has a "
                    "long-context tier (or leave this service tier out: it is then refused)"
                )
                continue
            tiers.append((name, price))
        return tuple(tiers) if len(self.problems) == before else None

    def _price(self, path: str, f: Mapping[str, Any]) -> Price | None:
        needed = ("input",) if self.embedding else ("input", "output")
        missing = [key for key in needed if key not in f]
        if missing:
            self.problems.append(f"{path}: needs {' and '.join(missing)} price(s)")
            return None
        output = f.get("output", 0)
        cache_write = f.get("cache_write", f["input"])
        if self.schema in (Schema.ANTHROPIC, Schema.BEDROCK):  # Claude's 1-hour cache write
            write_1h = f.get("cache_write_1h", CACHE_WRITE_1H_TIMES_INPUT * f["input"])
        else:
            write_1h = f.get("cache_write_1h", cache_write)
        write_12h = f.get("cache_write_12h")
        if write_12h is not None and self.schema is not Schema.OPENAI:
            self.problems.append(
                f"{path}.cache_write_12h: OpenAI's 12-hour cache write, for schema: openai only "
                "(Anthropic's 1-hour write is cache_write_1h)"
            )
            return None
        long_context = None
        if (raw_tier := f.get("long_context")) is not None:  # never nested: the parser refuses
            tier_price = self._price(f"{path}.long_context", raw_tier)
            if tier_price is None:
                return None
            long_context = LongContext(raw_tier["above_input_tokens"], tier_price)
        return Price(
            input=f["input"],
            output=output,
            cached_input=f.get("cached_input", f["input"]),
            cache_write=cache_write,
            reasoning=f.get("reasoning", output),
            cache_write_1h=write_1h,
            long_context=long_context,
            cache_write_12h=write_12h,
        )
