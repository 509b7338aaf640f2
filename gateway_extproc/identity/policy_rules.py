"""The compiled pieces of model access policies (policy.py) and the parsing of the `policies`
section into them: pattern lists compiled to one anchored regex, rules, and validation that
reports every problem with its path. Pure.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence

TOP_KEYS = ("default", "anonymous", "rules")
_POLICY_KEYS = ("allow", "deny")
_SUBJECT_KEYS = (
    ("users", "user"),
    ("services", "service"),
    ("static_tokens", "static_token"),
    ("groups", "group"),
)
_RULE_KEYS = ("users", "groups", "services", "static_tokens", "allow", "deny")


@dataclasses.dataclass(frozen=True, slots=True)
class Patterns:
    """A rule's allow or deny list, compiled into one anchored regex."""

    items: tuple[tuple[str, str], ...] = ()  # (config path, pattern)
    regex: re.Pattern[str] | None = None

    @classmethod
    def compile(cls, items: Sequence[tuple[str, str]]) -> Patterns:
        if not items:
            return cls()
        joined = "|".join(fnmatch.translate(pattern) for _, pattern in items)
        return cls(tuple(items), re.compile(f"(?:{joined})"))

    def matches(self, name: str) -> bool:
        return self.regex is not None and self.regex.match(name) is not None

    def first_match(self, name: str) -> str | None:
        for _, pattern in self.items:
            if fnmatch.fnmatchcase(name, pattern):
                return pattern
        return None


@dataclasses.dataclass(frozen=True, slots=True, eq=False)  # eq=False: compared by identity
class Rule:
    order: int  # position in `rules`; -1 for default and anonymous
    allow: Patterns
    deny: Patterns


ALLOW_ALL = Rule(-1, Patterns.compile([("policies.default.allow[0]", "*")]), Patterns())
ALLOW_NOTHING = Rule(-1, Patterns(), Patterns())


# --- parsing -----------------------------------------------------------------------------------


def _expected(keys: Iterable[str]) -> str:
    return f"unknown key (expected one of {', '.join(keys)})"


def _names(
    doc: Mapping[object, object], path: str, key: str, what: str, problems: list[str]
) -> list[str]:
    """`doc[key]`: a list of subject names or model patterns; each bad element is a problem."""
    if key not in doc:
        return []
    raw, path = doc[key], f"{path}.{key}"
    if not isinstance(raw, list):
        problems.append(f"{path}: must be a list of {what} (got {raw!r})")
        return []
    out: list[str] = []
    for i, item in enumerate(raw):
        if not isinstance(item, str) or not item.strip() or item != item.strip():
            problems.append(
                f"{path}[{i}]: must be a non-empty string without surrounding spaces (got {item!r})"
            )
        else:
            out.append(item)
    return out


def _patterns(doc: Mapping[object, object], path: str, key: str, problems: list[str]) -> Patterns:
    items = _names(doc, path, key, "model patterns", problems)
    return Patterns.compile([(f"{path}.{key}[{i}]", item) for i, item in enumerate(items)])


def _policy(doc: object, path: str, problems: list[str]) -> Rule | None:
    """`default` or `anonymous`: `{allow: [...], deny: [...]}`, allow required."""
    if not isinstance(doc, Mapping):
        problems.append(f"{path}: must be a mapping with allow (and optionally deny)")
        return None
    for key in doc:
        if key not in _POLICY_KEYS:
            problems.append(f"{path}.{key}: {_expected(_POLICY_KEYS)}")
    if "allow" not in doc:
        problems.append(f"{path}.allow: required (allow: [] allows nothing)")
    return Rule(-1, _patterns(doc, path, "allow", problems), _patterns(doc, path, "deny", problems))


def _rule(
    doc: object, order: int, path: str, problems: list[str]
) -> tuple[Rule, dict[str, list[str]]] | None:
    if not isinstance(doc, Mapping):
        problems.append(f"{path}: must be a mapping with subjects and allow/deny (got {doc!r})")
        return None
    for key in doc:
        if key not in _RULE_KEYS:
            problems.append(f"{path}.{key}: {_expected(_RULE_KEYS)}")
    before = len(problems)
    subjects = {kind: _names(doc, path, key, "names", problems) for key, kind in _SUBJECT_KEYS}
    if len(problems) == before and not any(subjects.values()):
        problems.append(f"{path}: names no subject (set users, groups, services or static_tokens)")
    before = len(problems)
    allow = _patterns(doc, path, "allow", problems)
    deny = _patterns(doc, path, "deny", problems)
    if len(problems) == before and not allow.items and not deny.items:
        problems.append(
            f"{path}: needs at least one allow or deny pattern (to allow nothing: deny: ['*'])"
        )
    return Rule(order, allow, deny), {kind: names for kind, names in subjects.items() if names}


Parsed = tuple[Rule, Rule | None, list[tuple[Rule, dict[str, list[str]]]]]


def parse_sections(doc: Mapping[object, object], path: str, problems: list[str]) -> Parsed | None:
    """`default` (ALLOW_ALL when absent), `anonymous` and the rules with their subjects by kind;
    None when there was a problem (appended to `problems` with its path)."""
    before = len(problems)
    for key in doc:
        if key not in TOP_KEYS:
            problems.append(f"{path}.{key}: {_expected(TOP_KEYS)}")
    default_doc = doc.get("default")
    default = (
        ALLOW_ALL if default_doc is None else _policy(default_doc, f"{path}.default", problems)
    )
    anonymous_doc = doc.get("anonymous")
    anonymous = (
        None if anonymous_doc is None else _policy(anonymous_doc, f"{path}.anonymous", problems)
    )
    rules: list[tuple[Rule, dict[str, list[str]]]] = []
    rules_doc = doc.get("rules")
    if rules_doc is not None and not isinstance(rules_doc, list):
        problems.append(f"{path}.rules: must be a list of rules (got {rules_doc!r})")
    elif rules_doc is not None:
        for i, rule_doc in enumerate(rules_doc):
            parsed = _rule(rule_doc, i, f"{path}.rules[{i}]", problems)
            if parsed is not None:
                rules.append(parsed)
    if len(problems) > before or default is None:
        return None
    return default, anonymous, rules
