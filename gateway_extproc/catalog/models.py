"""The model price catalog: which models exist, who serves them, and what they cost.

The packaged `catalog.yaml` is loaded first, then each operator file in order. An operator file
may add models, override any field of an existing model (field-level merge), drop a model with
`remove: true`, and set its own `prices_as_of`. All documents are validated together and every
problem is reported at once, prefixed by its file and path
(`catalog.yaml: models.gpt-4o.input: must be a number ...`).

A model is priced (`input` and `output`; embedding models only `input`) or explicitly
`free: true` (self-hosted, zero price by policy). Nothing is ever silently $0. The price fields -
flat ones, the 1-hour cache write, `long_context` and `service_tiers` - are parsed and defaulted
in `prices`.

Lookups are O(1) dict reads: exact name, then alias, then a dated snapshot's undated name
(`gpt-4o-2024-08-06` -> `gpt-4o`, `claude-3-5-haiku-20241022` -> `claude-3-5-haiku`).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import importlib.resources
import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from gateway_extproc.apis import Schema
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
from gateway_extproc.errors import ConfigError

__all__ = ["PACKAGED_CATALOG", "Catalog", "ModelEntry", "Price"]

PACKAGED_CATALOG = "catalog.yaml"
# The window Anthropic's `context-1m` betas open; a model whose catalog window is this large prices
# such prompts at its listed (or long-context tier) prices.
LONG_CONTEXT_BETA_TOKENS = 1_000_000

# A trailing snapshot date: OpenAI `-YYYY-MM-DD` or Anthropic `-YYYYMMDD`.
_DATED = re.compile(
    r"(?P<base>.+)-20\d\d(?:-(?:0[1-9]|1[0-2])-|0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
)
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_NAME_RULE = "must be a non-empty string without surrounding spaces"
_TOP_KEYS = ("prices_as_of", "currency", "models")


@dataclasses.dataclass(frozen=True, slots=True)
class ModelEntry:
    """One catalog model, fully defaulted and validated."""

    name: str
    provider: str  # a provider name in the gateway config
    schema: Schema
    max_output_tokens: int  # 0 for embedding models (they produce no output)
    price: Price
    free: bool = False
    embedding: bool = False
    aliases: tuple[str, ...] = ()
    # Bounds for worst-case budget reservations (see cost/bounds.py); None: not known.
    context_window: int | None = None  # input + output tokens the model accepts at most
    image_input_tokens: int | None = None  # the most one image part can cost, in input tokens
    default_max_output_tokens: int | None = None  # cap injected when a request sets none
    # Prices of a requested `service_tier` other than the standard one (see pricing.price_for_tier)
    service_tiers: tuple[tuple[str, Price], ...] = ()
    # The model reasons in tokens its responses never show (billed as output): an ending whose
    # usage is not read is charged its whole output limit (endings.py).
    hidden_reasoning: bool = False

    @property
    def prices_long_context(self) -> bool:
        """Whether the catalog can price a request that asks for a long-context beta (Anthropic
        `anthropic-beta: context-1m-...`): the model is free by policy, has a long-context price
        tier, or its context window already holds 1M tokens at its one price (Anthropic: "Claude
        Opus 4.6 and Sonnet 4.6 include the full 1M token context window at standard pricing").
        Otherwise the beta would unlock prompts whose price the catalog does not know."""
        if self.free or self.price.long_context is not None:
            return True
        return self.context_window is not None and self.context_window >= LONG_CONTEXT_BETA_TOKENS


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


class _Merger:
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


class Catalog:
    """The merged, validated catalog. Immutable; a reload builds a new one."""

    def __init__(
        self,
        entries: Iterable[ModelEntry],
        prices_as_of: datetime.date | None = None,
        sources: Mapping[str, str] | None = None,
    ) -> None:
        self.prices_as_of = prices_as_of
        self._entries = {entry.name: entry for entry in sorted(entries, key=lambda e: e.name)}
        self._sources = dict(sources or {})  # model name -> document that last touched it
        self._index: dict[str, ModelEntry] = dict(self._entries)
        for entry in self._entries.values():
            for alias in entry.aliases:
                if self._index.setdefault(alias, entry) is not entry:
                    raise ValueError(f"name {alias!r} refers to more than one model")

    @classmethod
    def load(cls, extra_paths: Sequence[Path] = ()) -> Catalog:
        """The packaged catalog, then each operator file in order. Raises ConfigError."""
        packaged = importlib.resources.files("gateway_extproc.catalog").joinpath(PACKAGED_CATALOG)
        readers: list[tuple[str, Callable[[], str]]] = [
            (PACKAGED_CATALOG, functools.partial(packaged.read_text, encoding="utf-8")),
        ]
        readers += [
            (str(p), functools.partial(Path(p).read_text, encoding="utf-8")) for p in extra_paths
        ]
        docs: list[tuple[str, object]] = []
        problems: list[str] = []
        for source, read in readers:
            try:
                docs.append((source, yaml.load(read(), Loader=_UniqueKeyLoader)))
            except OSError as exc:
                problems.append(f"{source}: cannot read: {exc.strerror or exc}")
            except yaml.YAMLError as exc:
                problems.append(f"{source}: invalid YAML: {' '.join(str(exc).split())}")
        try:
            catalog = cls.from_documents(docs)
        except ConfigError as exc:
            raise ConfigError(problems + exc.problems) from None
        if problems:
            raise ConfigError(problems)
        return catalog

    @classmethod
    def from_documents(cls, docs: Sequence[tuple[str, object]]) -> Catalog:
        """Merge parsed documents `(source label, YAML value)` in order. Raises ConfigError."""
        merger = _Merger()
        for source, doc in docs:
            merger.document(source, doc)
        entries = merger.entries()
        if merger.problems:
            raise ConfigError(merger.problems)
        sources = {name: draft.source for name, draft in merger.drafts.items()}
        return cls(entries, merger.prices_as_of, sources)

    def lookup(self, model: str) -> ModelEntry | None:
        """Exact name, then alias, then the undated name of a dated snapshot; None if unknown."""
        entry = self._index.get(model)
        if entry is None and (dated := _DATED.fullmatch(model)) is not None:
            entry = self._index.get(dated["base"])
        return entry

    def models(self) -> list[ModelEntry]:
        """Every model, sorted by name."""
        return list(self._entries.values())

    def without_shipped_models_of(self, providers: Iterable[str]) -> Catalog:
        """Drop the shipped models of providers the operator removed (`providers: {X: null}`).
        Operator-file models are kept, so a typo in their provider is still reported."""
        gone = set(providers)
        kept = [
            e
            for e in self._entries.values()
            if not (e.provider in gone and self._sources.get(e.name) == PACKAGED_CATALOG)
        ]
        return Catalog(kept, self.prices_as_of, self._sources)

    def validate_providers(self, known: Iterable[str]) -> list[str]:
        """Problems for models whose provider is not one of `known` (the gateway's providers)."""
        names = set(known)
        listed = ", ".join(sorted(names)) or "none configured"
        return [
            f"{self._sources.get(entry.name, 'catalog')}: models.{entry.name}.provider: "
            f"{entry.provider!r} is not a configured provider (known: {listed})"
            for entry in self.models()
            if entry.provider not in names
        ]


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys instead of silently keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            if isinstance(key, Hashable):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)
