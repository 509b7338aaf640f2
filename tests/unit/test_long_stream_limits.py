"""The generated defaults that decide whether a long LLM stream runs to its end: no timer in the
bootstrap bounds a response's total time, and the idle timers and the reservation lease have the
documented defaults. tests/e2e/test_streams.py::test_a_stream_longer_than_every_timer_is_not_cut
runs a stream past each of them with the values lowered; this pins the defaults it does not run
(that stream replaced one of three minutes on the defaults)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway_extproc.budgets.loader import BudgetStoreConfig
from gateway_extproc.config.gateway import GatewayConfig, load_config
from gateway_extproc.config.upstreams import resolve_upstreams
from gateway_extproc.envoy.bootstrap import EnvoyPorts, build
from gateway_extproc.runtime import gate_settings
from tests.sidecar_secrets import ACCESS

PORTS = EnvoyPorts(
    listen_host="127.0.0.1",
    listen_port=10000,
    admin_port=9901,
    sidecar_host="127.0.0.1",
    sidecar_ports=(50051, 50052),
)
# The shapes whose routes differ: observe mode (a second route for responses metered on the
# request's stream), synchronous mode, and fallback chains (a route per chain cluster).
SHAPES = {
    "observe": "",
    "synchronous": "metering: {mode: synchronous}\n",
    "chains": "fallback:\n  chains:\n    gpt-4o: [openai/gpt-4o, anthropic/claude-haiku-4-5]\n",
}


def _load(tmp_path: Path, text: str) -> GatewayConfig:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return load_config(path, {})


@pytest.fixture(params=sorted(SHAPES))
def shape(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[GatewayConfig, dict[str, Any]]:
    config = _load(tmp_path, SHAPES[request.param])
    upstreams = resolve_upstreams(config, {}, None, assume_credentials=True)
    return config, build(config, PORTS, upstreams.values(), "/etc/ssl/certs/ca.crt", ACCESS)


def _hcm(bootstrap: dict[str, Any]) -> dict[str, Any]:
    (listener,) = bootstrap["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (manager,) = chain["filters"]
    return dict(manager["typed_config"])


def _keys(node: object, path: str = "") -> Iterator[tuple[str, object]]:
    """Every (path, value) in a nested bootstrap."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{path}.{key}", value
            yield from _keys(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _keys(value, f"{path}[{i}]")


def test_no_route_has_an_overall_timeout(shape: tuple[GatewayConfig, dict[str, Any]]) -> None:
    """Envoy's default route timeout is 15 s: every gateway route sets it off ("0s"), and cuts
    only an idle stream (its idle timeout is the listener's, 600 s by default)."""
    config, bootstrap = shape
    hcm = _hcm(bootstrap)
    (vhost,) = hcm["route_config"]["virtual_hosts"]
    routing = [r for r in vhost["routes"] if "route" in r]  # not the well-known direct response
    assert routing, "no route"
    for route in routing:
        assert route["route"]["timeout"] == "0s", route["match"]
        assert route["route"]["idle_timeout"] == "600s"
    assert hcm["stream_idle_timeout"] == "600s"
    assert config.limits.stream_idle_timeout_s == 600


def test_no_timer_bounds_a_whole_stream(shape: tuple[GatewayConfig, dict[str, Any]]) -> None:
    """Nothing anywhere in the bootstrap caps a stream's or a connection's total duration; the
    client-side timers bound the request's arrival (`request_timeout`, 300 s, disarmed once it
    went upstream) and a connection without a request in flight (`idle_timeout`, 75 s)."""
    _, bootstrap = shape
    capped = [
        path
        for path, _ in _keys(bootstrap)
        if path.rsplit(".", 1)[-1] in ("max_stream_duration", "max_connection_duration")
    ]
    assert capped == []
    hcm = _hcm(bootstrap)
    assert hcm["request_timeout"] == "300s"
    assert hcm["common_http_protocol_options"]["idle_timeout"] == "75s"


def test_a_lease_is_renewed_well_within_its_default_length(tmp_path: Path) -> None:
    """A long stream's reservation holds a lease of 120 s, renewed every lease_s / 3 while the
    response runs (budgets/leases.py); the reaper charges a lease that ran out."""
    assert BudgetStoreConfig().lease_s == 120
    settings = gate_settings(_load(tmp_path, ""))
    assert settings.lease_s == 120.0 and settings.reap_interval_s == 10.0
