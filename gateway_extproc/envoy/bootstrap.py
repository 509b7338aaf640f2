"""Generate Envoy's bootstrap from the gateway config: the clusters follow the provider list.

Pure: takes resolved values, returns a dict (and YAML text). `envoy --mode validate` is run on
every config this produces by the tests and by `gatewayctl run` before it starts Envoy.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable
from typing import Any

import yaml

from gateway_extproc import handoff
from gateway_extproc.admin import envoy_json
from gateway_extproc.config.gateway import GatewayConfig
from gateway_extproc.config.upstreams import Upstream
from gateway_extproc.envoy.edge import (
    connection_manager_settings,
    listener_settings,
    local_replies,
    overload_manager,
    runtime,
)
from gateway_extproc.envoy.filters import (
    EXTPROC_CLUSTER,
    SidecarAccess,
    ext_proc_filters,
    observer_disabled,
    secure_sidecar_calls,
)
from gateway_extproc.envoy.ops import admin_cluster, ops_listener
from gateway_extproc.observability import envoy_tracing
from gateway_extproc.providers.bedrock.converse import error_type as bedrock_error_type
from gateway_extproc.providers.gemini.provider import rpc_status
from gateway_extproc.request.forward import (
    METADATA_RESPONSE_HEADERS,
    RESPONSE_METERED_HERE,
    RESPONSE_METERED_KEY,
)
from gateway_extproc.request.route import CLUSTER_HEADER
from gateway_extproc.server import SERVICE_NAME

_T = "type.googleapis.com/envoy."
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

# One JSON line per request on stderr; no request or response headers that may carry secrets.
ACCESS_LOG_FORMAT = {
    "type": "envoy.access",
    "time": "%START_TIME%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "status": "%RESPONSE_CODE%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "flags": "%RESPONSE_FLAGS%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_host": "%UPSTREAM_HOST%",
    "duration_ms": "%DURATION%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
}


@dataclasses.dataclass(frozen=True)
class EnvoyPorts:
    listen_host: str
    listen_port: int
    admin_port: int
    sidecar_host: str
    sidecar_ports: tuple[int, ...]
    ops_port: int | None = None  # readiness and metrics for Kubernetes (ops.py)
    admin_api_port: int = 0  # worker 0's admin gRPC port (0: no JSON listener)
    admin_api_http_port: int = 0  # the JSON listener's port (0: none)


def _socket(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _protocol_options(http2: bool, *, tls: bool = False) -> dict[str, Any]:
    if http2:
        config: dict[str, Any] = {"explicit_http_config": {"http2_protocol_options": {}}}
    elif tls:  # ALPN picks h2 or http/1.1, as the provider prefers
        config = {"auto_config": {"http2_protocol_options": {}, "http_protocol_options": {}}}
    else:
        config = {"explicit_http_config": {"http_protocol_options": {}}}
    return {_HTTP_OPTIONS: {"@type": _T[: -len("envoy.")] + _HTTP_OPTIONS, **config}}


def _provider_cluster(up: Upstream, config: GatewayConfig, ca_file: str) -> dict[str, Any]:
    endpoint: dict[str, Any] = {"address": _socket(up.host, up.port)}
    if up.signer is not None:  # SigV4 covers `host`: Envoy sends the one that was signed
        endpoint["hostname"] = up.host_header
    elif not _is_ip(up.host):
        endpoint["hostname"] = up.host  # used by auto_host_rewrite for the Host header
    cluster: dict[str, Any] = {
        "name": up.cluster,
        "type": "STATIC" if _is_ip(up.host) else "LOGICAL_DNS",
        "connect_timeout": f"{config.limits.upstream_connect_timeout_s}s",
        "per_connection_buffer_limit_bytes": config.limits.max_request_body_bytes,
        "circuit_breakers": CIRCUIT_BREAKERS,
        "load_assignment": {
            "cluster_name": up.cluster,
            "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}],
        },
        "typed_extension_protocol_options": _protocol_options(False, tls=up.tls),
    }
    if not _is_ip(up.host):
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    if up.tls:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": _T + "extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": up.host,
                "common_tls_context": {
                    "alpn_protocols": ["h2", "http/1.1"],
                    "validation_context": {
                        "trusted_ca": {"filename": ca_file},
                        "match_typed_subject_alt_names": [
                            {"san_type": "DNS", "matcher": {"exact": up.host}}
                        ],
                    },
                },
            },
        }
    return cluster


def _response_headers_from_metadata(config: GatewayConfig) -> list[dict[str, Any]]:
    """Observe mode: the response headers the request phase decided (request id, budget
    report), copied by Envoy from dynamic metadata; an absent key adds nothing."""
    if config.metering.synchronous:
        return []
    names = METADATA_RESPONSE_HEADERS
    return [
        {
            "header": {"key": name, "value": f"%DYNAMIC_METADATA({handoff.NAMESPACE}:{name})%"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }
        for name in names
    ]


def _compressor_filter() -> dict[str, Any]:
    # Before ext_proc in the list, so it runs after it on responses: the sidecar meters
    # identity bytes and the client still gets gzip when it asked for it.
    return {
        "name": "envoy.filters.http.compressor",
        "typed_config": {
            "@type": _T + "extensions.filters.http.compressor.v3.Compressor",
            # Envoy's default content types include application/json and not
            # text/event-stream: JSON is compressed, event streams pass as they are.
            "response_direction_config": {"common_config": {}},
            "compressor_library": {
                "name": "gzip",
                "typed_config": {
                    "@type": _T + "extensions.compression.gzip.compressor.v3.Gzip",
                },
            },
        },
    }


# Envoy's own replies for each client API family: (CEL test on the path, the family). Envoy
# takes the first mapper that matches; the OpenAI one, last, has no test and also answers errors
# before any path was read (a malformed request line).
_FAMILIES = (
    (
        " && (request.path.startsWith('/v1beta/') || (request.path.startsWith('/v1/models/')"
        " && request.path.contains(':')))",
        "gemini",
    ),
    (" && request.path.startsWith('/v1/messages')", "anthropic"),
    (" && request.path.startsWith('/model/')", "bedrock"),  # boto3's bedrock-runtime (Converse)
    ("", "openai"),
)


def _error_json(family: str, message: str, code: str, status: int | None) -> dict[str, Any]:
    if family == "gemini":  # google-genai reads code, message and status
        return {
            "error": {
                "code": "%RESPONSE_CODE%" if status is None else status,
                "message": message,
                "status": rpc_status(status or 500),
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": code,
                        "domain": "llm-gateway",
                        "metadata": {"request_id": "%REQ(X-REQUEST-ID)%"},
                    }
                ],
            }
        }
    if family == "bedrock":  # botocore reads the code from `__type` (a body `code` would win)
        body: dict[str, Any] = {
            "message": message,
            "gatewayCode": code,
            "requestId": "%REQ(X-REQUEST-ID)%",
        }
        if status is not None:  # else botocore's code is the HTTP status Envoy keeps
            body["__type"] = bedrock_error_type(status)
        return body
    if family == "anthropic":
        return {
            "type": "error",
            "error": {"type": code, "message": message},
            "request_id": "%REQ(X-REQUEST-ID)%",
        }
    return {
        "error": {"message": message, "type": "gateway_error", "param": None, "code": code},
        "request_id": "%REQ(X-REQUEST-ID)%",
    }


def _local_reply_config(config: GatewayConfig) -> dict[str, Any]:
    """Envoy's own error replies (sidecar down, body too large, provider unreachable) as JSON in
    the client's API format. The sidecar's replies (details `gateway_*`) are left alone."""
    cases: list[tuple[str, int | None, str, str]] = [
        (
            "response.code_details.startsWith('ext_proc')",
            503,
            "the gateway's metering sidecar is unavailable; "
            "the request was not sent to the provider",
            "gateway_unavailable",
        ),
        (
            "response.code_details == 'request_payload_too_large'",
            413,
            f"request body exceeds the gateway's limit of "
            f"{config.limits.max_request_body_bytes} bytes",
            "request_too_large",
        ),
        *local_replies(config.limits),
        (
            "!response.code_details.startsWith('gateway_')",
            None,
            "%LOCAL_REPLY_BODY% (%RESPONSE_CODE_DETAILS%)",
            "gateway_error",
        ),
    ]
    mappers = []
    for condition, status, message, code in cases:
        for path_test, family in _FAMILIES:
            expression = condition + path_test
            mapper: dict[str, Any] = {
                "filter": {
                    "extension_filter": {
                        "name": "envoy.access_loggers.extension_filters.cel",
                        "typed_config": {
                            "@type": _T
                            + "extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                            "expression": expression,
                        },
                    }
                },
                "body_format_override": {"json_format": _error_json(family, message, code, status)},
            }
            if status is not None:
                mapper["status_code"] = status
            mappers.append(mapper)
    return {"mappers": mappers}


def _routes(config: GatewayConfig, idle: str) -> list[dict[str, Any]]:
    """The provider route (cluster from the request phase's routing header). Observe mode adds
    the same route for a request whose response the request filter meters (its body reply sets
    `RESPONSE_METERED_KEY` in dynamic metadata and clears the route cache, so Envoy re-matches):
    the observer is off there, and the processor sets the response headers itself."""
    match = {"prefix": "/", "headers": [{"name": CLUSTER_HEADER, "present_match": True}]}
    action = {
        "cluster_header": CLUSTER_HEADER,
        # LLM responses stream for minutes: no overall timeout; an idle stream is still cut.
        "timeout": "0s",
        "idle_timeout": idle,
        "auto_host_rewrite": True,
    }
    route: dict[str, Any] = {
        "match": match,
        "route": action,
        # The routing header is the gateway's own: never sent upstream.
        "request_headers_to_remove": [CLUSTER_HEADER],
        "response_headers_to_add": _response_headers_from_metadata(config),
    }
    if config.metering.synchronous:
        return [route]
    metered_here = {
        "filter": handoff.NAMESPACE,
        "path": [{"key": RESPONSE_METERED_KEY}],
        "value": {"string_match": {"exact": RESPONSE_METERED_HERE}},
    }
    one_stream = {
        "name": "response_on_request_stream",
        "match": {**match, "dynamic_metadata": [metered_here]},
        "route": action,
        "request_headers_to_remove": [CLUSTER_HEADER],
        "typed_per_filter_config": observer_disabled(),
    }
    return [one_stream, route]


def _tracing(config: GatewayConfig) -> dict[str, Any]:
    block = envoy_tracing.tracing(config.observability.envoy_otlp_endpoint)
    return {} if block is None else {"tracing": block}


def _http_connection_manager(config: GatewayConfig) -> dict[str, Any]:
    idle = f"{config.limits.stream_idle_timeout_s}s"
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": _T + "extensions.filters.network.http_connection_manager.v3."
            "HttpConnectionManager",
            "stat_prefix": "gateway",
            "codec_type": "AUTO",
            **connection_manager_settings(config.limits),
            "stream_idle_timeout": idle,
            "local_reply_config": _local_reply_config(config),
            **_tracing(config),
            "access_log": [
                {
                    "name": "envoy.access_loggers.stderr",
                    "typed_config": {
                        "@type": _T + "extensions.access_loggers.stream.v3.StderrAccessLog",
                        "log_format": {"json_format": ACCESS_LOG_FORMAT},
                    },
                }
            ],
            "route_config": {
                "name": "llm",
                "virtual_hosts": [
                    {
                        "name": "llm",
                        "domains": ["*"],
                        "routes": _routes(config, idle),
                    }
                ],
            },
            "http_filters": [
                _compressor_filter(),
                *ext_proc_filters(config),
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": _T + "extensions.filters.http.router.v3.Router"},
                },
            ],
        },
    }


def _seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") + "s"


def _sidecar_health(config: GatewayConfig) -> dict[str, Any]:
    """How Envoy notices a draining (NOT_SERVING) or dead worker and stops giving it new
    streams. Streams already open on it are left alone (`close_connections_on_host_health_
    failure` stays false), so they finish while the worker drains."""
    interval = _seconds(config.health_check_interval_s)
    return {
        "health_checks": [
            {
                "timeout": interval,
                "interval": interval,
                # Also before the first request, and while unhealthy: a worker is noticed
                # within the same bound whatever the traffic (the default is 60 s).
                "no_traffic_interval": interval,
                "unhealthy_threshold": config.health_check_unhealthy_threshold,
                "healthy_threshold": 1,
                "grpc_health_check": {"service_name": SERVICE_NAME},
            }
        ],
        # A worker that crashed fails its streams before the next health check does:
        # stop choosing it after a few consecutive failures.
        "outlier_detection": {
            "consecutive_5xx": 3,
            "interval": interval,
            "base_ejection_time": "5s",
            "max_ejection_percent": 50,
        },
    }


# Envoy's default circuit breaker allows 1,024 concurrent requests per cluster: 1,024 LLM
# streams in flight (fewer in observe mode, where each request holds two ext_proc streams)
# and the next request got a 503. The gateway bounds load itself (the listener's connection
# limit, the budget store's queue); the breakers only guard against runaway growth.
CIRCUIT_BREAKERS = {
    "thresholds": [
        {"priority": "DEFAULT", "max_requests": 1_000_000, "max_pending_requests": 1_000_000}
    ]
}


def build(
    config: GatewayConfig,
    ports: EnvoyPorts,
    upstreams: Iterable[Upstream],
    ca_file: str,
    access: SidecarAccess,
) -> dict[str, Any]:
    """`access`: how Envoy proves itself to the sidecar (its caller token, a client cert)."""
    sidecar_cluster = {
        "name": EXTPROC_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "circuit_breakers": CIRCUIT_BREAKERS,
        "typed_extension_protocol_options": _protocol_options(True),
        **_sidecar_health(config),
        "load_assignment": {
            "cluster_name": EXTPROC_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": _socket(ports.sidecar_host, port)}}
                        for port in ports.sidecar_ports
                    ]
                }
            ],
        },
    }
    listeners: list[dict[str, Any]] = [
        {
            "name": "gateway",
            "address": _socket(ports.listen_host, ports.listen_port),
            **listener_settings(config.limits),
            "filter_chains": [{"filters": [_http_connection_manager(config)]}],
        }
    ]
    clusters = [sidecar_cluster] + [_provider_cluster(up, config, ca_file) for up in upstreams]
    clusters += envoy_tracing.collector_cluster(config.observability.envoy_otlp_endpoint)
    if ports.ops_port is not None:
        listeners.append(ops_listener(ports.listen_host, ports.ops_port, EXTPROC_CLUSTER))
        clusters.append(admin_cluster(ports.admin_port))
    bootstrap: dict[str, Any] = {
        "admin": {"address": _socket("127.0.0.1", ports.admin_port)},
        "overload_manager": overload_manager(config.limits),
        "layered_runtime": runtime(config.limits, "gateway"),
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }
    admin = config.admin_api  # JSON over HTTP: admin_api.http_port (or the stack's choice)
    if admin.enabled and ports.admin_api_port and ports.admin_api_http_port:
        resources = bootstrap["static_resources"]
        resources["listeners"].append(
            envoy_json.listener(admin.host, ports.admin_api_http_port, admin.tls)
        )
        resources["clusters"].append(
            envoy_json.cluster(ports.sidecar_host, ports.admin_api_port, admin.socket)
        )
    secure_sidecar_calls(bootstrap, access)
    return bootstrap


def render(bootstrap: dict[str, Any]) -> str:
    header = "# Generated by gatewayctl envoy-config from the gateway config. Do not edit.\n"
    return header + yaml.safe_dump(bootstrap, sort_keys=False, width=100)
