"""The configuration the documentation and `make run` ship is a working configuration."""

from __future__ import annotations

import pytest
import yaml

from gateway_extproc.budgets.model import Action, ScopeKind
from gateway_extproc.config.gateway import load_config, load_document, merge, parse_config
from gateway_extproc.errors import ConfigError
from gateway_extproc.identity.devissuer import ALLOW_ENV
from tests.paths import REPO, doc_example


def test_readme_budgets_example_loads_with_the_shipped_catalog() -> None:
    block = doc_example("budgets-example")
    config = parse_config(merge(load_document(None), yaml.safe_load(block)), {})
    names = [b.name for b in config.budgets]
    assert names == [
        "engineers-monthly",
        "interns-monthly",
        "ci-runner-daily",
        "opus-company",
        "cost-center-weekly",
    ]
    kinds = [b.scope.kind for b in config.budgets]
    assert kinds == [
        ScopeKind.USER,
        ScopeKind.GROUP,
        ScopeKind.SERVICE,
        ScopeKind.GLOBAL,
        ScopeKind.ATTRIBUTE,
    ]
    assert [b.action for b in config.budgets] == [
        Action.DOWNGRADE,
        Action.BLOCK,
        Action.BLOCK,
        Action.MONITOR,
        Action.BLOCK,
    ]


def test_make_run_config_loads_with_demo_budgets() -> None:
    config = load_config(REPO / "config" / "local.yaml", {ALLOW_ENV: "1"})  # gatewayctl run's
    assert config.dev_issuer
    assert {b.name for b in config.budgets} == {"demo-gpt4o-daily", "demo-interns-daily"}


def test_readme_rate_limits_example_loads() -> None:
    block = doc_example("rate-limits-example")
    config = parse_config(merge(load_document(None), yaml.safe_load(block)), {})
    assert [(r.name, r.requests, r.tokens, r.window_s) for r in config.rate_limits] == [
        ("per-user-rpm", 20, 100_000, 60),
        ("ci-runner-burst", 5, None, 1),
        ("interns-tokens-daily", None, 2_000_000, 86_400),
    ]
    assert config.uses_store


def test_a_bad_rate_limit_is_reported_with_the_rest_of_the_config() -> None:
    doc = merge(
        load_document(None),
        {
            "rate_limits": [{"name": "x", "scope": {"kind": "user"}, "window": "2d"}],
            "budgets": "nope",
        },
    )
    with pytest.raises(ConfigError) as err:
        parse_config(doc, {})
    assert "rate_limits[0]: set requests, tokens or both" in err.value.problems
    assert "rate_limits[0].window: must be between 1s and 24h (got '2d')" in err.value.problems
    assert "rate_limits[0].action: must be one of block, monitor (got None)" in err.value.problems
    assert "budgets: must be a list" in err.value.problems
