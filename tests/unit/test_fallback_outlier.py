"""`fallback.outlier` and `fallback.circuit_breakers` (config/outlier.py): parsed with every
problem's path, and generated into every chain cluster (envoy/clusters.py `chain_health`) in a
shape Envoy 1.40 accepts. What Envoy does with it is proven by
tests/e2e/test_envoy_upstream_extproc.py and tests/e2e/test_fallback_outlier.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway_extproc.config.gateway import load_config
from gateway_extproc.config.outlier import BreakerConfig, OutlierConfig
from gateway_extproc.config.upstreams import resolve_upstreams
from gateway_extproc.envoy.bootstrap import build, render
from gateway_extproc.errors import ConfigError
from gateway_extproc.stack import validate_envoy_config
from tests.sidecar_secrets import ACCESS
from tests.unit.test_envoy_config import CA_FILE, MOCK, PORTS

CHAINS = {"gpt-4o": ["openai/gpt-4o", "openai/gpt-4o-mini"]}


def _load(tmp_path: Path, **fallback: Any) -> Any:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"fallback": {"chains": CHAINS, **fallback}}))
    return load_config(path, {})


def _problems(tmp_path: Path, **fallback: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, **fallback)
    return info.value.problems


def _clusters(config: Any) -> dict[str, dict[str, Any]]:
    upstreams = resolve_upstreams(config, {}, None, assume_credentials=True)
    b = build(config, PORTS, upstreams.values(), CA_FILE, ACCESS)
    return {c["name"]: c for c in b["static_resources"]["clusters"]}


def test_defaults_what_a_platform_team_expects(tmp_path: Path) -> None:
    fallback = _load(tmp_path).fallback
    assert fallback.outlier == OutlierConfig(5, 5, 10.0, 30.0, 300.0)
    assert fallback.breakers == BreakerConfig(1_000_000, 1_000_000, 1_000_000, None)


def test_custom_values_and_off(tmp_path: Path) -> None:
    fallback = _load(
        tmp_path,
        outlier={"consecutive_5xx": 2, "base_ejection_s": 0.5, "interval_s": 0.1},
        circuit_breakers={"max_retries": 50, "max_connections_per_target": 64},
    ).fallback
    assert fallback.outlier == OutlierConfig(2, 5, 0.1, 0.5, 300.0)
    assert fallback.breakers == BreakerConfig(1_000_000, 1_000_000, 50, 64)
    assert _load(tmp_path, outlier=False).fallback.outlier is None


def test_every_problem_with_its_path(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        outlier={
            "consecutive_5xx": 0,
            "base_ejection_s": 60,
            "max_ejection_s": 10,
            "interval_s": "1s",
            "eject": 1,
        },
        circuit_breakers={"max_requests": -1, "max_pending": True, "per_priority": 1},
    )
    assert sorted(problems) == sorted(
        [
            "fallback.outlier.eject: unknown key",
            "fallback.outlier.consecutive_5xx: must be an integer in [1, 1000] (got 0)",
            "fallback.outlier.interval_s: must be in (0, 86400] seconds (got '1s')",
            "fallback.outlier.max_ejection_s: must be at least base_ejection_s (60.0)",
            "fallback.circuit_breakers.per_priority: unknown key",
            "fallback.circuit_breakers.max_requests: must be an integer in [1, 4294967295]"
            " (got -1)",
            "fallback.circuit_breakers.max_pending: must be an integer in [1, 4294967295]"
            " (got True)",
        ]
    )
    assert _problems(tmp_path, outlier=[1]) == [
        "fallback.outlier: must be false or a mapping of consecutive_5xx, "
        "consecutive_local_origin_failure, interval_s, base_ejection_s, max_ejection_s"
    ]


def test_every_chain_cluster_has_them(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        outlier={
            "consecutive_5xx": 3,
            "consecutive_local_origin_failure": 2,
            "base_ejection_s": 1.5,
        },
        circuit_breakers={"max_requests": 500, "max_connections_per_target": 64},
    )
    cluster = _clusters(config)["chain_gpt-4o"]
    assert cluster["outlier_detection"] == {
        "consecutive_5xx": 3,
        "split_external_local_origin_errors": True,
        "consecutive_local_origin_failure": 2,
        "interval": "10s",
        "base_ejection_time": "1.5s",
        "max_ejection_time": "300s",
        "max_ejection_percent": 100,
    }
    assert cluster["circuit_breakers"] == {
        "thresholds": [
            {
                "priority": "DEFAULT",
                "max_requests": 500,
                "max_pending_requests": 1_000_000,
                "max_retries": 1_000_000,
            }
        ],
        "per_host_thresholds": [{"priority": "DEFAULT", "max_connections": 64}],
    }


def test_off_leaves_no_outlier_detection_and_providers_untouched(tmp_path: Path) -> None:
    clusters = _clusters(_load(tmp_path, outlier=False))
    assert "outlier_detection" not in clusters["chain_gpt-4o"]
    assert "per_host_thresholds" not in clusters["chain_gpt-4o"]["circuit_breakers"]
    on = _clusters(_load(tmp_path))
    assert "outlier_detection" in on["chain_gpt-4o"]
    # A model's own provider cluster (the unchained path) is unchanged.
    assert on["provider_openai"] == clusters["provider_openai"]
    assert "outlier_detection" not in on["provider_openai"]


@pytest.mark.parametrize("mocked", [False, True])
def test_envoy_accepts_it(tmp_path: Path, mocked: bool) -> None:
    config = _load(
        tmp_path,
        outlier={"consecutive_5xx": 2, "interval_s": 0.1, "base_ejection_s": 0.5},
        circuit_breakers={"max_retries": 10, "max_connections_per_target": 8},
    )
    upstreams = (
        resolve_upstreams(config, {}, MOCK)
        if mocked
        else resolve_upstreams(config, {}, None, assume_credentials=True)
    )
    path = tmp_path / "envoy.yaml"
    path.write_text(render(build(config, PORTS, upstreams.values(), CA_FILE, ACCESS)))
    validate_envoy_config(path)  # raises StackError with Envoy's complaint
