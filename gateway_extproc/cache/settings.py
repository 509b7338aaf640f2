"""The `cache` section: which requests may be answered from the response cache, and its caps.

    cache:
      max_entry_bytes: 1048576       # a larger answer is not stored
      max_total_bytes: 268435456     # least recently used entries go first above this
      rules:                         # first matching rule wins; no rule: never cached
        - name: eng-cache
          match: {groups: [eng]}     # the budgets' match grammar
          ttl: 1h                    # a client's x-gateway-cache-ttl may only shorten it
          scope: user                # user (default) | group | global: who shares an entry
          side_effect_tools: false   # requests declaring tools are cached only when true

The cache uses the budget store's Redis connection settings (`budget_store.redis_url`, ...).
Parsed once; every problem is reported with its path.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping

from gateway_extproc.budgets.model import Match
from gateway_extproc.budgets.settings import parse_duration, parse_match

MAX_TTL_S = 30 * 86_400
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_RULE_KEYS = {"name", "match", "ttl", "scope", "side_effect_tools"}
_KEYS = {"max_entry_bytes", "max_total_bytes", "rules"}


class CacheScope(enum.StrEnum):
    """The tenant an entry is shared within: never wider than this."""

    USER = "user"  # the identity's subject (user, service or static token)
    GROUP = "group"  # identities in exactly the same (matched) groups
    GLOBAL = "global"  # everyone the rule matches


@dataclasses.dataclass(frozen=True, slots=True)
class CacheRule:
    name: str
    match: Match
    ttl_s: int
    scope: CacheScope = CacheScope.USER
    side_effect_tools: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class CacheConfig:
    rules: tuple[CacheRule, ...] = ()
    max_entry_bytes: int = 1 << 20
    max_total_bytes: int = 256 << 20

    @property
    def enabled(self) -> bool:
        return bool(self.rules)


def _size(doc: Mapping[object, object], key: str, default: int, out: list[str]) -> int:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1024 <= value <= 1 << 40:
        out.append(
            f"cache.{key}: must be an integer number of bytes in [1024, 2^40] (got {value!r})"
        )
        return default
    return value


def parse_cache(doc: object, out: list[str]) -> CacheConfig:
    """Read the `cache` section; append every problem to `out`."""
    if doc is None:
        return CacheConfig()
    if not isinstance(doc, Mapping):
        out.append("cache: must be a mapping")
        return CacheConfig()
    for extra in sorted(set(map(str, doc)) - _KEYS):
        out.append(f"cache.{extra}: unknown key")
    d = CacheConfig()
    entry = _size(doc, "max_entry_bytes", d.max_entry_bytes, out)
    total = _size(doc, "max_total_bytes", d.max_total_bytes, out)
    if entry > total:
        out.append(f"cache.max_entry_bytes: must not exceed max_total_bytes ({total})")
    rules_doc = doc.get("rules", [])
    rules: list[CacheRule] = []
    if not isinstance(rules_doc, list):
        out.append("cache.rules: must be a list")
        rules_doc = []
    seen: set[str] = set()
    for i, item in enumerate(rules_doc):
        rule = _rule(item, f"cache.rules[{i}]", out)
        if rule is None:
            continue
        if rule.name in seen:
            out.append(f"cache.rules[{i}].name: {rule.name!r} is used twice")
        seen.add(rule.name)
        rules.append(rule)
    return CacheConfig(tuple(rules), entry, total)


def _rule(doc: object, path: str, out: list[str]) -> CacheRule | None:
    if not isinstance(doc, Mapping):
        out.append(f"{path}: must be a mapping")
        return None
    before = len(out)
    for extra in sorted(set(map(str, doc)) - _RULE_KEYS):
        out.append(f"{path}.{extra}: unknown key")
    name = doc.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        out.append(f"{path}.name: must match {_NAME.pattern} (got {name!r})")
    match = parse_match(doc.get("match"), f"{path}.match", out)
    ttl_s = 0
    try:
        ttl_s = parse_duration(doc.get("ttl"))
    except ValueError as exc:
        out.append(f"{path}.ttl: {exc}")
    if ttl_s > MAX_TTL_S:
        out.append(f"{path}.ttl: must be at most 30d (got {doc.get('ttl')!r})")
    scope_value = doc.get("scope", CacheScope.USER.value)
    scope = CacheScope.USER
    try:
        scope = CacheScope(scope_value)
    except ValueError:
        choices = ", ".join(s.value for s in CacheScope)
        out.append(f"{path}.scope: must be one of {choices} (got {scope_value!r})")
    tools = doc.get("side_effect_tools", False)
    if not isinstance(tools, bool):
        out.append(f"{path}.side_effect_tools: must be true or false (got {tools!r})")
    if len(out) > before:
        return None
    assert isinstance(name, str) and isinstance(tools, bool)
    return CacheRule(name, match, ttl_s, scope, tools)
