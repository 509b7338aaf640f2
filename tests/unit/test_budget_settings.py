"""The `budgets:` parser: the documented example parses to the expected values, and every problem of
a broken document is reported at once, each with its path."""

from __future__ import annotations

import pytest
import yaml

from gateway_extproc.budgets.model import (
    Action,
    Alerts,
    CalendarWindow,
    Match,
    OnRedisError,
    Period,
    RollingWindow,
    Scope,
    ScopeKind,
)
from gateway_extproc.budgets.settings import parse_budgets, parse_duration

README_EXAMPLE = """
budgets:
  - name: engineers-monthly        # every engineer: $500 per calendar month (UTC)
    scope: {kind: user}
    match: {groups: [engineering]}
    limit_usd: 500
    window: {type: calendar, period: month}
    action: downgrade
    downgrade_to: gpt-4o-mini
  - name: interns-monthly          # the interns group together: $200 per month, any model
    scope: {kind: group, value: interns}
    limit_usd: 200
    window: {type: calendar, period: month}
    action: block
  - name: ci-runner-daily          # the ci-runner service: $50 per rolling 24 hours
    scope: {kind: service, value: ci-runner}
    limit_usd: 50
    window: {type: rolling, duration: 24h, bucket: 1h}
    action: block
    on_redis_error: fail_open
  - name: opus-company             # Claude Opus for the whole company: $20,000 a month, watch only
    scope: {kind: global}
    match: {models: ["claude-opus-*"]}
    limit_usd: 20000
    window: {type: calendar, period: month}
    action: monitor
  - name: cost-center-weekly       # each cost center: $10,000 a week (Monday to Monday, Berlin)
    scope: {kind: attribute, attribute: cost_center}
    limit_usd: "10000.00"
    window: {type: calendar, period: week, timezone: Europe/Berlin}
    action: block
    alerts:
      thresholds_percent: [50, 80, 100]
      webhook: https://hooks.example.com/budgets
"""


def parse(doc: object) -> tuple[tuple[object, ...], list[str]]:
    problems: list[str] = []
    return parse_budgets(doc, problems), problems


def test_readme_example() -> None:
    budgets, problems = parse(yaml.safe_load(README_EXAMPLE)["budgets"])
    assert problems == []
    engineers, interns, ci, opus, cost_center = budgets
    assert engineers.name == "engineers-monthly"
    assert engineers.scope == Scope(ScopeKind.USER)
    assert engineers.match == Match(groups=frozenset({"engineering"}))
    assert engineers.limit_micros == 500_000_000
    assert engineers.window == CalendarWindow(Period.MONTH, "UTC")
    assert engineers.action is Action.DOWNGRADE and engineers.downgrade_to == "gpt-4o-mini"
    assert engineers.alerts == Alerts() and engineers.on_redis_error is OnRedisError.FAIL_CLOSED
    assert interns.scope == Scope(ScopeKind.GROUP, value="interns")
    assert interns.limit_micros == 200_000_000 and interns.enforced
    assert ci.window == RollingWindow(duration_s=86_400, bucket_s=3600)
    assert ci.window.buckets == 24 and ci.on_redis_error is OnRedisError.FAIL_OPEN
    assert opus.scope == Scope(ScopeKind.GLOBAL) and opus.match.models == ("claude-opus-*",)
    assert opus.action is Action.MONITOR and not opus.enforced
    assert cost_center.scope == Scope(ScopeKind.ATTRIBUTE, attribute="cost_center")
    assert cost_center.limit_micros == 10_000_000_000
    assert cost_center.window == CalendarWindow(Period.WEEK, "Europe/Berlin")
    assert cost_center.alerts == Alerts((50, 80, 100), "https://hooks.example.com/budgets")


def test_absent_section_is_no_budgets() -> None:
    assert parse(None) == ((), [])
    assert parse([]) == ((), [])


def test_not_a_list() -> None:
    assert parse({"name": "x"}) == ((), ["budgets: must be a list"])


def test_every_problem_at_once_with_its_path() -> None:
    doc = [
        "not a mapping",
        {
            "name": "Bad Name",
            "scope": {"kind": "team", "colour": "red"},
            "limit_usd": "12.3456789",
            "window": {"type": "calendar", "period": "fortnight", "timezone": "Mars/Olympus"},
            "action": "shout",
            "extra": 1,
        },
        {
            "name": "dup",
            "scope": {"kind": "attribute"},
            "match": {"groups": [], "models": "gpt-*", "teams": ["x"]},
            "limit_usd": 0,
            "window": {"type": "rolling", "duration": "25m"},
            "action": "downgrade",
            "alerts": {"thresholds_percent": [80, 50, 80], "webhook": "ftp://x"},
            "on_redis_error": "maybe",
        },
        {
            "name": "dup",
            "scope": {"kind": "global", "value": "everyone", "attribute": "team"},
            "limit_usd": True,
            "window": {"type": "rolling", "duration": "1d", "bucket": "7m"},
            "action": "block",
            "downgrade_to": "gpt-4o-mini",
            "alerts": {"thresholds_percent": [0, 1001]},
        },
        {
            "name": "ok-name",
            "scope": {"kind": "user", "value": ""},
            "limit_usd": -5,
            "window": {"type": "rolling", "duration": "7d", "bucket": "1m"},
            "action": "monitor",
        },
        {
            "name": "roll",
            "scope": None,
            "limit_usd": 1,
            "window": {"type": "sliding"},
            "action": "block",
        },
        {
            "name": "roll2",
            "scope": {"kind": "user"},
            "limit_usd": 2_000_000_000,
            "window": {"type": "rolling", "duration": "24 hours", "bucket": "1h", "tz": "UTC"},
        },
    ]
    budgets, problems = parse(doc)
    assert budgets == ()
    assert problems == [
        "budgets[0]: must be a mapping",
        "budgets[1].extra: unknown key",
        "budgets[1].name: must be 1-64 of a-z, 0-9, _ and -, starting alphanumeric "
        "(got 'Bad Name')",
        "budgets[1].scope.colour: unknown key",
        "budgets[1].scope.kind: must be one of user, group, service, model, provider, "
        "attribute, global, static_token (got 'team')",
        "budgets[1].limit_usd: more than 6 decimal places (got '12.3456789')",
        "budgets[1].window.period: must be one of day, week, month (got 'fortnight')",
        "budgets[1].window.timezone: must be an IANA time zone like Europe/Berlin "
        "(got 'Mars/Olympus')",
        "budgets[1].action: must be one of block, downgrade, monitor (got 'shout')",
        "budgets[2].scope.attribute: must be a non-empty string (got None)",
        "budgets[2].match.teams: unknown key",
        "budgets[2].match.groups: must be a non-empty list of non-empty strings",
        "budgets[2].match.models: must be a non-empty list of non-empty strings",
        "budgets[2].limit_usd: must be > 0 and <= 1000000000 (got 0)",
        "budgets[2].window.bucket: required: the default (duration / 24) is not a whole "
        "number of seconds for duration '25m'",
        "budgets[2].downgrade_to: must be a non-empty string (got None)",
        "budgets[2].alerts.thresholds_percent: must not repeat a threshold (got [80, 50, 80])",
        "budgets[2].alerts.webhook: must be an http(s) URL or null (got 'ftp://x')",
        "budgets[2].on_redis_error: must be one of fail_closed, fail_open (got 'maybe')",
        "budgets[3].name: 'dup' is already used by budgets[2]",
        "budgets[3].scope.attribute: only allowed with kind: attribute",
        "budgets[3].scope.value: a global budget has one counter; remove value",
        "budgets[3].limit_usd: not a number (got True)",
        "budgets[3].window.bucket: must divide duration '1d' evenly",
        "budgets[3].downgrade_to: only allowed with action: downgrade",
        "budgets[3].alerts.thresholds_percent: must be a non-empty list of integers in [1, 1000]",
        "budgets[4].scope.value: must be a non-empty string (got '')",
        "budgets[4].limit_usd: must be > 0 and <= 1000000000 (got -5)",
        "budgets[4].window.bucket: at most 1440 buckets per window (got 10080)",
        "budgets[5].scope: must be a mapping with kind (and value or attribute)",
        "budgets[5].window.type: must be one of calendar, rolling (got 'sliding')",
        "budgets[6].limit_usd: must be > 0 and <= 1000000000 (got 2000000000)",
        "budgets[6].window.tz: unknown key",
        "budgets[6].window.duration: must be a duration like 90m, 24h or 7d (got '24 hours')",
        "budgets[6].action: must be one of block, downgrade, monitor (got None)",
    ]


def test_a_good_budget_among_bad_ones_is_still_returned() -> None:
    good = {
        "name": "good",
        "scope": {"kind": "model"},
        "limit_usd": 0.000001,
        "window": {"type": "calendar", "period": "day"},
        "action": "block",
    }
    budgets, problems = parse([good, {"name": "bad"}, dict(good)])
    assert [b.name for b in budgets] == ["good"]
    assert budgets[0].limit_micros == 1
    assert problems[0].startswith("budgets[1].scope: ")
    assert problems[-1] == "budgets[2].name: 'good' is already used by budgets[0]"


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        ({"duration": "24h"}, RollingWindow(86_400, 3600)),
        ({"duration": "90m"}, RollingWindow(5400, 225)),
        ({"duration": "7d", "bucket": "1h"}, RollingWindow(604_800, 3600)),
        ({"duration": "1d", "bucket": "1m"}, RollingWindow(86_400, 60)),
        ({"duration": "48s", "bucket": "48s"}, RollingWindow(48, 48)),
    ],
)
def test_rolling_windows(window: dict[str, str], expected: RollingWindow) -> None:
    doc = {
        "name": "r",
        "scope": {"kind": "service"},
        "limit_usd": 50,
        "window": {"type": "rolling", **window},
        "action": "block",
    }
    budgets, problems = parse([doc])
    assert problems == []
    assert budgets[0].window == expected


def test_alerts_default_thresholds_and_null_webhook() -> None:
    doc = {
        "name": "a",
        "scope": {"kind": "provider", "value": "openai"},
        "limit_usd": 1,
        "window": {"type": "calendar", "period": "month", "timezone": "America/New_York"},
        "action": "monitor",
        "alerts": {"webhook": None},
    }
    budgets, problems = parse([doc])
    assert problems == []
    assert budgets[0].alerts == Alerts((50, 80, 100), None)


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("90m", 5400), ("24h", 86_400), ("7d", 604_800)]
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0h", "1.5h", "h", "10", "1w", 3600, None, "-1h"])
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="must be a duration"):
        parse_duration(text)
