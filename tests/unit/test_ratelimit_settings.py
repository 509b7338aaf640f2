"""The `rate_limits:` section: every problem reported with its path; header formatting. Pure."""

from __future__ import annotations

import pytest

from gateway_extproc.budgets.model import Match, Scope, ScopeKind
from gateway_extproc.budgets.ratelimits.model import (
    BUCKETS,
    RateLimitAction,
    RateLimitConfig,
    RateLimitState,
)
from gateway_extproc.budgets.ratelimits.report import format_reset, headers, retry_after_s
from gateway_extproc.budgets.ratelimits.settings import parse_rate_limits


def parse(doc: object) -> tuple[tuple[RateLimitConfig, ...], list[str]]:
    problems: list[str] = []
    return parse_rate_limits(doc, problems), problems


def test_the_example_parses() -> None:
    limits, problems = parse(
        [
            {
                "name": "per-user-rpm",
                "scope": {"kind": "user"},
                "match": {"models": ["gpt-4o*"]},
                "requests": 20,
                "tokens": 100_000,
                "window": "60s",
                "action": "block",
            },
            {
                "name": "interns-tokens",
                "scope": {"kind": "group", "value": "interns"},
                "tokens": 5000,
                "window": "24h",
                "action": "monitor",
            },
        ]
    )
    assert problems == []
    assert limits == (
        RateLimitConfig(
            name="per-user-rpm",
            scope=Scope(ScopeKind.USER),
            window_s=60,
            action=RateLimitAction.BLOCK,
            requests=20,
            tokens=100_000,
            match=Match(models=("gpt-4o*",)),
        ),
        RateLimitConfig(
            name="interns-tokens",
            scope=Scope(ScopeKind.GROUP, value="interns"),
            window_s=86_400,
            action=RateLimitAction.MONITOR,
            tokens=5000,
        ),
    )
    assert limits[0].bucket_ms * BUCKETS == 60_000
    assert parse(None) == ((), [])


@pytest.mark.parametrize(
    ("item", "problem"),
    [
        ({"window": "60s"}, "rate_limits[0]: set requests, tokens or both"),
        ({"requests": 0}, "rate_limits[0].requests: must be an integer in [1, "),
        ({"tokens": 1.5}, "rate_limits[0].tokens: must be an integer in [1, "),
        ({"requests": True}, "rate_limits[0].requests: must be an integer"),
        ({"window": "25h"}, "rate_limits[0].window: must be between 1s and 24h"),
        ({"window": "2d"}, "rate_limits[0].window: must be between 1s and 24h"),
        ({"window": 60}, "rate_limits[0].window: must be a duration like"),
        ({"window": "0s"}, "rate_limits[0].window: must be a duration like"),
        ({"action": "downgrade"}, "rate_limits[0].action: must be one of block, monitor"),
        ({"scope": {"kind": "team"}}, "rate_limits[0].scope.kind: must be one of user"),
        ({"scope": None}, "rate_limits[0].scope: must be a mapping"),
        ({"match": {"models": []}}, "rate_limits[0].match.models: must be a non-empty list"),
        ({"name": "Bad Name"}, "rate_limits[0].name: must be 1-64 of"),
        ({"burst": 3}, "rate_limits[0].burst: unknown key"),
        (
            {"scope": {"kind": "attribute"}},
            "rate_limits[0].scope.attribute: must be a non-empty string",
        ),
    ],
)
def test_each_problem_is_reported_with_its_path(item: dict[str, object], problem: str) -> None:
    good: dict[str, object] = {
        "name": "x",
        "scope": {"kind": "user"},
        "requests": 1,
        "window": "1m",
        "action": "block",
    }
    if "requests" not in item and "tokens" not in item and "window" in item and len(item) == 1:
        good.pop("requests")
    limits, problems = parse([{**good, **item}])
    assert limits == ()
    assert any(p.startswith(problem) for p in problems), problems


def test_every_problem_at_once_and_duplicate_names() -> None:
    item = {"name": "x", "scope": {"kind": "user"}, "requests": 1, "window": "1s"}
    item["action"] = "block"
    limits, problems = parse([item, item, {"name": "y"}, "nope"])
    assert [limit.name for limit in limits] == ["x"]
    assert "rate_limits[1].name: 'x' is already used by rate_limits[0]" in problems
    assert any(p.startswith("rate_limits[2].scope") for p in problems)
    assert any(p.startswith("rate_limits[2].window") for p in problems)
    assert any(p.startswith("rate_limits[2].action") for p in problems)
    assert "rate_limits[3]: must be a mapping" in problems
    assert parse({"a": 1})[1] == ["rate_limits: must be a list"]


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (-5, "0s"),
        (0, "0s"),
        (1, "1ms"),
        (20, "20ms"),
        (999, "999ms"),
        (1000, "1s"),
        (1500, "1.5s"),
        (17_280, "17.28s"),
        (59_999, "59.999s"),
        (60_000, "1m0s"),
        (60_001, "1m1s"),  # rounded up: never earlier than the truth
        (360_000, "6m0s"),
        (3_600_000, "1h0m0s"),
        (86_400_000, "24h0m0s"),
    ],
)
def test_reset_durations_in_openai_format(ms: int, text: str) -> None:
    assert format_reset(ms) == text


def state(
    name: str,
    *,
    requests: int | None = None,
    tokens: int | None = None,
    used: tuple[int, int] = (0, 0),
    resets: tuple[int, int] = (0, 0),
    retry: tuple[int, int] = (0, 0),
) -> RateLimitState:
    config = RateLimitConfig(
        name, Scope(ScopeKind.USER), 60, RateLimitAction.BLOCK, requests, tokens
    )
    return RateLimitState(config, "u", used[0], used[1], False, *retry, *resets)


def test_headers_come_from_the_most_constrained_limit_per_dimension() -> None:
    states = [
        state("a", requests=100, tokens=1000, used=(10, 900), resets=(5000, 7000)),
        state("b", requests=20, used=(19, 0), resets=(30_000, 0)),
        state("c", tokens=50_000, used=(0, 40_000), resets=(0, 1000)),
    ]
    assert headers(states) == {
        "x-ratelimit-limit-requests": "20",
        "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "30s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "100",
        "x-ratelimit-reset-tokens": "7s",
    }
    assert headers([]) == {}
    over = state("d", requests=5, used=(9, 0))  # a monitor limit can be past its limit
    assert headers([over])["x-ratelimit-remaining-requests"] == "0"


def test_retry_after_waits_for_every_refusing_limit() -> None:
    assert retry_after_s([state("a", retry=(1, 0)), state("b", retry=(0, 2500))]) == 3
    assert retry_after_s([state("a", retry=(0, -1))]) == 60  # never fits: a whole window
    assert retry_after_s([]) == 1


def test_count_cache_hits_is_a_boolean_defaulting_to_false() -> None:
    base = {"name": "r", "scope": {"kind": "user"}, "requests": 5, "window": "60s"}
    problems: list[str] = []
    (default, counting) = parse_rate_limits(
        [
            {**base, "action": "block"},
            {**base, "name": "c", "action": "block", "count_cache_hits": True},
        ],
        problems,
    )
    assert problems == []
    assert default.count_cache_hits is False and counting.count_cache_hits is True
    parse_rate_limits([{**base, "action": "block", "count_cache_hits": "yes"}], problems)
    assert problems == ["rate_limits[0].count_cache_hits: must be true or false (got 'yes')"]
