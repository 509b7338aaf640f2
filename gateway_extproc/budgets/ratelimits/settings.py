"""The `rate_limits:` section: parsed once, validated whole, every problem reported with its path.

    rate_limits:
      - name: per-user-rpm
        scope: {kind: user}                 # the budgets' scope grammar
        match: {models: ["gpt-4o*"]}        # the budgets' match filters
        requests: 20                        # per window (optional)
        tokens: 100000                      # input + output per window (optional)
        window: 60s                         # 1s .. 24h
        action: block                       # block | monitor
        count_cache_hits: false             # true: a cache hit counts one request too

At least one of `requests` and `tokens`. Scope and match are parsed by the budgets' parser, so a
rate limit and a budget read the same words the same way.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway_extproc.budgets.ratelimits.model import (
    MAX_WINDOW_S,
    MIN_WINDOW_S,
    RateLimitAction,
    RateLimitConfig,
)
from gateway_extproc.budgets.settings import (
    _choice,
    parse_duration,
    parse_rule_header,
    parse_rules,
)

MAX_COUNT = 10**12  # keeps every sum inside Lua's exact integers
_KEYS = {"name", "scope", "match", "requests", "tokens", "window", "action", "count_cache_hits"}


def parse_rate_limits(doc: object, problems: list[str]) -> tuple[RateLimitConfig, ...]:
    """Read the `rate_limits:` list; append every problem (with its path) to `problems`."""
    return parse_rules(doc, "rate_limits", _rate_limit, problems)


def parse_window(text: object) -> int:
    """`"1s"` .. `"24h"` as whole seconds. Raises ValueError."""
    seconds = parse_duration(text)
    if not MIN_WINDOW_S <= seconds <= MAX_WINDOW_S:
        raise ValueError(f"must be between 1s and 24h (got {text!r})")
    return seconds


def _count(doc: Mapping[object, object], key: str, path: str, out: list[str]) -> int | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_COUNT:
        out.append(f"{path}.{key}: must be an integer in [1, {MAX_COUNT}] (got {value!r})")
        return None
    return value


def _rate_limit(doc: object, path: str, out: list[str]) -> RateLimitConfig | None:
    if not isinstance(doc, Mapping):
        out.append(f"{path}: must be a mapping")
        return None
    before = len(out)
    name, scope, match = parse_rule_header(doc, path, _KEYS, out)
    requests = _count(doc, "requests", path, out)
    tokens = _count(doc, "tokens", path, out)
    if doc.get("requests") is None and doc.get("tokens") is None:
        out.append(f"{path}: set requests, tokens or both")
    window: int | None = None
    try:
        window = parse_window(doc.get("window"))
    except ValueError as exc:
        out.append(f"{path}.window: {exc}")
    action = _choice(doc.get("action"), f"{path}.action", RateLimitAction, out)
    count_cache_hits = doc.get("count_cache_hits", False)
    if not isinstance(count_cache_hits, bool):
        out.append(f"{path}.count_cache_hits: must be true or false (got {count_cache_hits!r})")
    if len(out) > before:
        return None
    assert name is not None and scope is not None
    assert window is not None and action is not None
    return RateLimitConfig(
        name=name,
        scope=scope,
        match=match,
        window_s=window,
        action=action,
        requests=requests,
        tokens=tokens,
        count_cache_hits=count_cache_hits,
    )
