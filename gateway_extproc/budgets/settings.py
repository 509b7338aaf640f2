"""The `budgets:` section: parsed once, validated whole, every problem reported with its path.

    budgets:
      - name: engineers-monthly
        scope: {kind: group, value: engineering}     # value absent: each group its own counter
        match: {models: ["gpt-4o*"]}                 # optional filters, all must hold
        limit_usd: 500
        window: {type: calendar, period: month, timezone: UTC}
        action: downgrade                            # block | downgrade | monitor
        downgrade_to: gpt-4o-mini
        alerts: {thresholds_percent: [50, 80, 100], webhook: https://hooks.example.com/x}
        on_redis_error: fail_closed                  # or fail_open

`parse_budgets` appends problems to the caller's list (so they are reported together with the
rest of the configuration's) and returns the budgets it could read. Whether `downgrade_to` names a
catalog model of the same API schema is checked by the loader that knows the catalog.
"""

from __future__ import annotations

import enum
import re
import urllib.parse
import zoneinfo
from collections.abc import Callable, Mapping
from typing import Protocol, TypeVar

from gateway_extproc.budgets.model import (
    Action,
    Alerts,
    BudgetConfig,
    CalendarWindow,
    Match,
    OnRedisError,
    Period,
    RollingWindow,
    Scope,
    ScopeKind,
    Window,
)
from gateway_extproc.catalog.pricing import MICROS_PER_USD, usd_to_micros

MAX_LIMIT_USD = 1_000_000_000  # keeps every sum well inside Lua's exact integers (2^53 micros)
MAX_BUCKETS = 1440
MAX_ROLLING_S = 366 * 86_400
DEFAULT_BUCKETS = 24
DEFAULT_THRESHOLDS = (50, 80, 100)

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_DURATION = re.compile(r"([1-9][0-9]{0,6})([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_BUDGET_KEYS = {
    "name",
    "scope",
    "match",
    "limit_usd",
    "window",
    "action",
    "downgrade_to",
    "alerts",
    "on_redis_error",
}
_MATCH_KEYS = ("groups", "models", "providers", "users", "services", "static_tokens")

E = TypeVar("E", bound=enum.Enum)


def parse_budgets(doc: object, problems: list[str]) -> tuple[BudgetConfig, ...]:
    """Read the `budgets:` list; append every problem (with its path) to `problems`."""
    return parse_rules(doc, "budgets", _budget, problems)


R = TypeVar("R", bound="_Named")


class _Named(Protocol):
    @property
    def name(self) -> str: ...


def parse_rules(
    doc: object,
    section: str,
    parse_one: Callable[[object, str, list[str]], R | None],
    problems: list[str],
) -> tuple[R, ...]:
    """Read a list of named rules (`budgets:`, `rate_limits:`): each item through `parse_one`,
    every problem appended with its path; a name used twice is a problem (the first wins)."""
    if doc is None:
        return ()
    if not isinstance(doc, list):
        problems.append(f"{section}: must be a list")
        return ()
    rules: list[R] = []
    first_index: dict[str, int] = {}
    for i, item in enumerate(doc):
        path = f"{section}[{i}]"
        name = item.get("name") if isinstance(item, Mapping) else None
        if isinstance(name, str) and name in first_index:
            problems.append(
                f"{path}.name: {name!r} is already used by {section}[{first_index[name]}]"
            )
        elif isinstance(name, str):
            first_index[name] = i
        rule = parse_one(item, path, problems)
        if rule is not None and first_index[rule.name] == i:
            rules.append(rule)
    return tuple(rules)


def parse_rule_header(
    doc: Mapping[object, object], path: str, keys: set[str], out: list[str]
) -> tuple[str | None, Scope | None, Match]:
    """What every rule starts with: no key outside `keys`, a name, a scope and match filters
    (a budget and a rate limit read them the same way)."""
    _unknown_keys(doc, path, keys, out)
    name = doc.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        out.append(
            f"{path}.name: must be 1-64 of a-z, 0-9, _ and -, starting alphanumeric (got {name!r})"
        )
        name = None
    scope = _scope(doc.get("scope"), f"{path}.scope", out)
    match = parse_match(doc.get("match"), f"{path}.match", out)
    return name, scope, match


def parse_duration(text: object) -> int:
    """`"90m"`, `"24h"`, `"7d"`, `"30s"` as whole seconds. Raises ValueError."""
    match = _DURATION.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"must be a duration like 90m, 24h or 7d (got {text!r})")
    return int(match[1]) * _UNIT_S[match[2]]


def _unknown_keys(
    doc: Mapping[object, object], path: str, allowed: set[str], out: list[str]
) -> None:
    for extra in sorted(set(map(str, doc)) - allowed):
        out.append(f"{path}.{extra}: unknown key")


def _choice(value: object, path: str, kind: type[E], out: list[str]) -> E | None:
    for member in kind:
        if value == member.value:
            return member
    choices = ", ".join(str(m.value) for m in kind)
    out.append(f"{path}: must be one of {choices} (got {value!r})")
    return None


def _text(value: object, path: str, out: list[str]) -> str | None:
    if not isinstance(value, str) or not value.strip():
        out.append(f"{path}: must be a non-empty string (got {value!r})")
        return None
    return value


def _budget(doc: object, path: str, out: list[str]) -> BudgetConfig | None:
    if not isinstance(doc, Mapping):
        out.append(f"{path}: must be a mapping")
        return None
    before = len(out)
    name, scope, match = parse_rule_header(doc, path, _BUDGET_KEYS, out)
    limit = _limit(doc.get("limit_usd"), f"{path}.limit_usd", out)
    window = _window(doc.get("window"), f"{path}.window", out)
    action = _choice(doc.get("action"), f"{path}.action", Action, out)
    downgrade_to = doc.get("downgrade_to")
    if action is Action.DOWNGRADE:
        downgrade_to = _text(downgrade_to, f"{path}.downgrade_to", out)
    elif downgrade_to is not None:
        out.append(f"{path}.downgrade_to: only allowed with action: downgrade")
    alerts = _alerts(doc.get("alerts"), f"{path}.alerts", out)
    on_error = _choice(
        doc.get("on_redis_error", OnRedisError.FAIL_CLOSED.value),
        f"{path}.on_redis_error",
        OnRedisError,
        out,
    )
    if len(out) > before:
        return None
    assert name is not None and scope is not None and limit is not None and window is not None
    assert action is not None and on_error is not None
    assert downgrade_to is None or isinstance(downgrade_to, str)
    return BudgetConfig(
        name=name,
        scope=scope,
        match=match,
        limit_micros=limit,
        window=window,
        action=action,
        downgrade_to=downgrade_to,
        alerts=alerts,
        on_redis_error=on_error,
    )


def _scope(doc: object, path: str, out: list[str]) -> Scope | None:
    if not isinstance(doc, Mapping):
        out.append(f"{path}: must be a mapping with kind (and value or attribute)")
        return None
    _unknown_keys(doc, path, {"kind", "attribute", "value"}, out)
    kind = _choice(doc.get("kind"), f"{path}.kind", ScopeKind, out)
    attribute = doc.get("attribute")
    if kind is ScopeKind.ATTRIBUTE:
        attribute = _text(attribute, f"{path}.attribute", out)
    elif attribute is not None:
        out.append(f"{path}.attribute: only allowed with kind: attribute")
        attribute = None
    value = doc.get("value")
    if kind is ScopeKind.GLOBAL and value is not None:
        out.append(f"{path}.value: a global budget has one counter; remove value")
        value = None
    elif value is not None:
        value = _text(value, f"{path}.value", out)
    if kind is None:
        return None
    return Scope(kind=kind, attribute=attribute, value=value)


def parse_match(doc: object, path: str, out: list[str]) -> Match:
    if doc is None:
        return Match()
    if not isinstance(doc, Mapping):
        out.append(f"{path}: must be a mapping")
        return Match()
    _unknown_keys(doc, path, set(_MATCH_KEYS), out)
    lists: dict[str, tuple[str, ...] | None] = {}
    for key in _MATCH_KEYS:
        value = doc.get(key)
        lists[key] = None
        if value is None:
            continue
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, str) and v for v in value)
        ):
            out.append(f"{path}.{key}: must be a non-empty list of non-empty strings")
            continue
        lists[key] = tuple(value)

    def as_set(key: str) -> frozenset[str] | None:
        values = lists[key]
        return None if values is None else frozenset(values)

    return Match(
        groups=as_set("groups"),
        models=lists["models"],
        providers=as_set("providers"),
        users=as_set("users"),
        services=as_set("services"),
        static_tokens=as_set("static_tokens"),
    )


def _limit(value: object, path: str, out: list[str]) -> int | None:
    try:
        micros = usd_to_micros(value)
    except ValueError as exc:
        out.append(f"{path}: {exc} (got {value!r})")
        return None
    if not 0 < micros <= MAX_LIMIT_USD * MICROS_PER_USD:
        out.append(f"{path}: must be > 0 and <= {MAX_LIMIT_USD} (got {value!r})")
        return None
    return micros


def _window(doc: object, path: str, out: list[str]) -> Window | None:
    if not isinstance(doc, Mapping):
        out.append(f"{path}: must be a mapping with type calendar or rolling")
        return None
    kind = doc.get("type")
    if kind == "calendar":
        _unknown_keys(doc, path, {"type", "period", "timezone"}, out)
        period = _choice(doc.get("period"), f"{path}.period", Period, out)
        timezone = doc.get("timezone", "UTC")
        if not _valid_timezone(timezone):
            out.append(
                f"{path}.timezone: must be an IANA time zone like Europe/Berlin (got {timezone!r})"
            )
            return None
        assert isinstance(timezone, str)
        return None if period is None else CalendarWindow(period=period, timezone=timezone)
    if kind == "rolling":
        _unknown_keys(doc, path, {"type", "duration", "bucket"}, out)
        return _rolling(doc, path, out)
    out.append(f"{path}.type: must be one of calendar, rolling (got {kind!r})")
    return None


def _valid_timezone(name: object) -> bool:
    if not isinstance(name, str) or not name or name.startswith("/") or ".." in name:
        return False
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _rolling(doc: Mapping[object, object], path: str, out: list[str]) -> RollingWindow | None:
    try:
        duration = parse_duration(doc.get("duration"))
    except ValueError as exc:
        out.append(f"{path}.duration: {exc}")
        return None
    if duration > MAX_ROLLING_S:
        out.append(f"{path}.duration: must be at most 366d (got {doc.get('duration')!r})")
        return None
    if doc.get("bucket") is None:
        if duration % DEFAULT_BUCKETS:
            out.append(
                f"{path}.bucket: required: the default (duration / {DEFAULT_BUCKETS}) is not a "
                f"whole number of seconds for duration {doc.get('duration')!r}"
            )
            return None
        bucket = duration // DEFAULT_BUCKETS
    else:
        try:
            bucket = parse_duration(doc.get("bucket"))
        except ValueError as exc:
            out.append(f"{path}.bucket: {exc}")
            return None
        if duration % bucket:
            out.append(f"{path}.bucket: must divide duration {doc.get('duration')!r} evenly")
            return None
        if duration // bucket > MAX_BUCKETS:
            count = duration // bucket
            out.append(f"{path}.bucket: at most {MAX_BUCKETS} buckets per window (got {count})")
            return None
    return RollingWindow(duration_s=duration, bucket_s=bucket)


def _alerts(doc: object, path: str, out: list[str]) -> Alerts:
    if doc is None:
        return Alerts()
    if not isinstance(doc, Mapping):
        out.append(f"{path}: must be a mapping")
        return Alerts()
    _unknown_keys(doc, path, {"thresholds_percent", "webhook"}, out)
    thresholds: tuple[int, ...] = DEFAULT_THRESHOLDS
    raw = doc.get("thresholds_percent", list(DEFAULT_THRESHOLDS))
    if (
        not isinstance(raw, list)
        or not raw
        or not all(isinstance(t, int) and not isinstance(t, bool) and 1 <= t <= 1000 for t in raw)
    ):
        out.append(f"{path}.thresholds_percent: must be a non-empty list of integers in [1, 1000]")
    elif len(set(raw)) != len(raw):
        out.append(f"{path}.thresholds_percent: must not repeat a threshold (got {raw!r})")
    else:
        thresholds = tuple(sorted(raw))
    webhook = doc.get("webhook")
    if webhook is not None:
        parts = urllib.parse.urlsplit(webhook) if isinstance(webhook, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            out.append(f"{path}.webhook: must be an http(s) URL or null (got {webhook!r})")
            webhook = None
    return Alerts(thresholds_percent=thresholds, webhook=webhook)
