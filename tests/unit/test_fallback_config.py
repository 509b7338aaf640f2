"""The `fallback:` section: chains of provider/model targets, triggers, timeouts and attempts,
validated at load with every other problem (config/fallback.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway_extproc.config.fallback import DEFAULT_TRIGGERS, Target, Trigger, cluster_name
from gateway_extproc.config.gateway import load_config
from gateway_extproc.errors import ConfigError


def _load(tmp_path: Path, fallback: Any) -> Any:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"fallback": fallback}))
    return load_config(path, {})


def _problems(tmp_path: Path, fallback: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, fallback)
    return info.value.problems


def test_no_section_no_chains(tmp_path: Path) -> None:
    config = load_config(None, {})
    assert config.fallback.chains == {}
    assert config.fallback.chain_for("gpt-4o") is None


def test_a_chain_across_providers_and_schemas(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        {
            "max_attempts": 2,
            "first_byte_timeout_s": 1.5,
            "on": ["5xx", "429"],
            "chains": {
                "gpt-4o": ["openai/gpt-4o", "azure/gpt-4o", "anthropic/claude-sonnet-4-5"],
            },
        },
    )
    fallback = config.fallback
    chain = fallback.chain_for("gpt-4o")
    assert chain == (
        Target("openai", "gpt-4o"),
        Target("azure", "azure/gpt-4o"),
        Target("anthropic", "claude-sonnet-4-5"),
    )
    assert [t.name for t in chain] == [
        "openai/gpt-4o",
        "azure/gpt-4o",
        "anthropic/claude-sonnet-4-5",
    ]
    assert fallback.on == {Trigger.SERVER_ERROR, Trigger.RATE_LIMITED}
    assert (fallback.first_byte_timeout_s, fallback.max_attempts) == (1.5, 2)
    assert fallback.attempts(chain) == 2
    assert cluster_name("gpt-4o") == "chain_gpt-4o"
    assert cluster_name("azure/gpt-4o") == "chain_azure_gpt-4o"


def test_defaults(tmp_path: Path) -> None:
    fallback = _load(tmp_path, {"chains": {"gpt-4o": ["openai/gpt-4o", "openai/gpt-4o-mini"]}})
    fallback = fallback.fallback
    assert fallback.on == DEFAULT_TRIGGERS
    assert (fallback.first_byte_timeout_s, fallback.max_attempts) == (20.0, 3)
    assert fallback.attempts(fallback.chains["gpt-4o"]) == 2  # never more than the chain


def test_every_problem_reported_with_its_path(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        {
            "max_attempts": 1,
            "first_byte_timeout_s": 0,
            "on": ["5xx", "teapot"],
            "keys": [],
            "chains": {
                "gpt-4o": [
                    "openai/gpt-4o",
                    "openai/no-such-model",
                    "anthropic/gpt-4o-mini",
                    "gpt-4o-mini",
                    "nowhere/gpt-4o-mini",
                ],
                "gpt-4o-mini": ["openai/gpt-4o"],
                "not-a-model": ["openai/gpt-4o", "openai/gpt-4o-mini"],
                "gpt-4.1": ["openai/gpt-4o", "openai/gpt-4.1"],
                "gpt-4.1-mini": ["openai/gpt-4.1-mini", "openai/text-embedding-3-small"],
            },
        },
    )
    assert sorted(problems) == sorted(
        [
            "fallback.keys: unknown key",
            "fallback.on[1]: must be one of 429, 5xx, connect_failure, first_byte_timeout, reset",
            "fallback.first_byte_timeout_s: must be in (0, 600] seconds (got 0)",
            "fallback.max_attempts: must be an integer in [2, 10] (got 1)",
            "fallback.chains.gpt-4o[1]: 'no-such-model' is not a catalog model",
            "fallback.chains.gpt-4o[2]: gpt-4o-mini is served by openai, not anthropic",
            "fallback.chains.gpt-4o[3]: must be provider/model (got 'gpt-4o-mini')",
            "fallback.chains.gpt-4o[4]: gpt-4o-mini is served by openai, not nowhere",
            "fallback.chains.gpt-4o-mini: must be a list of at least two targets (provider/model)",
            "fallback.chains.not-a-model: 'not-a-model' is not a catalog model",
            "fallback.chains.gpt-4.1[0]: must be 'gpt-4.1' itself (the model the client asked for)",
            "fallback.chains.gpt-4.1-mini[1]: text-embedding-3-small is an embedding model: "
            "chains serve chats",
        ]
    )


def test_a_cross_schema_target_needs_a_translation(tmp_path: Path) -> None:
    """Messages -> Chat is not a pair the gateway translates (only Chat -> Messages is)."""
    problems = _problems(
        tmp_path,
        {"chains": {"claude-sonnet-4-5": ["anthropic/claude-sonnet-4-5", "openai/gpt-4o"]}},
    )
    assert problems == [
        "fallback.chains.claude-sonnet-4-5[1]: no translation from the anthropic API to openai "
        "(gpt-4o)"
    ]
