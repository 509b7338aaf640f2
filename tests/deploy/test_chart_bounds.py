"""The chart lets an operator set the memory and time bounds (docs/security.md, "Memory and time
bounds on the response side"), and its schema refuses values the sidecar would refuse."""

from __future__ import annotations

import helm_python as helm
import pytest

from tests.deploy.pod import render
from tests.deploy.test_chart_render import gateway_config


def test_the_bounds_reach_the_gateway_config() -> None:
    values = {
        "config": {
            "limits": {"guardrail_scan_timeout_ms": 500},
            "metering": {"max_json_body_bytes": 4194304},
        }
    }
    config = gateway_config(render(values))
    assert config["limits"]["guardrail_scan_timeout_ms"] == 500
    assert config["metering"]["max_json_body_bytes"] == 4194304


@pytest.mark.parametrize(
    ("values", "path"),
    [
        ({"limits": {"guardrail_scan_timeout_ms": 5}}, "/config/limits/guardrail_scan_timeout_ms"),
        ({"metering": {"max_json_body_bytes": 1024}}, "/config/metering/max_json_body_bytes"),
        ({"metering": {"mode": "synchronous"}}, "/config/metering"),
    ],
)
def test_the_schema_refuses_bad_bounds(values: dict[str, object], path: str) -> None:
    with pytest.raises(helm.errors.HelmValuesError, match=path):
        render({"config": values})
