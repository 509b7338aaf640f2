"""Envoy's own tracing, to the OTLP/gRPC collector the sidecar exports to (`observability.
envoy_otlp_endpoint`). Pure: configuration in, bootstrap fragments out.

Envoy then starts (or continues, from the client's `traceparent`) a server span per request,
and its ext_proc gRPC client injects a child span's context into the ext_proc stream's
metadata; the sidecar reads it there, so Envoy's span, the ext_proc call and the sidecar's
GenAI span sit in one trace.
"""

from __future__ import annotations

import ipaddress
from typing import Any

COLLECTOR_CLUSTER = "otel_collector"
ENVOY_SERVICE_NAME = "llm-spend-gateway-envoy"
_T = "type.googleapis.com/envoy."


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def tracing(endpoint: str | None) -> dict[str, Any] | None:
    """The HttpConnectionManager `tracing` block, or None when Envoy does not trace. Every
    request is sampled unless the client's traceparent says otherwise."""
    if endpoint is None:
        return None
    return {
        "random_sampling": {"value": 100},
        "spawn_upstream_span": True,
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": _T + "config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {
                    "envoy_grpc": {"cluster_name": COLLECTOR_CLUSTER},
                    "timeout": "1s",
                },
                "service_name": ENVOY_SERVICE_NAME,
            },
        },
    }


def collector_cluster(endpoint: str | None) -> list[dict[str, Any]]:
    """The collector's cluster (HTTP/2 for gRPC), or nothing when Envoy does not trace."""
    if endpoint is None:
        return []
    host, _, port = endpoint.rpartition(":")
    host = host.strip("[]")
    return [
        {
            "name": COLLECTOR_CLUSTER,
            "type": "STATIC" if _is_ip(host) else "STRICT_DNS",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": _T + "extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            },
            "load_assignment": {
                "cluster_name": COLLECTOR_CLUSTER,
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {"address": host, "port_value": int(port)}
                                    }
                                }
                            }
                        ]
                    }
                ],
            },
        }
    ]
