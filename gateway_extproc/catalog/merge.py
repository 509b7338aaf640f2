"""Merging catalog documents into model entries, every problem collected with its path.

Each document may add models, override any field of an existing model (field-level merge), drop
a model with `remove: true`, and set its own `prices_as_of`. Each raw YAML field is parsed here
(the price fields in `prices`); a model is then checked as a whole (required fields, priced or
`free: true`) and every name and alias must resolve to exactly one model.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Callable, Mapping
from typing import Any

from gateway_extproc.apis import Schema
from gateway_extproc.catalog.entry import ModelEntry
from gateway_extproc.catalog.prices import (
    PRICE_FIELDS,
    TIERED_FIELDS,
    FieldProblems,
    PriceBuilder,
    parse_long_context,
    parse_price,
    parse_service_tiers,
    unknown_key,
)
from gateway_extproc.catalog.pricing import Price

__all__ = ["Merger"]

_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_NAME_RULE = "must be a non-empty string without surrounding spaces"
_TOP_KEYS = ("prices_as_of", "currency", "models")

# --- field parsers: raw YAML value -> typed value, or ValueError("must be ...") -----------------


def _text(raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip() or raw != raw.strip():
        raise ValueError(_NAME_RULE)
    return raw


def _schema(raw: object) -> Schema:
    if isinstance(raw, str) and raw in Schema.__members__.values():
        return Schema(raw)
    raise ValueError(f"must be one of {', '.join(s.value for s in Schema)}")


def _positive_int(raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw <= 0:
        raise ValueError("must be a positive integer")
    return raw


def _flag(raw: object) -> bool:
    if not isinstance(raw, bool):
        raise ValueError("must be true or false")
    return raw


def _aliases(raw: object) -> tuple[str, ...]:
    if not isinstance(raw, list):
        raise ValueError("must be a list of model names")
    try:
        return tuple(_text(alias) for alias in raw)
    except ValueError:
        raise ValueError(f"must be a list of model names; each {_NAME_RULE}") from None


def _date(raw: object) -> datetime.date:
    if isinstance(raw, datetime.date) and not isinstance(raw, datetime.datetime):
        return raw  # YAML parses an unquoted 2025-11-01 itself
    if isinstance(raw, str) and _ISO_DATE.fullmatch(raw):
        return datetime.date.fromisoformat(raw)  # ValueError for 2025-13-01
    raise ValueError("not a date")


_FIELDS: dict[str, Callable[[object], object]] = {
    "provider": _text,
    "schema": _schema,
    "max_output_tokens": _positive_int,
    "context_window": _positive_int,
    "image_input_tokens": _positive_int,
    "default_max_output_tokens": _positive_int,
    **{field: parse_price for field in PRICE_FIELDS},
    "long_context": parse_long_context,
    "service_tiers": parse_service_tiers,
    "free": _flag,
    "embedding": _flag,
    "hidden_reasoning": _flag,
    "aliases": _aliases,
    "remove": _flag,
}


@dataclasses.dataclass
class _Draft:
    """One model while documents are merged: each field's value and the source that set it."""

    source: str  # the last document that touched the model
    fields: dict[str, tuple[Any, str]] = dataclasses.field(default_factory=dict)
    failed: set[str] = dataclasses.field(default_factory=set)  # reported already; not "required"


class Merger:
    """Folds catalog documents into drafts, collecting every problem on the way."""

    def __init__(self) -> None:
        self.drafts: dict[str, _Draft] = {}
        self.prices_as_of: datetime.date | None = None
        self.problems: list[str] = []
        self.order: dict[str, int] = {}  # source label -> position of its document

    def document(self, source: str, doc: object) -> None:
        self.order.setdefault(source, len(self.order))
        if doc is None:
            return  # an empty operator file changes nothing
        if not isinstance(doc, Mapping):
            self.problems.append(f"{source}: must be a mapping with keys {', '.join(_TOP_KEYS)}")
            return
        for key in doc:
            if key not in _TOP_KEYS:
                self.problems.append(f"{source}: {key}: {unknown_key(key, _TOP_KEYS)}")
        if "prices_as_of" in doc:
            try:
                self.prices_as_of = _date(doc["prices_as_of"])
            except ValueError:
                got = doc["prices_as_of"]
                self.problems.append(
                    f"{source}: prices_as_of: must be a date YYYY-MM-DD (got {got!r})"
                )
        if doc.get("currency", "USD") != "USD":
            self.problems.append(f"{source}: currency: must be USD (got {doc['currency']!r})")
        models = doc.get("models")
        if models is None:
            return
        if not isinstance(models, Mapping):
            self.problems.append(f"{source}: models: must be a mapping of model name to fields")
            return
        for name, body in models.items():
            self._model(source, name, body)

    def _model(self, source: str, name: object, body: object) -> None:
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            self.problems.append(f"{source}: models: model name {name!r}: {_NAME_RULE}")
            return
        path = f"{source}: models.{name}"
        if not isinstance(body, Mapping):
            self.problems.append(f"{path}: must be a mapping of model fields (got {body!r})")
            return
        parsed: dict[str, Any] = {}
        failed: set[str] = set()
        for key, raw in body.items():
            parse = _FIELDS.get(key)
            if parse is None:
                self.problems.append(f"{path}.{key}: {unknown_key(key, _FIELDS)}")
                continue
            try:
                parsed[key] = parse(raw)
            except FieldProblems as exc:  # a nested field: each problem at its own path
                self.problems += [f"{path}.{key}{sub}: {msg}" for sub, msg in exc.problems]
                failed.add(key)
            except ValueError as exc:
                self.problems.append(f"{path}.{key}: {exc} (got {raw!r})")
                failed.add(key)
        if parsed.pop("remove", False):
            if len(body) > 1:
                self.problems.append(f"{path}.remove: cannot be combined with other fields")
            elif self.drafts.pop(name, None) is None:
                self.problems.append(f"{path}.remove: no such model in an earlier catalog")
            return
        draft = self.drafts.setdefault(name, _Draft(source))
        draft.source = source
        if parsed.get("free") is True:  # zero price by explicit policy replaces inherited prices
            for field in (*PRICE_FIELDS, *TIERED_FIELDS):
                draft.fields.pop(field, None)
        draft.fields.update((key, (value, source)) for key, value in parsed.items())
        draft.failed |= failed

    def entries(self) -> list[ModelEntry]:
        built = [self._build(name, draft) for name, draft in sorted(self.drafts.items())]
        entries = [entry for entry in built if entry is not None]
        self._check_names()
        return entries

    def _build(self, name: str, draft: _Draft) -> ModelEntry | None:
        before = len(self.problems)
        path = f"{draft.source}: models.{name}"
        f = {key: value for key, (value, _) in draft.fields.items()}
        embedding, free = f.get("embedding", False), f.get("free", False)
        required = ["provider", "schema"] + ([] if embedding else ["max_output_tokens"])
        for key in required:
            if key not in f and key not in draft.failed:
                self.problems.append(f"{path}.{key}: required")
        priced = [key for key in (*PRICE_FIELDS, *TIERED_FIELDS) if key in f]
        needed = ("input",) if embedding else ("input", "output")
        if free and priced:
            self.problems.append(f"{path}: free: true conflicts with prices ({', '.join(priced)})")
        elif (
            "free" not in draft.failed
            and not free
            and any(key not in f and key not in draft.failed for key in needed)
        ):
            wanted = "an input price" if embedding else "input and output prices"
            self.problems.append(f"{path}: needs {wanted}, or free: true")
        if draft.failed or len(self.problems) > before:
            return None
        price: Price | None = Price.free()
        tiers: tuple[tuple[str, Price], ...] | None = ()
        if not free:
            prices = PriceBuilder(f["schema"], embedding, self.problems)
            price = prices.price(path, f)
            tiers = None if price is None else prices.service_tiers(path, f, price)
        if price is None or tiers is None:
            return None
        return ModelEntry(
            name=name,
            provider=f["provider"],
            schema=f["schema"],
            max_output_tokens=f.get("max_output_tokens", 0),
            price=price,
            free=free,
            embedding=embedding,
            aliases=f.get("aliases", ()),
            context_window=f.get("context_window"),
            image_input_tokens=f.get("image_input_tokens"),
            default_max_output_tokens=f.get("default_max_output_tokens"),
            service_tiers=tiers,
            hidden_reasoning=f.get("hidden_reasoning", False),
        )

    def _check_names(self) -> None:
        """Every name and alias must resolve to exactly one model. Earlier documents win."""
        names = {name: draft.source for name, draft in self.drafts.items()}
        claims = sorted(
            (self.order.get(source, 0), name, aliases, source)
            for name, draft in self.drafts.items()
            for aliases, source in [draft.fields.get("aliases", ((), draft.source))]
        )
        alias_of: dict[str, str] = {}
        for _, name, aliases, source in claims:
            for i, alias in enumerate(aliases):
                if alias == name:
                    why = "is the model's own name"
                elif alias in names:
                    why = f"is already the name of a model ({names[alias]})"
                elif alias in alias_of:
                    other = alias_of[alias]
                    why = "is listed twice" if other == name else f"is already an alias of {other}"
                else:
                    alias_of[alias] = name
                    continue
                self.problems.append(f"{source}: models.{name}.aliases[{i}]: {alias!r} {why}")
