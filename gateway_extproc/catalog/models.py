"""The model price catalog: which models exist, who serves them, and what they cost.

The packaged `catalog.yaml` is loaded first, then each operator file in order. An operator file
may add models, override any field of an existing model (field-level merge), drop a model with
`remove: true`, and set its own `prices_as_of`. All documents are validated together and every
problem is reported at once, prefixed by its file and path
(`catalog.yaml: models.gpt-4o.input: must be a number ...`).

A model is priced (`input` and `output`; embedding models only `input`) or explicitly
`free: true` (self-hosted, zero price by policy). Nothing is ever silently $0. The documents are
merged and checked in `merge` (the price fields - flat ones, the 1-hour cache write,
`long_context` and `service_tiers` - are parsed and defaulted in `prices`); a model is a
`ModelEntry` (`entry`, exported here too: it is what every caller looks up).

Lookups are O(1) dict reads: exact name, then alias, then a dated snapshot's undated name
(`gpt-4o-2024-08-06` -> `gpt-4o`, `claude-3-5-haiku-20241022` -> `claude-3-5-haiku`).
"""

from __future__ import annotations

import datetime
import functools
import importlib.resources
import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from gateway_extproc.catalog.entry import ModelEntry
from gateway_extproc.catalog.merge import Merger
from gateway_extproc.catalog.pricing import Price
from gateway_extproc.errors import ConfigError

__all__ = ["PACKAGED_CATALOG", "Catalog", "ModelEntry", "Price"]

PACKAGED_CATALOG = "catalog.yaml"

# A trailing snapshot date: OpenAI `-YYYY-MM-DD` or Anthropic `-YYYYMMDD`.
_DATED = re.compile(
    r"(?P<base>.+)-20\d\d(?:-(?:0[1-9]|1[0-2])-|0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
)


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
        merger = Merger()
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
