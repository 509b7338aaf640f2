"""The `rate_limits:` section: parsed once, validated whole, every problem reported with its path.

    rate_limits:
      - name: per-user-rpm
        scope: {kind: user}                 # the budgets' scope grammar
        match: {models: ["gpt-4o*"]}        # the budgets' match filters
        requests: 20                        # per window (optional)
        tokens: 100000                      # input + output per window (optional)
        window: 60s                         # 1s .. 24h
        action: block                       # block | monitor

At least one of `requests` and `tokens`. Scope and match are parsed by the budgets' parser, so a
rate limit and a budget read the same words the same way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from gateway_extproc.budgets.settings import (
    _choice,
    _scope,
    _unknown_keys,
    parse_duration,
    parse_match,
)
from gateway_extproc.ratelimits.model import (
    MAX_WINDOW_S,
    MIN_WINDOW_S,
    RateLimitAction,
    RateLimitConfig,
)

MAX_COUNT = 10**12  # keeps every sum inside Lua's exact integers
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_KEYS = {"name", "scope", "match", "requests", "tokens", "window", "action"}


def parse_rate_limits(doc: object, problems: list[str]) -> tuple[RateLimitConfig, ...]:
    """Read the `rate_limits:` list; append every problem (with its path) to `problems`."""
    if doc is None:
        return ()
    if not isinstance(doc, list):
        problems.append("rate_limits: must be a list")
        return ()
    out: list[RateLimitConfig] = []
    first_index: dict[str, int] = {}
    for i, item in enumerate(doc):
        path = f"rate_limits[{i}]"
        name = item.get("name") if isinstance(item, Mapping) else None
        if isinstance(name, str) and name in first_index:
            problems.append(
                f"{path}.name: {name!r} is already used by rate_limits[{first_index[name]}]"
            )
            continue
        if isinstance(name, str):
            first_index[name] = i
        limit = _rate_limit(item, path, problems)
        if limit is not None:
            out.append(limit)
    return tuple(out)


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
    _unknown_keys(doc, path, _KEYS, out)
    name = doc.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        out.append(
            f"{path}.name: must be 1-64 of a-z, 0-9, _ and -, starting alphanumeric (got {name!r})"
        )
    scope = _scope(doc.get("scope"), f"{path}.scope", out)
    match = parse_match(doc.get("match"), f"{path}.match", out)
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
    if len(out) > before:
        return None
    assert isinstance(name, str) and scope is not None
    assert window is not None and action is not None
    return RateLimitConfig(
        name=name,
        scope=scope,
        match=match,
        window_s=window,
        action=action,
        requests=requests,
        tokens=tokens,
    )
