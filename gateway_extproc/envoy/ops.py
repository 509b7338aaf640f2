"""Envoy's operations listener for Kubernetes: what the kubelet and Prometheus reach on the pod IP.

Envoy's admin interface stays on loopback (it can drain and stop Envoy). The ops listener
answers only two paths:

- `/ready`: 200 while Envoy is not draining and at least one sidecar worker passes Envoy's own
  gRPC health checks (the HTTP health_check filter with `cluster_min_healthy_percentages`), so
  a pod whose sidecar is down or draining leaves the Service; 503 otherwise, also after
  `POST /healthcheck/fail` on the admin interface (the preStop drain).
- `/stats/prometheus`: Envoy's metrics, proxied read-only from the admin interface.
"""

from __future__ import annotations

from typing import Any

OPS_ADMIN_CLUSTER = "envoy_admin"
READY_PATH = "/ready"
METRICS_PATH = "/stats/prometheus"
_T = "type.googleapis.com/envoy."
OPS_BUFFER_BYTES = 32 * 1024  # two small GETs; Envoy's edge best practice for a listener


def admin_cluster(admin_port: int) -> dict[str, Any]:
    address = {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
    return {
        "name": OPS_ADMIN_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": OPS_ADMIN_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }


def ops_listener(host: str, port: int, sidecar_cluster: str) -> dict[str, Any]:
    manager = {
        "@type": _T + "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ops",
        "route_config": {
            "name": "ops",
            "virtual_hosts": [
                {
                    "name": "ops",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"path": METRICS_PATH, "headers": [_method("GET")]},
                            "route": {"cluster": OPS_ADMIN_CLUSTER, "timeout": "5s"},
                        },
                        {
                            "match": {"prefix": "/"},
                            "direct_response": {"status": 404},
                        },
                    ],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.health_check",
                "typed_config": {
                    "@type": _T + "extensions.filters.http.health_check.v3.HealthCheck",
                    "pass_through_mode": False,
                    "headers": [{"name": ":path", "string_match": {"exact": READY_PATH}}],
                    # Ready only while some sidecar worker is healthy in Envoy's eyes.
                    "cluster_min_healthy_percentages": {sidecar_cluster: {"value": 1}},
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": _T + "extensions.filters.http.router.v3.Router"},
            },
        ],
    }
    return {
        "name": "ops",
        "address": {"socket_address": {"address": host, "port_value": port}},
        # Clients can take at most limits.max_downstream_connections, below Envoy's global cap
        # (edge.runtime): the kubelet's probes and Prometheus still get in.
        "per_connection_buffer_limit_bytes": OPS_BUFFER_BYTES,
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }


def _method(name: str) -> dict[str, Any]:
    return {"name": ":method", "string_match": {"exact": name}}


def with_downstream_tls(bootstrap: dict[str, Any], cert_file: str, key_file: str) -> None:
    """Terminate TLS on the gateway listener with a mounted certificate (a Kubernetes TLS
    Secret). Envoy reads the files at start: a renewed certificate takes effect on restart.
    A connection must send its ClientHello within the listener's first-byte timeout (the TLS
    inspector replaces the HTTP one) and finish the handshake within it too."""
    (gateway,) = (x for x in bootstrap["static_resources"]["listeners"] if x["name"] == "gateway")
    gateway["listener_filters"] = [
        {
            "name": "envoy.filters.listener.tls_inspector",
            "typed_config": {
                "@type": _T + "extensions.filters.listener.tls_inspector.v3.TlsInspector"
            },
        }
    ]
    for chain in gateway["filter_chains"]:
        chain["transport_socket_connect_timeout"] = gateway["listener_filters_timeout"]
        chain["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": _T + "extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "common_tls_context": {
                    "alpn_protocols": ["h2", "http/1.1"],
                    "tls_certificates": [
                        {
                            "certificate_chain": {"filename": cert_file},
                            "private_key": {"filename": key_file},
                        }
                    ],
                },
            },
        }
