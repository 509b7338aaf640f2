"""Envoy at the edge in the generated bootstrap: every `limits` key lands where Envoy reads it,
bad values are reported with their path, the admin and ops listeners stay reachable at the
connection cap, TLS gets the first-byte timeout too, and Envoy accepts every variant (`envoy
--mode validate`). The behaviour itself is tested end to end in tests/e2e/test_edge.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway_extproc.config.gateway import Limits, load_config, load_document, merge, parse_config
from gateway_extproc.config.upstreams import resolve_upstreams
from gateway_extproc.envoy.bootstrap import EnvoyPorts, build, render
from gateway_extproc.envoy.edge import (
    CONNECTIONS_MONITOR,
    MEMORY_MONITOR,
    OPERATIONS_RESERVE,
    connection_manager_settings,
    listener_settings,
    overload_manager,
)
from gateway_extproc.envoy.ops import ops_listener, with_downstream_tls
from gateway_extproc.errors import ConfigError
from gateway_extproc.stack import validate_envoy_config
from tests.sidecar_secrets import ACCESS

CA_FILE = "/etc/ssl/certs/ca-certificates.crt"
MOCK = "http://127.0.0.1:18081/v1"
PORTS = EnvoyPorts("127.0.0.1", 10000, 9901, "127.0.0.1", (50051,), ops_port=9902)

# Non-default values for every edge key, and where each must land.
CUSTOM = {
    "max_request_body_bytes": 8 << 20,
    "max_downstream_connections": 500,
    "first_byte_timeout_s": 3,
    "request_headers_timeout_s": 4,
    "request_timeout_s": 120,
    "connection_idle_timeout_s": 30,
    "http2_max_concurrent_streams": 20,
    "http2_connection_window_bytes": 4 << 20,
    "headers_with_underscores": "drop",
    "envoy_memory_limit_bytes": 768 << 20,
}


def bootstrap(limits: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"limits": limits}))
    config = load_config(path, {})
    return build(config, PORTS, resolve_upstreams(config, {}, MOCK).values(), CA_FILE, ACCESS)


def listeners(b: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {x["name"]: x for x in b["static_resources"]["listeners"]}


def hcm(listener: dict[str, Any]) -> dict[str, Any]:
    (chain,) = listener["filter_chains"]
    (manager,) = chain["filters"]
    config: dict[str, Any] = manager["typed_config"]
    return config


def monitor(b: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [m for m in b["overload_manager"]["resource_monitors"] if m["name"] == name]
    config: dict[str, Any] = found["typed_config"]
    return config


def client_cap(b: dict[str, Any]) -> int:
    """The clients' listener's own connection cap (a runtime key)."""
    (layer,) = b["layered_runtime"]["layers"]
    cap: int = layer["static_layer"]["envoy.resource_limits.listener.gateway.connection_limit"]
    return cap


def validate(tmp_path: Path, b: dict[str, Any]) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(render(b))
    validate_envoy_config(path)


def test_defaults_follow_the_edge_best_practices(tmp_path: Path) -> None:
    b = bootstrap({}, tmp_path)
    gateway = listeners(b)["gateway"]
    assert gateway["per_connection_buffer_limit_bytes"] == 32 << 20  # the body limit: measured
    assert [f["name"] for f in gateway["listener_filters"]] == [
        "envoy.filters.listener.http_inspector"
    ]
    assert gateway["listener_filters_timeout"] == "10s"
    assert gateway["continue_on_listener_filters_timeout"] is False
    manager = hcm(gateway)
    assert manager["use_remote_address"] is True and manager["xff_num_trusted_hops"] == 0
    assert manager["request_headers_timeout"] == "10s"
    assert manager["request_timeout"] == "300s"
    assert manager["common_http_protocol_options"] == {
        "idle_timeout": "75s",
        "headers_with_underscores_action": "REJECT_REQUEST",
    }
    assert manager["http2_protocol_options"] == {
        "max_concurrent_streams": 100,
        "initial_stream_window_size": 32 << 20,
        "initial_connection_window_size": 1 << 20,
    }
    assert manager["stream_idle_timeout"] == "600s"  # streams: idle cut only
    assert client_cap(b) == 10_000
    assert monitor(b, CONNECTIONS_MONITOR)["max_active_downstream_connections"] == 10_064
    assert "max_memory_bytes" not in monitor(b, MEMORY_MONITOR)  # the container's cgroup limit
    validate(tmp_path, b)


def test_every_edge_key_lands_where_envoy_reads_it(tmp_path: Path) -> None:
    b = bootstrap(CUSTOM, tmp_path)
    gateway = listeners(b)["gateway"]
    manager = hcm(gateway)
    landed = {
        "max_request_body_bytes": gateway["per_connection_buffer_limit_bytes"],
        "max_downstream_connections": client_cap(b),
        "first_byte_timeout_s": gateway["listener_filters_timeout"],
        "request_headers_timeout_s": manager["request_headers_timeout"],
        "request_timeout_s": manager["request_timeout"],
        "connection_idle_timeout_s": manager["common_http_protocol_options"]["idle_timeout"],
        "http2_max_concurrent_streams": manager["http2_protocol_options"]["max_concurrent_streams"],
        "http2_connection_window_bytes": manager["http2_protocol_options"][
            "initial_connection_window_size"
        ],
        "headers_with_underscores": manager["common_http_protocol_options"][
            "headers_with_underscores_action"
        ],
        "envoy_memory_limit_bytes": monitor(b, MEMORY_MONITOR)["max_memory_bytes"],
    }
    expected = {k: (f"{v}s" if k.endswith("_s") else v) for k, v in CUSTOM.items()} | {
        "headers_with_underscores": "DROP_HEADER"
    }
    assert landed == expected
    # Each HTTP/2 stream may carry a whole body, as on HTTP/1.
    assert manager["http2_protocol_options"]["initial_stream_window_size"] == 8 << 20
    validate(tmp_path, b)


@pytest.mark.parametrize(("action", "envoy"), [("allow", "ALLOW"), ("reject", "REJECT_REQUEST")])
def test_underscore_actions(action: str, envoy: str) -> None:
    limits = Limits(headers_with_underscores=action)
    options = connection_manager_settings(limits)["common_http_protocol_options"]
    assert options["headers_with_underscores_action"] == envoy


def test_no_request_timeout_when_zero() -> None:
    assert "request_timeout" not in connection_manager_settings(Limits(request_timeout_s=0))


def test_a_small_body_limit_keeps_the_smallest_legal_stream_window() -> None:
    limits = Limits(max_request_body_bytes=4096)
    options = connection_manager_settings(limits)["http2_protocol_options"]
    assert options["initial_stream_window_size"] == 65_535  # HTTP/2's minimum
    assert listener_settings(limits)["per_connection_buffer_limit_bytes"] == 4096


def test_overload_actions_shed_by_memory_in_order() -> None:
    """Cheaper actions first: shorter idle timeouts, then no keep-alive and heap release, then
    resetting the largest streams, then refusing new requests."""
    manager = overload_manager(Limits())
    actions = {a["name"].rsplit(".", 1)[1]: a["triggers"] for a in manager["actions"]}
    assert set(actions) == {
        "reduce_timeouts",
        "disable_http_keepalive",
        "shrink_heap",
        "reset_high_memory_stream",
        "stop_accepting_requests",
    }

    def start(triggers: list[dict[str, Any]]) -> float:
        (trigger,) = triggers
        assert trigger["name"] == MEMORY_MONITOR  # never the connection count: Envoy cannot
        value = trigger.get("threshold", {}).get("value")
        return float(value if value is not None else trigger["scaled"]["scaling_threshold"])

    order = sorted(actions, key=lambda name: start(actions[name]))
    assert order[0] == "reduce_timeouts" and order[-1] == "stop_accepting_requests"
    assert start(actions["stop_accepting_requests"]) < 1
    assert manager["buffer_factory_config"] == {"minimum_account_to_track_power_of_two": 20}


def test_clients_cannot_take_the_connections_of_the_probes(tmp_path: Path) -> None:
    """The clients' listener has its own cap; Envoy's global one is larger by a reserve that
    only the ops listener (probes, Prometheus) and the admin (the drain hook) can use. No
    listener opts out of the global cap: Envoy 1.40 miscounts those that do."""
    b = bootstrap({"max_downstream_connections": 500}, tmp_path)
    assert client_cap(b) == 500
    total = monitor(b, CONNECTIONS_MONITOR)["max_active_downstream_connections"]
    assert total == 500 + OPERATIONS_RESERVE
    assert "ignore_global_conn_limit" not in b["admin"]
    for listener in listeners(b).values():
        assert "ignore_global_conn_limit" not in listener
    ops = listeners(b)["ops"]
    assert ops["per_connection_buffer_limit_bytes"] == 32 * 1024
    assert ops == ops_listener("127.0.0.1", 9902, "gateway_extproc")
    validate(tmp_path, b)


def test_tls_inspects_the_client_hello_within_the_first_byte_timeout(tmp_path: Path) -> None:
    b = bootstrap({"first_byte_timeout_s": 5}, tmp_path)
    with_downstream_tls(b, "/tls/tls.crt", "/tls/tls.key")
    gateway = listeners(b)["gateway"]
    assert [f["name"] for f in gateway["listener_filters"]] == [
        "envoy.filters.listener.tls_inspector"
    ]
    assert gateway["listener_filters_timeout"] == "5s"
    (chain,) = gateway["filter_chains"]
    assert chain["transport_socket_connect_timeout"] == "5s"  # the handshake, too
    assert chain["transport_socket"]["name"] == "envoy.transport_sockets.tls"


BAD = [
    ({"first_byte_timeout_s": 0}, "limits.first_byte_timeout_s: must be an integer in [1, 600]"),
    (
        {"request_headers_timeout_s": "10s"},
        "limits.request_headers_timeout_s: must be an integer in [1, 3600] (got '10s')",
    ),
    ({"request_timeout_s": -1}, "limits.request_timeout_s: must be an integer in [0, 86400]"),
    (
        {"connection_idle_timeout_s": 0},
        "limits.connection_idle_timeout_s: must be an integer in [1, 86400]",
    ),
    (
        {"http2_max_concurrent_streams": 0},
        "limits.http2_max_concurrent_streams: must be an integer in [1, 2147483647]",
    ),
    (
        {"http2_connection_window_bytes": 1024},
        "limits.http2_connection_window_bytes: must be an integer in [65535, 2147483647]",
    ),
    (
        {"headers_with_underscores": "strip"},
        "limits.headers_with_underscores: must be one of reject, drop, allow (got 'strip')",
    ),
    (
        {"envoy_memory_limit_bytes": True},
        "limits.envoy_memory_limit_bytes: must be an integer in [0, 1125899906842624]",
    ),
]


def test_every_bad_edge_value_is_reported_with_its_path() -> None:
    doc = merge(load_document(None), {"limits": {k: v for case, _ in BAD for k, v in case.items()}})
    with pytest.raises(ConfigError) as err:
        parse_config(doc, {})
    for _, problem in BAD:
        assert [p for p in err.value.problems if p.startswith(problem)], problem
    assert len(err.value.problems) == len(BAD)
