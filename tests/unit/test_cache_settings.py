"""The `cache` section: defaults, a full example, and every problem reported with its path."""

from __future__ import annotations

from typing import Any

import yaml

from gateway_extproc.budgets.model import Match
from gateway_extproc.cache.settings import CacheConfig, CacheRule, CacheScope, parse_cache
from gateway_extproc.config.gateway import load_config, load_document, merge, parse_config
from tests.paths import doc_example


def parse(doc: Any) -> tuple[CacheConfig, list[str]]:
    problems: list[str] = []
    return parse_cache(doc, problems), problems


def test_absent_section_is_off() -> None:
    config, problems = parse(None)
    assert config == CacheConfig() and not config.enabled and problems == []


def test_full_example() -> None:
    config, problems = parse(
        {
            "max_entry_bytes": 4096,
            "max_total_bytes": 1 << 20,
            "rules": [
                {"name": "eng-cache", "match": {"groups": ["eng"]}, "ttl": "1h"},
                {"name": "shared", "ttl": "30s", "scope": "global", "side_effect_tools": True},
            ],
        }
    )
    assert problems == []
    assert config == CacheConfig(
        (
            CacheRule("eng-cache", Match(groups=frozenset({"eng"})), 3600, CacheScope.USER),
            CacheRule("shared", Match(), 30, CacheScope.GLOBAL, side_effect_tools=True),
        ),
        4096,
        1 << 20,
    )
    assert config.enabled


def test_every_problem_at_once() -> None:
    _, problems = parse(
        {
            "max_entry_bytes": 10,
            "max_total_bytes": "big",
            "redis": "redis://elsewhere",
            "rules": [
                {"name": "Bad Name", "ttl": "forever", "scope": "team", "side_effect_tools": "no"},
                {"name": "ok", "ttl": "31d", "match": {"groups": "eng", "colour": ["x"]}},
                {"name": "dup", "ttl": "1m"},
                {"name": "dup", "ttl": "1m"},
                "not-a-rule",
            ],
        }
    )
    assert problems == [
        "cache.redis: unknown key",
        "cache.max_entry_bytes: must be an integer number of bytes in [1024, 2^40] (got 10)",
        "cache.max_total_bytes: must be an integer number of bytes in [1024, 2^40] (got 'big')",
        "cache.rules[0].name: must match [a-z0-9][a-z0-9_-]{0,63} (got 'Bad Name')",
        "cache.rules[0].ttl: must be a duration like 90m, 24h or 7d (got 'forever')",
        "cache.rules[0].scope: must be one of user, group, global (got 'team')",
        "cache.rules[0].side_effect_tools: must be true or false (got 'no')",
        "cache.rules[1].match.colour: unknown key",
        "cache.rules[1].match.groups: must be a non-empty list of non-empty strings",
        "cache.rules[1].ttl: must be at most 30d (got '31d')",
        "cache.rules[3].name: 'dup' is used twice",
        "cache.rules[4]: must be a mapping",
    ]


def test_entry_cap_within_total_cap_and_rules_a_list() -> None:
    _, problems = parse({"max_entry_bytes": 1 << 20, "max_total_bytes": 1 << 19, "rules": {}})
    assert problems == [
        "cache.max_entry_bytes: must not exceed max_total_bytes (524288)",
        "cache.rules: must be a list",
    ]


def test_the_gateway_config_reads_the_section() -> None:
    config = load_config(None, {})
    assert config.cache == CacheConfig()


def test_the_readme_example_loads() -> None:
    block = doc_example("cache-example")
    config = parse_config(merge(load_document(None), yaml.safe_load(block)), {})
    assert [r.name for r in config.cache.rules] == ["eng-cache"]
    assert config.cache.rules[0].ttl_s == 3600
