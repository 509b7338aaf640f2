"""The gateway listener clients connect to: its HTTP connection manager (codec, timeouts, local
replies, tracing, the access log), its routes and its HTTP filters (compressor, ext_proc, router).

Pure: the gateway config in, the listener out.
"""

from __future__ import annotations

from typing import Any

from gateway_extproc.config.gateway import GatewayConfig
from gateway_extproc.envoy.clusters import socket_address
from gateway_extproc.envoy.edge import connection_manager_settings, listener_settings
from gateway_extproc.envoy.filters import ext_proc_filters
from gateway_extproc.envoy.local_reply import local_reply_config
from gateway_extproc.envoy.routes import routes
from gateway_extproc.envoy.wellknown import well_known_route
from gateway_extproc.observability import envoy_tracing

_T = "type.googleapis.com/envoy."

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
            "local_reply_config": local_reply_config(config),
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
                        "routes": [well_known_route(config), *routes(config, idle)],
                        # Numbers the per-attempt filter's records (a virtual host setting
                        # only: every cluster's requests get it, and every cluster removes it).
                        **(
                            {"include_request_attempt_count": True}
                            if config.fallback.chains
                            else {}
                        ),
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


def gateway_listener(config: GatewayConfig, host: str, port: int) -> dict[str, Any]:
    """The listener clients (the SDKs) connect to."""
    return {
        "name": "gateway",
        "address": socket_address(host, port),
        **listener_settings(config.limits),
        "filter_chains": [{"filters": [_http_connection_manager(config)]}],
    }
