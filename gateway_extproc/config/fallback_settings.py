"""The `fallback:` section read and validated: the chains against the catalog, the configured
providers and the translations the gateway performs (a target's API must be the head's or one
the head's can be translated to), the triggers, the first-byte timeout, the attempts, and
Envoy's outlier detection and circuit breakers (config/outlier.py). Every problem is reported
with its path. Pure. The configuration it builds, and the clusters that derives (policy,
pool and suffix variants), are config/fallback.py's.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from gateway_extproc.catalog.models import Catalog, ModelEntry
from gateway_extproc.config.fallback import DEFAULT_TRIGGERS, FallbackConfig, Target, Trigger
from gateway_extproc.config.outlier import parse_breakers, parse_outlier
from gateway_extproc.translate.pairs import PAIRS

MAX_ATTEMPTS = 10  # Envoy retries a chain this many times at most


def parse_fallback(
    doc: object, catalog: Catalog | None, providers: Collection[str], problems: list[str]
) -> FallbackConfig:
    """The section, validated; problems are appended with their paths."""
    if doc is None:
        return FallbackConfig()
    if not isinstance(doc, Mapping):
        problems.append("fallback: must be a mapping")
        return FallbackConfig()
    known = {"chains", "on", "first_byte_timeout_s", "max_attempts", "outlier", "circuit_breakers"}
    for extra in sorted(set(doc) - known):
        problems.append(f"fallback.{extra}: unknown key")
    on = _triggers(doc.get("on"), problems)
    timeout = doc.get("first_byte_timeout_s", FallbackConfig.first_byte_timeout_s)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 600:
        problems.append(
            f"fallback.first_byte_timeout_s: must be in (0, 600] seconds (got {timeout!r})"
        )
        timeout = FallbackConfig.first_byte_timeout_s
    attempts = doc.get("max_attempts", FallbackConfig.max_attempts)
    if (
        isinstance(attempts, bool)
        or not isinstance(attempts, int)
        or not 2 <= attempts <= MAX_ATTEMPTS
    ):
        problems.append(
            f"fallback.max_attempts: must be an integer in [2, {MAX_ATTEMPTS}] (got {attempts!r})"
        )
        attempts = FallbackConfig.max_attempts
    chains_doc = doc.get("chains", {})
    chains: dict[str, tuple[Target, ...]] = {}
    if not isinstance(chains_doc, Mapping):
        problems.append("fallback.chains: must be a mapping of model -> list of provider/model")
    elif catalog is not None:
        for requested, targets in chains_doc.items():
            chain = _chain(str(requested), targets, catalog, providers, problems)
            if chain is not None:
                chains[chain[0].model] = chain
    outlier = parse_outlier(doc.get("outlier"), problems)
    breakers = parse_breakers(doc.get("circuit_breakers"), problems)
    return FallbackConfig(chains, on, float(timeout), attempts, outlier, breakers)


def _triggers(doc: object, problems: list[str]) -> frozenset[Trigger]:
    if doc is None:
        return DEFAULT_TRIGGERS
    known = {t.value for t in Trigger}
    if not isinstance(doc, list) or not doc or not all(isinstance(t, str) for t in doc):
        problems.append(f"fallback.on: must be a non-empty list of {', '.join(sorted(known))}")
        return DEFAULT_TRIGGERS
    out = set()
    for i, name in enumerate(doc):
        if name not in known:
            problems.append(f"fallback.on[{i}]: must be one of {', '.join(sorted(known))}")
        else:
            out.add(Trigger(name))
    return frozenset(out) or DEFAULT_TRIGGERS


def _chain(
    requested: str,
    doc: Any,
    catalog: Catalog,
    providers: Collection[str],
    problems: list[str],
) -> tuple[Target, ...] | None:
    path = f"fallback.chains.{requested}"
    head = catalog.lookup(requested)
    if head is None:
        problems.append(f"{path}: {requested!r} is not a catalog model")
        return None
    if not isinstance(doc, list) or len(doc) < 2 or not all(isinstance(t, str) for t in doc):
        problems.append(f"{path}: must be a list of at least two targets (provider/model)")
        return None
    targets: list[Target] = []
    entries: list[ModelEntry] = []
    for i, text in enumerate(doc):
        where = f"{path}[{i}]"
        entry = _entry(text, catalog, where, problems)
        if entry is None:
            continue
        if entry.provider not in providers:
            problems.append(f"{where}: provider {entry.provider!r} is not configured")
            continue
        if entry.embedding:
            problems.append(f"{where}: {entry.name} is an embedding model: chains serve chats")
            continue
        if entry.schema is not head.schema and not any(
            client.schema is head.schema and schema is entry.schema for client, schema in PAIRS
        ):
            problems.append(
                f"{where}: no translation from the {head.schema.value} API to "
                f"{entry.schema.value} ({entry.name})"
            )
            continue
        targets.append(Target(entry.provider, entry.name))
        entries.append(entry)
    if len(targets) != len(doc):
        return None
    if entries[0].name != head.name:
        problems.append(f"{path}[0]: must be {requested!r} itself (the model the client asked for)")
        return None
    if len(set(targets)) != len(targets):
        problems.append(f"{path}: names a target twice")
        return None
    return tuple(targets)


def _entry(text: str, catalog: Catalog, where: str, problems: list[str]) -> ModelEntry | None:
    """`provider/model` -> the catalog entry; a catalog name holding the slash is taken whole."""
    provider, slash, model = text.partition("/")
    if not slash or not provider or not model:
        problems.append(f"{where}: must be provider/model (got {text!r})")
        return None
    entry = catalog.lookup(model)
    if entry is None or entry.provider != provider:
        entry = catalog.lookup(text) or entry
    if entry is None:
        problems.append(f"{where}: {model!r} is not a catalog model")
        return None
    if entry.provider != provider:
        problems.append(f"{where}: {entry.name} is served by {entry.provider}, not {provider}")
        return None
    if not entry.free and entry.price.input == 0 and entry.price.output == 0:
        problems.append(f"{where}: {entry.name} has no price")
        return None
    return entry
