"""The generated Envoy bootstrap: the properties the gateway relies on, and `envoy --mode
validate` on every shape it produces (the production one, mocked providers, a self-hosted one)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway_extproc.budgets.report import RESPONSE_HEADERS
from gateway_extproc.config.gateway import GatewayConfig, load_config
from gateway_extproc.config.upstreams import Upstream, resolve_upstreams
from gateway_extproc.envoy.bootstrap import EnvoyPorts, build, render
from gateway_extproc.envoy.edge import OPERATIONS_RESERVE
from gateway_extproc.envoy.filters import EXTPROC_CLUSTER, SidecarAccess
from gateway_extproc.handoff import NAMESPACE
from gateway_extproc.request.forward import (
    METADATA_RESPONSE_HEADERS,
    RESPONSE_METERED_HERE,
    RESPONSE_METERED_KEY,
)
from gateway_extproc.request.route import CLUSTER_HEADER
from gateway_extproc.server import GRPC_MESSAGE_SLACK, SERVICE_NAME
from gateway_extproc.stack import StackError, validate_envoy_config
from tests.paths import REPO
from tests.selfsigned import CertAuthority
from tests.sidecar_secrets import ACCESS, CALLER_TOKEN

CA_FILE = "/etc/ssl/certs/ca-certificates.crt"
MOCK = "http://127.0.0.1:18081/v1"
PORTS = EnvoyPorts(
    listen_host="127.0.0.1",
    listen_port=10000,
    admin_port=9901,
    sidecar_host="127.0.0.1",
    sidecar_ports=(50051, 50052),
)


def bootstrap(config: GatewayConfig, upstreams: dict[str, Upstream]) -> dict[str, Any]:
    return build(config, PORTS, upstreams.values(), CA_FILE, ACCESS)


@pytest.fixture(scope="module")
def config() -> GatewayConfig:
    return load_config(None, {})


@pytest.fixture(scope="module")
def production(config: GatewayConfig) -> dict[str, Any]:
    return bootstrap(config, resolve_upstreams(config, {}, None, assume_credentials=True))


@pytest.fixture(scope="module")
def synchronous(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("sync") / "gateway.yaml"
    path.write_text("metering: {mode: synchronous}\n")
    cfg = load_config(path, {})
    return bootstrap(cfg, resolve_upstreams(cfg, {}, None, assume_credentials=True))


@pytest.fixture(scope="module")
def mocked(config: GatewayConfig) -> dict[str, Any]:
    return bootstrap(config, resolve_upstreams(config, {}, MOCK))


@pytest.fixture(scope="module")
def self_hosted(tmp_path_factory: pytest.TempPathFactory) -> tuple[GatewayConfig, dict[str, Any]]:
    path = tmp_path_factory.mktemp("cfg") / "gateway.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "limits": {"max_request_body_bytes": 65536, "ext_proc_message_timeout_ms": 750},
                "providers": {
                    "vllm": {
                        "schema": "openai",
                        "base_url": "http://127.0.0.1:8000/v1",
                        "auth": None,
                    }
                },
            }
        )
    )
    cfg = load_config(path, {})
    return cfg, bootstrap(cfg, resolve_upstreams(cfg, {"OPENAI_API_KEY": "sk-x"}, MOCK))


# --- finding things in a bootstrap ---------------------------------------------------------------


def listener(b: dict[str, Any]) -> dict[str, Any]:
    (only,) = b["static_resources"]["listeners"]
    return only


def hcm(b: dict[str, Any]) -> dict[str, Any]:
    (chain,) = listener(b)["filter_chains"]
    (manager,) = chain["filters"]
    assert manager["name"] == "envoy.filters.network.http_connection_manager"
    return manager["typed_config"]


def all_routes(b: dict[str, Any]) -> list[dict[str, Any]]:
    (vhost,) = hcm(b)["route_config"]["virtual_hosts"]
    return list(vhost["routes"])


def routes(b: dict[str, Any]) -> list[dict[str, Any]]:
    """The routes to providers (after /.well-known/llm-gateway, which Envoy answers itself)."""
    first, *rest = all_routes(b)
    assert first["name"] == "well_known_llm_gateway"
    return rest


def route(b: dict[str, Any]) -> dict[str, Any]:
    """The route of every request the observer meters (the last: the one without a metadata
    match)."""
    *_, last = routes(b)
    assert "dynamic_metadata" not in last["match"]
    return last


def http_filter(b: dict[str, Any], name: str) -> dict[str, Any]:
    found = [f["typed_config"] for f in hcm(b)["http_filters"] if f["name"] == name]
    assert len(found) == 1, name
    return found[0]


def cluster(b: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in b["static_resources"]["clusters"] if c["name"] == name]
    assert len(found) == 1, name
    return found[0]


def cluster_names(b: dict[str, Any]) -> list[str]:
    return [c["name"] for c in b["static_resources"]["clusters"]]


def endpoint(c: dict[str, Any]) -> dict[str, Any]:
    (group,) = c["load_assignment"]["endpoints"]
    (lb,) = group["lb_endpoints"]
    return lb["endpoint"]


# --- properties --------------------------------------------------------------------------------


def test_admin_on_loopback(production: dict[str, Any], mocked: dict[str, Any]) -> None:
    for b in (production, mocked):
        assert b["admin"]["address"] == {
            "socket_address": {"address": "127.0.0.1", "port_value": 9901}
        }


def test_listener(config: GatewayConfig, production: dict[str, Any]) -> None:
    lst = listener(production)
    assert lst["address"] == {"socket_address": {"address": "127.0.0.1", "port_value": 10000}}
    assert lst["per_connection_buffer_limit_bytes"] == config.limits.max_request_body_bytes
    overload = production["overload_manager"]["resource_monitors"][0]["typed_config"]
    assert overload["max_active_downstream_connections"] == 10000 + OPERATIONS_RESERVE
    (layer,) = production["layered_runtime"]["layers"]
    assert layer["static_layer"] == {
        "envoy.resource_limits.listener.gateway.connection_limit": 10000
    }


def test_route(config: GatewayConfig, production: dict[str, Any]) -> None:
    r = route(production)
    # Only requests the sidecar routed reach a provider; the header itself never goes upstream.
    assert r["match"] == {
        "prefix": "/",
        "headers": [{"name": CLUSTER_HEADER, "present_match": True}],
    }
    assert r["route"]["cluster_header"] == CLUSTER_HEADER
    assert r["request_headers_to_remove"] == [CLUSTER_HEADER]
    # No overall timeout (streams run for minutes), but an idle stream is still cut.
    assert r["route"]["timeout"] == "0s"
    idle = f"{config.limits.stream_idle_timeout_s}s"
    assert r["route"]["idle_timeout"] == idle != "0s"
    assert hcm(production)["stream_idle_timeout"] == idle
    assert r["route"]["auto_host_rewrite"] is True


def test_filter_order(production: dict[str, Any], synchronous: dict[str, Any]) -> None:
    # The compressor sits before ext_proc so that, on responses, ext_proc meters identity bytes;
    # in observe mode the observer sits after the request filter, so it sees the request body
    # the request filter rewrote, with its dynamic metadata.
    assert [f["name"] for f in hcm(production)["http_filters"]] == [
        "envoy.filters.http.compressor",
        "gateway.request",
        "gateway.observer",
        "envoy.filters.http.router",
    ]
    assert [f["name"] for f in hcm(synchronous)["http_filters"]] == [
        "envoy.filters.http.compressor",
        "envoy.filters.http.ext_proc",
        "envoy.filters.http.router",
    ]


def _check_grpc(config: GatewayConfig, ext: dict[str, Any]) -> None:
    grpc = ext["grpc_service"]["envoy_grpc"]
    assert grpc["cluster_name"] == EXTPROC_CLUSTER
    limit = config.limits.max_request_body_bytes
    assert grpc["max_receive_message_length"] >= limit
    assert grpc["max_receive_message_length"] == limit + GRPC_MESSAGE_SLACK


def test_request_filter_also_takes_the_response_of_a_non_streamed_request(
    config: GatewayConfig, production: dict[str, Any], synchronous: dict[str, Any]
) -> None:
    """The same filter as synchronous mode's: no response by default (a reply Envoy makes itself
    is not metered); the reply to a forwarded request's headers asks for the response headers and
    a partially buffered body (FORWARDED_MODE), which the reply to the response headers turns off
    (NONE) for a response the observer meters (mode_override is honoured only in a reply to
    headers on Envoy 1.40)."""
    ext = http_filter(production, "gateway.request")
    assert ext["failure_mode_allow"] is False  # fail closed: nothing passes unmetered
    assert ext["status_on_error"] == {"code": 503}
    assert ext["message_timeout"] == "5s"
    assert ext["allow_mode_override"] is True
    assert ext["processing_mode"] == {
        "request_header_mode": "SEND",
        "request_body_mode": "BUFFERED",
        "response_header_mode": "SKIP",  # Envoy's own replies are not sent to the sidecar
        "response_body_mode": "NONE",
        "request_trailer_mode": "SKIP",
        "response_trailer_mode": "SKIP",
    }
    sync = http_filter(synchronous, "envoy.filters.http.ext_proc")
    assert ext["processing_mode"] == sync["processing_mode"]
    assert ext["metadata_options"] == {"receiving_namespaces": {"untyped": [NAMESPACE]}}
    _check_grpc(config, ext)


def test_a_non_streamed_request_is_rematched_to_a_route_without_the_observer(
    production: dict[str, Any], synchronous: dict[str, Any]
) -> None:
    """The request-body reply's dynamic metadata selects the first route (it clears the route
    cache); there the observer is disabled and the sidecar sets the response headers itself.
    Otherwise the two routes are the same."""
    one_stream, observed = routes(production)
    assert one_stream["match"]["dynamic_metadata"] == [
        {
            "filter": NAMESPACE,
            "path": [{"key": RESPONSE_METERED_KEY}],
            "value": {"string_match": {"exact": RESPONSE_METERED_HERE}},
        }
    ]
    assert one_stream["typed_per_filter_config"] == {
        "gateway.observer": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3."
            "ExtProcPerRoute",
            "disabled": True,
        }
    }
    assert "response_headers_to_add" not in one_stream
    assert {**one_stream["match"], "dynamic_metadata": None} == {
        **observed["match"],
        "dynamic_metadata": None,
    }
    assert one_stream["route"] == observed["route"]
    assert one_stream["request_headers_to_remove"] == observed["request_headers_to_remove"]
    assert len(routes(synchronous)) == 1  # one filter: nothing to disable


def test_observer_filter_is_never_waited_for(
    config: GatewayConfig, production: dict[str, Any]
) -> None:
    ext = http_filter(production, "gateway.observer")
    assert ext["observability_mode"] is True
    # A dead observer cuts the response: nothing flows on unmetered.
    assert ext["failure_mode_allow"] is False
    assert ext["deferred_close_timeout"] == "5s"
    assert ext["processing_mode"] == {
        "request_header_mode": "SEND",
        "request_body_mode": "NONE",
        "response_header_mode": "SEND",
        "response_body_mode": "STREAMED",
        "request_trailer_mode": "SKIP",
        "response_trailer_mode": "SKIP",
    }
    assert ext["metadata_options"] == {"forwarding_namespaces": {"untyped": [NAMESPACE]}}
    _check_grpc(config, ext)


def test_response_headers_come_from_metadata(
    production: dict[str, Any], synchronous: dict[str, Any]
) -> None:
    added = {
        h["header"]["key"]: h["header"]["value"]
        for h in route(production)["response_headers_to_add"]
    }
    assert added["x-gateway-request-id"] == f"%DYNAMIC_METADATA({NAMESPACE}:x-gateway-request-id)%"
    assert set(added) == set(METADATA_RESPONSE_HEADERS)
    assert {"x-gateway-request-id", "x-gateway-cache-status", *RESPONSE_HEADERS} <= set(added)
    assert route(synchronous)["response_headers_to_add"] == []  # the sidecar sets them


def test_synchronous_filter(config: GatewayConfig, synchronous: dict[str, Any]) -> None:
    ext = http_filter(synchronous, "envoy.filters.http.ext_proc")
    assert ext["failure_mode_allow"] is False  # fail closed: nothing passes unmetered
    assert ext["status_on_error"] == {"code": 503}
    assert ext["message_timeout"] == "5s"
    assert ext["allow_mode_override"] is True
    assert ext["processing_mode"] == {
        "request_header_mode": "SEND",
        "request_body_mode": "BUFFERED",
        "response_header_mode": "SKIP",  # Envoy's own replies are not sent to the sidecar
        "response_body_mode": "NONE",
        "request_trailer_mode": "SKIP",
        "response_trailer_mode": "SKIP",
    }
    assert "observability_mode" not in ext
    _check_grpc(config, ext)


def test_every_ext_proc_stream_carries_the_caller_token(
    production: dict[str, Any], synchronous: dict[str, Any]
) -> None:
    """docs/security.md "Who may talk to the sidecar": Envoy sends the token as gRPC metadata on
    every ext_proc stream (both filters in observe mode); the sidecar cluster stays plaintext on
    loopback unless a client certificate is configured."""
    for b, filters in ((production, 2), (synchronous, 1)):
        services = [
            f["typed_config"]["grpc_service"]
            for f in hcm(b)["http_filters"]
            if f["typed_config"]["@type"].endswith("ext_proc.v3.ExternalProcessor")
        ]
        assert len(services) == filters
        for service in services:
            assert service["initial_metadata"] == [
                {"key": "x-gateway-sidecar-token", "value": CALLER_TOKEN}
            ]
        assert "transport_socket" not in cluster(b, EXTPROC_CLUSTER)
    with pytest.raises(ValueError):
        SidecarAccess(None)  # neither a token nor a certificate: never an open bootstrap


def test_sidecar_cluster(production: dict[str, Any]) -> None:
    c = cluster(production, EXTPROC_CLUSTER)
    # One endpoint per sidecar worker; Envoy balances ext_proc streams across them.
    (locality,) = c["load_assignment"]["endpoints"]
    addresses = [e["endpoint"]["address"]["socket_address"] for e in locality["lb_endpoints"]]
    assert addresses == [
        {"address": "127.0.0.1", "port_value": 50051},
        {"address": "127.0.0.1", "port_value": 50052},
    ]
    options = c["typed_extension_protocol_options"]
    (http,) = options.values()
    assert "http2_protocol_options" in http["explicit_http_config"]  # gRPC needs HTTP/2
    assert "transport_socket" not in c


def test_sidecar_cluster_health_checks(production: dict[str, Any]) -> None:
    """A worker that reports NOT_SERVING (draining) or is dead gets no new streams; the ones
    it has are not cut."""
    c = cluster(production, EXTPROC_CLUSTER)
    (check,) = c["health_checks"]
    assert check["grpc_health_check"] == {"service_name": SERVICE_NAME}
    assert check["interval"] == check["no_traffic_interval"] == check["timeout"] == "1s"
    assert (check["unhealthy_threshold"], check["healthy_threshold"]) == (2, 1)
    assert not c.get("close_connections_on_host_health_failure", False)
    assert c["outlier_detection"]["consecutive_5xx"] == 3
    # Panic routing (default 50 %) stays: with every worker draining, Envoy still uses them.
    assert "common_lb_config" not in c


def test_sidecar_health_check_follows_the_config(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    sidecar = {"health_check_interval_s": 0.25, "health_check_unhealthy_threshold": 3}
    path.write_text(yaml.safe_dump({"sidecar": sidecar}))
    cfg = load_config(path, {})
    b = bootstrap(cfg, resolve_upstreams(cfg, {}, MOCK))
    (check,) = cluster(b, EXTPROC_CLUSTER)["health_checks"]
    assert (check["interval"], check["unhealthy_threshold"]) == ("0.25s", 3)
    assert cluster(b, EXTPROC_CLUSTER)["outlier_detection"]["interval"] == "0.25s"
    _validate(tmp_path, b)


def test_production_provider_clusters(config: GatewayConfig, production: dict[str, Any]) -> None:
    assert cluster_names(production) == [
        EXTPROC_CLUSTER,
        "provider_openai",
        "provider_anthropic",
        "provider_gemini",
        "provider_vertex",
    ]
    for name, host in (
        ("openai", "api.openai.com"),
        ("anthropic", "api.anthropic.com"),
        ("gemini", "generativelanguage.googleapis.com"),
        ("vertex", "aiplatform.googleapis.com"),  # location global; a region's: REGION-...
    ):
        c = cluster(production, f"provider_{name}")
        assert c["type"] == "LOGICAL_DNS"
        assert c["connect_timeout"] == "10s"
        assert c["per_connection_buffer_limit_bytes"] == config.limits.max_request_body_bytes
        assert endpoint(c) == {
            "address": {"socket_address": {"address": host, "port_value": 443}},
            "hostname": host,
        }
        tls = c["transport_socket"]
        assert tls["name"] == "envoy.transport_sockets.tls"
        ctx = tls["typed_config"]
        assert ctx["sni"] == host
        validation = ctx["common_tls_context"]["validation_context"]
        assert validation["trusted_ca"] == {"filename": CA_FILE}
        assert validation["match_typed_subject_alt_names"] == [
            {"san_type": "DNS", "matcher": {"exact": host}}
        ]
        (http,) = c["typed_extension_protocol_options"].values()
        assert "auto_config" in http  # ALPN chooses h2 or http/1.1


def test_mocked_provider_clusters(config: GatewayConfig, mocked: dict[str, Any]) -> None:
    assert cluster_names(mocked) == [
        EXTPROC_CLUSTER,
        "provider_openai",
        "provider_anthropic",
        "provider_gemini",
        "provider_azure",
        "provider_vertex",
    ]
    for name in ("openai", "anthropic", "gemini", "azure", "vertex"):
        c = cluster(mocked, f"provider_{name}")
        assert c["type"] == "STATIC"
        assert endpoint(c) == {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 18081}}
        }
        assert "transport_socket" not in c  # http: no TLS
        assert "dns_lookup_family" not in c
        assert c["per_connection_buffer_limit_bytes"] == config.limits.max_request_body_bytes
        (http,) = c["typed_extension_protocol_options"].values()
        assert "http_protocol_options" in http["explicit_http_config"]


def test_self_hosted_and_small_limit(self_hosted: tuple[GatewayConfig, dict[str, Any]]) -> None:
    cfg, b = self_hosted
    assert cluster_names(b) == [
        EXTPROC_CLUSTER,
        "provider_openai",
        "provider_anthropic",
        "provider_gemini",
        "provider_azure",
        "provider_vertex",
        "provider_vllm",
    ]
    assert cluster(b, "provider_openai")["transport_socket"]["typed_config"]["sni"] == (
        "api.openai.com"
    )
    assert "transport_socket" not in cluster(b, "provider_anthropic")  # mocked
    vllm = cluster(b, "provider_vllm")
    assert "transport_socket" not in vllm
    assert endpoint(vllm)["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 8000,
    }
    assert listener(b)["per_connection_buffer_limit_bytes"] == 65536
    for name in ("provider_openai", "provider_anthropic", "provider_vllm"):
        assert cluster(b, name)["per_connection_buffer_limit_bytes"] == 65536
    ext = http_filter(b, "gateway.request")
    assert ext["grpc_service"]["envoy_grpc"]["max_receive_message_length"] >= 65536
    assert ext["message_timeout"] == "0.75s"
    assert cfg.limits.max_request_body_bytes == 65536


def test_local_reply_mappers(config: GatewayConfig, production: dict[str, Any]) -> None:
    mappers = hcm(production)["local_reply_config"]["mappers"]
    # Seven cases (sidecar down, too large, overloaded, header and request timeouts, an
    # underscore in a header name, anything else), each in Gemini, Anthropic, Bedrock and
    # OpenAI format.
    assert len(mappers) == 28
    expressions = [m["filter"]["extension_filter"]["typed_config"]["expression"] for m in mappers]
    by_expression = dict(zip(expressions, mappers, strict=True))
    gemini_path = (
        " && (request.path.startsWith('/v1beta/') || (request.path.startsWith('/v1/models/')"
        " && request.path.contains(':')))"
    )
    anthropic_path = " && request.path.startsWith('/v1/messages')"
    bedrock_path = " && request.path.startsWith('/model/')"
    # Envoy uses the first mapper that matches: each case's Gemini mapper, then its Anthropic
    # one, come just before its OpenAI one, which has no path test, so errors before any path (a
    # malformed request line, slow headers) still get JSON.
    openai_expressions = expressions[3::4]
    assert expressions[0::4] == [e + gemini_path for e in openai_expressions]
    assert expressions[1::4] == [e + anthropic_path for e in openai_expressions]
    assert expressions[2::4] == [e + bedrock_path for e in openai_expressions]
    families = (
        ("gemini", gemini_path),
        ("anthropic", anthropic_path),
        ("bedrock", bedrock_path),
        ("openai", ""),
    )
    for family, path in families:
        down = by_expression[f"response.code_details.startsWith('ext_proc'){path}"]
        too_large = by_expression[f"response.code_details == 'request_payload_too_large'{path}"]
        other = by_expression[
            "!response.code_details.startsWith('gateway_')"
            f" && response.code_details != 'direct_response'{path}"
        ]
        assert (down["status_code"], too_large["status_code"]) == (503, 413)
        assert "status_code" not in other  # Envoy's own status is kept
        for m in (down, too_large, other):
            body = m["body_format_override"]["json_format"]
            if family == "gemini":  # google-genai's shape; the request id in the ErrorInfo
                assert set(body["error"]) == {"code", "message", "status", "details"}
                (info,) = body["error"]["details"]
                assert info["metadata"]["request_id"] == "%REQ(X-REQUEST-ID)%"
                continue
            if family == "bedrock":  # botocore's code: `__type`, else the HTTP status
                assert body["requestId"] == "%REQ(X-REQUEST-ID)%" and "code" not in body
                assert set(body) <= {"__type", "message", "gatewayCode", "requestId"}
                continue
            assert body["request_id"] == "%REQ(X-REQUEST-ID)%"
            if family == "anthropic":
                assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
            else:
                assert set(body["error"]) == {"message", "type", "param", "code"}
        if family == "gemini":
            assert down["body_format_override"]["json_format"]["error"]["code"] == 503
            assert down["body_format_override"]["json_format"]["error"]["status"] == "UNAVAILABLE"
            assert other["body_format_override"]["json_format"]["error"]["code"] == (
                "%RESPONSE_CODE%"
            )
        if family == "bedrock":
            assert down["body_format_override"]["json_format"]["__type"] == (
                "ServiceUnavailableException"
            )
            assert "__type" not in other["body_format_override"]["json_format"]
            continue
        limit = str(config.limits.max_request_body_bytes)
        assert limit in too_large["body_format_override"]["json_format"]["error"]["message"]
    # Last: Envoy's other replies, except a route's direct response (/.well-known/llm-gateway).
    assert (
        mappers[-1]
        is by_expression[
            "!response.code_details.startsWith('gateway_')"
            " && response.code_details != 'direct_response'"
        ]
    )


def test_access_log_has_no_secret_headers(production: dict[str, Any]) -> None:
    (log,) = hcm(production)["access_log"]
    text = str(log["typed_config"]["log_format"]).lower()
    for secret in ("authorization", "x-api-key", "api-key"):
        assert secret not in text


def test_render_round_trips(production: dict[str, Any]) -> None:
    text = render(production)
    assert text.startswith("# Generated by gatewayctl envoy-config")
    assert yaml.safe_load(text) == production


# --- envoy --mode validate ---------------------------------------------------------------------


def _validate(tmp_path: Path, b: dict[str, Any]) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(render(b))
    validate_envoy_config(path)  # raises StackError with Envoy's complaint


def test_envoy_validates_production(tmp_path: Path, production: dict[str, Any]) -> None:
    _validate(tmp_path, production)


def test_envoy_validates_synchronous(tmp_path: Path, synchronous: dict[str, Any]) -> None:
    _validate(tmp_path, synchronous)


def test_envoy_validates_mocked(tmp_path: Path, mocked: dict[str, Any]) -> None:
    _validate(tmp_path, mocked)


def test_envoy_validates_self_hosted(
    tmp_path: Path, self_hosted: tuple[GatewayConfig, dict[str, Any]]
) -> None:
    _validate(tmp_path, self_hosted[1])


def test_envoy_rejects_a_broken_bootstrap(tmp_path: Path, mocked: dict[str, Any]) -> None:
    # The validation step itself is live: a wrong field name fails it.
    broken = yaml.safe_load(render(mocked))
    broken["static_resources"]["clusters"][0]["conect_timeout"] = "1s"
    with pytest.raises(StackError, match="conect_timeout"):
        _validate(tmp_path, broken)


CHECKED_IN = REPO / "envoy" / "envoy.yaml"


# `make envoy-config` writes this where a deployment's own token goes (never a real one).
PLACEHOLDER_TOKEN = "REPLACE-WITH-THIS-DEPLOYMENTS-SIDECAR-TOKEN"


def test_checked_in_envoy_yaml_is_current_and_valid() -> None:
    validate_envoy_config(CHECKED_IN)
    assert PLACEHOLDER_TOKEN in (REPO / "Makefile").read_text()
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY") and not k.startswith("GATEWAY_")
    }
    environ["GATEWAY_SIDECAR_TOKEN"] = PLACEHOLDER_TOKEN
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway_extproc.cli",
            "envoy-config",
            "--workers",
            "2",
            "--ca-file",
            CA_FILE,
        ],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert CHECKED_IN.read_text() == result.stdout, "run `make envoy-config` and commit the result"


def test_admin_api_json_listener(tmp_path: Path) -> None:
    """The admin API as JSON over HTTP: its own listener (never the public one) with the
    gRPC-JSON transcoder, routed only to worker 0's admin gRPC port; Envoy accepts it."""
    path = tmp_path / "gateway.yaml"
    ops = {"ops": {"sha256": "0" * 64}}  # an admin static token: someone can call the API
    admin = {"enabled": True, "http_port": 10091, "static_tokens": ["ops"]}
    path.write_text(yaml.safe_dump({"identity": {"static_tokens": ops}, "admin_api": admin}))
    cfg = load_config(path, {})
    ports = dataclasses.replace(PORTS, admin_api_port=10090, admin_api_http_port=10091)
    b = build(cfg, ports, resolve_upstreams(cfg, {}, MOCK).values(), CA_FILE, ACCESS)
    gateway, json_listener = b["static_resources"]["listeners"]
    assert gateway["name"] == "gateway" and json_listener["name"] == "admin_api_json"
    assert json_listener["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 10091,
    }
    (manager,) = json_listener["filter_chains"][0]["filters"]
    transcoder = manager["typed_config"]["http_filters"][0]["typed_config"]
    assert transcoder["services"] == [
        "gateway.admin.v1.AdminService",
        "gateway.admin.v1.ReconciliationService",
    ]
    routes = manager["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    assert [(r["match"]["prefix"], r["route"]["cluster"]) for r in routes] == [
        ("/gateway.admin.v1.AdminService/", "gateway_admin_api"),
        ("/gateway.admin.v1.ReconciliationService/", "gateway_admin_api"),
    ]
    assert endpoint(cluster(b, "gateway_admin_api"))["address"]["socket_address"]["port_value"] == (
        10090
    )
    assert "gateway_admin_api" not in str(gateway)  # the public listener never routes there
    no_json = build(cfg, PORTS, resolve_upstreams(cfg, {}, MOCK).values(), CA_FILE, ACCESS)
    assert len(no_json["static_resources"]["listeners"]) == 1
    _validate(tmp_path, b)


def test_the_page_root_redirect_is_temporary(tmp_path: Path) -> None:
    """With the spend page on, the JSON listener sends `/` to `/ui/` with a 302, never Envoy's
    default 301 (browsers cache that for good); Envoy accepts it."""
    cfg = load_config(None, {})
    cfg = dataclasses.replace(
        cfg,
        admin_api=dataclasses.replace(cfg.admin_api, enabled=True),
        spend_page=dataclasses.replace(cfg.spend_page, enabled=True),
    )
    ports = dataclasses.replace(
        PORTS, admin_api_port=10090, admin_api_http_port=10091, spend_page_port=10093
    )
    b = build(cfg, ports, resolve_upstreams(cfg, {}, MOCK).values(), CA_FILE, ACCESS)
    json_listener = b["static_resources"]["listeners"][1]
    (manager,) = json_listener["filter_chains"][0]["filters"]
    routes = manager["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    (root,) = [r for r in routes if r["match"].get("path") == "/"]
    assert root["redirect"] == {"path_redirect": "/ui/", "response_code": "FOUND"}
    _validate(tmp_path, b)


@pytest.mark.parametrize("mutual", [False, True])
def test_admin_api_json_listener_over_tls(tmp_path: Path, mutual: bool) -> None:
    """With admin_api.tls, the JSON listener serves the admin certificate (asking for a client
    certificate when the gRPC port does) and reaches worker 0 over the pod-local unix socket
    (Envoy holds no client certificate for the TLS port); Envoy accepts it."""
    ca = CertAuthority()
    cert, key = ca.issue(tmp_path / "tls.crt", tmp_path / "tls.key")
    tls = {"cert_file": str(cert), "key_file": str(key)}
    if mutual:
        tls["client_ca_file"] = str(ca.write_ca(tmp_path / "ca.crt"))
    admin = {
        "enabled": True,
        "http_port": 10091,
        "static_tokens": ["ops"],
        "tls": tls,
        "socket": str(tmp_path / "admin.sock"),
    }
    ops = {"ops": {"sha256": "0" * 64}}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"identity": {"static_tokens": ops}, "admin_api": admin}))
    cfg = load_config(path, {})
    ports = dataclasses.replace(PORTS, admin_api_port=10090, admin_api_http_port=10091)
    b = build(cfg, ports, resolve_upstreams(cfg, {}, MOCK).values(), CA_FILE, ACCESS)
    json_listener = b["static_resources"]["listeners"][1]
    context = json_listener["filter_chains"][0]["transport_socket"]["typed_config"]
    certificate = context["common_tls_context"]["tls_certificates"][0]
    assert certificate["certificate_chain"] == {"filename": str(cert)}
    assert context.get("require_client_certificate", False) is mutual
    validation = context["common_tls_context"].get("validation_context")
    assert validation == ({"trusted_ca": {"filename": tls["client_ca_file"]}} if mutual else None)
    assert endpoint(cluster(b, "gateway_admin_api"))["address"] == {
        "pipe": {"path": str(tmp_path / "admin.sock")}
    }
    _validate(tmp_path, b)


@pytest.mark.parametrize("endpoint", ["otel-collector.monitoring:4317", "127.0.0.1:4317"])
def test_envoy_tracing_to_the_collector_validates(tmp_path: Path, endpoint: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"observability": {"envoy_otlp_endpoint": endpoint}}))
    cfg = load_config(path, {})
    b = bootstrap(cfg, resolve_upstreams(cfg, {}, MOCK))
    hcm = listener(b)["filter_chains"][0]["filters"][0]["typed_config"]
    provider = hcm["tracing"]["provider"]
    assert provider["name"] == "envoy.tracers.opentelemetry"
    assert (
        provider["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] == "otel_collector"
    )
    (cluster,) = [c for c in b["static_resources"]["clusters"] if c["name"] == "otel_collector"]
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": endpoint.split(":")[0], "port_value": 4317}
    _validate(tmp_path, b)


def test_no_envoy_tracing_by_default(production: dict[str, Any]) -> None:
    hcm = listener(production)["filter_chains"][0]["filters"][0]["typed_config"]
    assert "tracing" not in hcm
    assert all(c["name"] != "otel_collector" for c in production["static_resources"]["clusters"])
