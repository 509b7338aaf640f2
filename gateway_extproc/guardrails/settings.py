"""The `guardrails:` section: parsed once, validated whole, every problem reported with its path.

    guardrails:
      - name: no-secrets
        match: {groups: [eng]}                    # optional; the budgets' match grammar
        categories: {secrets: block, email: redact, phone: monitor}
        allow: {email_domains: [example.com], values: ["4111 1111 1111 1111"]}

`categories` maps a category (gateway_extproc.guardrails.categories.Category) or a shorthand
(`secrets`, `pii`) to `block`, `redact` or `monitor`; a category named on its own wins over a
shorthand that includes it. `allow` lists near-misses this guardrail ignores: e-mail domains
(and their subdomains) and exact values.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from gateway_extproc.budgets.model import Match
from gateway_extproc.budgets.settings import parse_match
from gateway_extproc.guardrails.categories import SHORTHANDS, Category, GuardAction
from gateway_extproc.guardrails.normalise import prepare

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,24}")
_KEYS = {"name", "match", "categories", "allow"}
_ALLOW_KEYS = {"email_domains", "values"}
_CATEGORY_NAMES = frozenset(c.value for c in Category)


@dataclasses.dataclass(frozen=True, slots=True)
class GuardrailConfig:
    name: str
    match: Match
    actions: Mapping[Category, GuardAction]  # every category this guardrail looks for
    allow_email_domains: frozenset[str] = frozenset()
    allow_values: frozenset[str] = dataclasses.field(default=frozenset(), repr=False)


def parse_guardrails(doc: object, problems: list[str]) -> tuple[GuardrailConfig, ...]:
    """Read the `guardrails:` list; append every problem (with its path) to `problems`."""
    if doc is None:
        return ()
    if not isinstance(doc, list):
        problems.append("guardrails: must be a list")
        return ()
    out: list[GuardrailConfig] = []
    seen: set[str] = set()
    for i, item in enumerate(doc):
        path = f"guardrails[{i}]"
        name = item.get("name") if isinstance(item, Mapping) else None
        if isinstance(name, str) and name in seen:
            problems.append(f"{path}.name: {name!r} is used by an earlier guardrail")
        elif isinstance(name, str):
            seen.add(name)
        guardrail = _guardrail(item, path, problems)
        if guardrail is not None:
            out.append(guardrail)
    if out:
        prepare()  # the folding tables, built with the configuration rather than on a request
    return tuple(out)


def _guardrail(doc: object, path: str, out: list[str]) -> GuardrailConfig | None:
    if not isinstance(doc, Mapping):
        out.append(f"{path}: must be a mapping with name and categories")
        return None
    before = len(out)
    for extra in sorted(set(doc) - _KEYS, key=str):
        out.append(f"{path}.{extra}: unknown key (known: {', '.join(sorted(_KEYS))})")
    name = doc.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        out.append(f"{path}.name: must match [a-z0-9][a-z0-9_-]{{0,63}} (got {name!r})")
    match = parse_match(doc.get("match"), f"{path}.match", out)
    actions = _categories(doc.get("categories"), f"{path}.categories", out)
    domains, values = _allow(doc.get("allow"), f"{path}.allow", out)
    if len(out) > before:
        return None
    assert isinstance(name, str)
    return GuardrailConfig(name, match, actions, domains, values)


def _categories(doc: object, path: str, out: list[str]) -> dict[Category, GuardAction]:
    if not isinstance(doc, Mapping) or not doc:
        out.append(f"{path}: must be a non-empty mapping of category to block, redact or monitor")
        return {}
    known = sorted([*SHORTHANDS, *(c.value for c in Category)])
    broad: dict[Category, GuardAction] = {}
    named: dict[Category, GuardAction] = {}
    for key, value in doc.items():
        if key not in SHORTHANDS and key not in _CATEGORY_NAMES:
            out.append(f"{path}.{key}: unknown category (known: {', '.join(known)})")
            continue
        action = GuardAction.parse(value)
        if action is None:
            out.append(f"{path}.{key}: must be one of block, redact, monitor (got {value!r})")
        elif key in SHORTHANDS:
            broad.update(dict.fromkeys(SHORTHANDS[key], action))
        else:
            named[Category(key)] = action
    return broad | named


def _allow(doc: object, path: str, out: list[str]) -> tuple[frozenset[str], frozenset[str]]:
    if doc is None:
        return frozenset(), frozenset()
    if not isinstance(doc, Mapping):
        out.append(f"{path}: must be a mapping (email_domains, values)")
        return frozenset(), frozenset()
    for extra in sorted(set(doc) - _ALLOW_KEYS, key=str):
        out.append(f"{path}.{extra}: unknown key (known: email_domains, values)")
    lists: dict[str, frozenset[str]] = {}
    for key in sorted(_ALLOW_KEYS):
        value = doc.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            out.append(f"{path}.{key}: must be a list of non-empty strings")
            value = []
        lists[key] = frozenset(value)
    domains = frozenset(d.lower().strip() for d in lists["email_domains"])
    for domain in sorted(domains):
        if not _DOMAIN.fullmatch(domain):
            out.append(f"{path}.email_domains: {domain!r} is not a domain name")
    return domains, lists["values"]
