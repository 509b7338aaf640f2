"""The budget_store section and the catalog checks on downgrade budgets."""

from __future__ import annotations

import pytest

from gateway_extproc.budgets.loader import BudgetStoreConfig, parse_budget_store
from gateway_extproc.config.gateway import load_document, merge, parse_config
from gateway_extproc.errors import ConfigError

MONTH = {"type": "calendar", "period": "month"}


def test_defaults_and_environment_override() -> None:
    problems: list[str] = []
    assert parse_budget_store({}, {}, problems) == BudgetStoreConfig()
    env = {"GATEWAY_REDIS_URL": "redis://10.0.0.9:6380/2"}
    assert parse_budget_store({"deadline_ms": 30}, env, problems) == BudgetStoreConfig(
        redis_url="redis://10.0.0.9:6380/2", deadline_ms=30
    )
    assert problems == []


def test_every_problem_at_once() -> None:
    problems: list[str] = []
    doc = {
        "redis_url": "http://redis",
        "key_prefix": "a{b}",
        "cluster": "yes",
        "deadline_ms": 0,
        "lease_s": 1.5,
        "breaker_open_s": True,
    }
    parse_budget_store(doc, {}, problems)
    assert problems == [
        "budget_store.redis_url: must be a redis://, rediss:// or unix:// URL (got 'http://redis')",
        "budget_store.key_prefix: must be a non-empty string without braces",
        "budget_store.cluster: must be true or false (got 'yes')",
        "budget_store.deadline_ms: must be an integer in [1, 60000] (got 0)",
        "budget_store.lease_s: must be an integer in [5, 86400] (got 1.5)",
        "budget_store.breaker_open_s: must be a number in [0.1, 3600] (got True)",
    ]


@pytest.mark.parametrize(
    ("match", "target", "problem"),
    [
        # Across APIs: a chat client of a Claude model can be translated to either target.
        ({}, "gpt-4o-mini", None),
        ({"models": ["claude-*"]}, "gemini-2.5-flash", None),
        ({"providers": ["openai"]}, "no-such-model", "'no-such-model' is not in the catalog"),
        ({"providers": ["openai"]}, "gpt-4o-mini", None),
        ({"models": ["claude-opus-*"]}, "claude-haiku-4-5", None),
    ],
)
def test_downgrade_targets_must_exist_and_share_the_api(
    match: dict[str, object], target: str, problem: str | None
) -> None:
    budget = {
        "name": "b",
        "scope": {"kind": "user"},
        "limit_usd": 1,
        "window": MONTH,
        "action": "downgrade",
        "downgrade_to": target,
        "match": match,
    }
    doc = merge(load_document(None), {"budgets": [budget]})
    if problem is None:
        assert parse_config(doc, {}).budgets[0].downgrade_to == target
        return
    with pytest.raises(ConfigError) as exc:
        parse_config(doc, {})
    assert any(
        p.startswith("budgets[0].downgrade_to: ") and problem in p for p in exc.value.problems
    )
