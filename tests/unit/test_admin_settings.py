"""`admin_api:` and `spend:`: defaults, and every problem reported with its path."""

from __future__ import annotations

import pytest

from gateway_extproc.admin.settings import AdminApiConfig, parse_admin_api, parse_spend
from gateway_extproc.config import load_document, merge, parse_config
from gateway_extproc.errors import ConfigError
from gateway_extproc.spend.rollup import RollupSettings


def test_defaults_come_from_the_built_in_config() -> None:
    config = parse_config(load_document(None), {})
    assert config.admin_api == AdminApiConfig()
    assert not config.admin_api.enabled and config.admin_api.host == "127.0.0.1"
    assert config.spend == RollupSettings("UTC", 400)


def test_every_problem_is_reported_with_its_path() -> None:
    doc = merge(
        load_document(None),
        {
            "admin_api": {
                "enabled": "yes",
                "port": 70000,
                "read_groups": "finance",
                "colour": 1,
            },
            "spend": {"timezone": "Mars/Olympus", "retention_days": 0},
        },
    )
    with pytest.raises(ConfigError) as info:
        parse_config(doc, {})
    text = str(info.value)
    for expected in (
        "admin_api.colour: unknown key",
        "admin_api.enabled: must be true or false",
        "admin_api.port: must be an integer in [0, 65535]",
        "admin_api.read_groups: must be a list of group names",
        "spend.timezone: must be an IANA time zone",
        "spend.retention_days: must be an integer in [1, 3660]",
    ):
        assert expected in text


def test_an_enabled_api_needs_a_write_group() -> None:
    problems: list[str] = []
    parsed = parse_admin_api({"enabled": True, "write_groups": []}, problems)
    assert problems == ["admin_api.write_groups: must name at least one group"]
    assert parsed.enabled
    assert parse_spend({"timezone": "Europe/Berlin"}, problems).timezone == "Europe/Berlin"
