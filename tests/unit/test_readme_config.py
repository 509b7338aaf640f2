"""The configuration the README and `make run` ship is a working configuration."""

from __future__ import annotations

import re

import yaml

from gateway_extproc.budgets.model import Action, ScopeKind
from gateway_extproc.config import load_config, load_document, merge, parse_config
from tests.paths import REPO


def test_readme_budgets_example_loads_with_the_shipped_catalog() -> None:
    readme = (REPO / "README.md").read_text()
    block = re.search(
        r"<!-- budgets-example:start -->\s*```yaml\n(.*?)```\s*<!-- budgets-example:end -->",
        readme,
        re.S,
    )
    assert block is not None
    config = parse_config(merge(load_document(None), yaml.safe_load(block.group(1))), {})
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
    config = load_config(REPO / "config" / "local.yaml", {})
    assert config.dev_issuer
    assert {b.name for b in config.budgets} == {"demo-gpt4o-daily", "demo-interns-daily"}
