"""Envoy at the edge: what bounds a client's connections, headers, bodies and HTTP/2 streams, and
what Envoy sheds when its memory runs short (README "Envoy settings and why"; docs/security.md
"Envoy at the edge").

Envoy's "Configuring Envoy as an edge proxy" best practices, with two measured departures on
Envoy 1.40: the listener's per-connection buffer and each HTTP/2 stream's window stay at
`limits.max_request_body_bytes`, because they are what bounds a request body that ext_proc
buffers (a 64 KiB listener buffer refused a 200 KB HTTP/1 body with 413 even with a route's
`request_body_buffer_limit` raised; a 64 KiB stream window refused a 70 KB HTTP/2 body). Memory is
bounded instead by the connection cap, the HTTP/2 stream cap and the overload manager.

Pure: a config in, bootstrap fragments out. Everything here runs once per connection or not at all
on the request path (Envoy's timers and its overload manager's periodic check).
"""

from __future__ import annotations

from typing import Any

from gateway_extproc.config.gateway import Limits

_T = "type.googleapis.com/envoy."
_UNDERSCORES = {"reject": "REJECT_REQUEST", "drop": "DROP_HEADER", "allow": "ALLOW"}
MEMORY_MONITOR = "envoy.resource_monitors.cgroup_memory"
CONNECTIONS_MONITOR = "envoy.resource_monitors.global_downstream_max_connections"
# Connections Envoy keeps for its other listeners (the kubelet's probes and Prometheus on the ops
# listener, the admin API's JSON listener, the admin) beyond the clients' cap.
OPERATIONS_RESERVE = 64

# Memory pressure (used / bound) at which each overload action acts. Scaled actions act more as
# pressure rises from the first value to the second.
IDLE_TIMEOUT_SCALING = (0.80, 0.95)  # idle connections and TLS handshakes get shorter timeouts
KEEPALIVE_OFF_AT = 0.90  # connections close after their request (HTTP/2: GOAWAY)
SHRINK_HEAP_AT = 0.90  # free memory is given back to the system
RESET_STREAMS_SCALING = (0.90, 0.98)  # the streams holding the most buffered bytes are reset
STOP_REQUESTS_AT = 0.95  # new requests get a JSON 503 `overloaded`
# Streams holding at least 2**20 bytes (1 MiB) of buffers are tracked for the reset action.
TRACKED_STREAM_BYTES_LOG2 = 20
# Under full memory pressure an idle connection or a TLS handshake gets this long.
MIN_IDLE_TIMEOUT = "2s"


def _seconds(value: int) -> str:
    return f"{value}s"


def listener_settings(limits: Limits) -> dict[str, Any]:
    """The client listener's buffer, and a connection that sends nothing closed after
    `first_byte_timeout_s`: the HTTP inspector waits for its first bytes and Envoy closes the
    connection when its listener filters time out (a TLS listener inspects the ClientHello
    instead, ops.with_downstream_tls)."""
    return {
        # Bounds a buffered request body (HTTP/1): over it, a 413 from Envoy.
        "per_connection_buffer_limit_bytes": limits.max_request_body_bytes,
        "listener_filters": [
            {
                "name": "envoy.filters.listener.http_inspector",
                "typed_config": {
                    "@type": _T + "extensions.filters.listener.http_inspector.v3.HttpInspector"
                },
            }
        ],
        "listener_filters_timeout": _seconds(limits.first_byte_timeout_s),
        "continue_on_listener_filters_timeout": False,
    }


def connection_manager_settings(limits: Limits) -> dict[str, Any]:
    """Timeouts and HTTP/2 limits of the client listener's HTTP connection manager. None of
    them bounds a response: LLM streams run for minutes (only `stream_idle_timeout` cuts a
    silent one)."""
    settings: dict[str, Any] = {
        # The peer is the client; X-Forwarded-For from clients is never trusted, and Envoy
        # strips the x-envoy-* request headers of external clients (all of them, on Envoy 1.40).
        "use_remote_address": True,
        "xff_num_trusted_hops": 0,
        "request_headers_timeout": _seconds(limits.request_headers_timeout_s),
        "common_http_protocol_options": {
            "idle_timeout": _seconds(limits.connection_idle_timeout_s),
            "headers_with_underscores_action": _UNDERSCORES[limits.headers_with_underscores],
        },
        "http2_protocol_options": {
            "max_concurrent_streams": limits.http2_max_concurrent_streams,
            # A stream's window is also the most of its body Envoy buffers: below the body
            # limit, HTTP/2 clients would get 413 for bodies HTTP/1 clients may send.
            "initial_stream_window_size": max(65_535, limits.max_request_body_bytes),
            "initial_connection_window_size": limits.http2_connection_window_bytes,
        },
    }
    if limits.request_timeout_s:
        # Disarmed once the request has gone upstream (or the response has begun).
        settings["request_timeout"] = _seconds(limits.request_timeout_s)
    return settings


def _threshold(value: float) -> list[dict[str, Any]]:
    return [{"name": MEMORY_MONITOR, "threshold": {"value": value}}]


def _scaled(band: tuple[float, float]) -> list[dict[str, Any]]:
    low, high = band
    return [
        {"name": MEMORY_MONITOR, "scaled": {"scaling_threshold": low, "saturation_threshold": high}}
    ]


def runtime(limits: Limits, listener: str) -> dict[str, Any]:
    """The clients' listener's own connection cap (`max_downstream_connections`), checked when a
    connection is accepted, so silent connections count: Envoy's global cap is larger by
    OPERATIONS_RESERVE, so clients holding every connection they may still leave room for the
    probes and the drain hook. (`ignore_global_conn_limit` on the ops listener would do it too,
    but Envoy 1.40 miscounts it: each ops connection freed a client slot, measured.)"""
    key = f"envoy.resource_limits.listener.{listener}.connection_limit"
    return {"layers": [{"name": "edge", "static_layer": {key: limits.max_downstream_connections}}]}


def overload_manager(limits: Limits) -> dict[str, Any]:
    """Envoy's global downstream connection cap (the clients' cap plus OPERATIONS_RESERVE), and
    load shed by memory pressure: Envoy's memory against `envoy_memory_limit_bytes`, or its
    container's cgroup limit when that is 0 (no limit anywhere: pressure stays 0 and nothing is
    shed)."""
    memory: dict[str, Any] = {
        "@type": _T + "extensions.resource_monitors.cgroup_memory.v3.CgroupMemoryConfig"
    }
    if limits.envoy_memory_limit_bytes:
        memory["max_memory_bytes"] = limits.envoy_memory_limit_bytes
    scale_timers = {
        "@type": _T + "config.overload.v3.ScaleTimersOverloadActionConfig",
        "timer_scale_factors": [
            {"timer": "HTTP_DOWNSTREAM_CONNECTION_IDLE", "min_timeout": MIN_IDLE_TIMEOUT},
            {"timer": "TRANSPORT_SOCKET_CONNECT", "min_timeout": MIN_IDLE_TIMEOUT},
        ],
    }
    return {
        "refresh_interval": "0.25s",
        "resource_monitors": [
            {
                "name": CONNECTIONS_MONITOR,
                "typed_config": {
                    "@type": _T + "extensions.resource_monitors.downstream_connections.v3."
                    "DownstreamConnectionsConfig",
                    "max_active_downstream_connections": (
                        limits.max_downstream_connections + OPERATIONS_RESERVE
                    ),
                },
            },
            {"name": MEMORY_MONITOR, "typed_config": memory},
        ],
        "buffer_factory_config": {
            "minimum_account_to_track_power_of_two": TRACKED_STREAM_BYTES_LOG2
        },
        "actions": [
            {
                "name": "envoy.overload_actions.reduce_timeouts",
                "triggers": _scaled(IDLE_TIMEOUT_SCALING),
                "typed_config": scale_timers,
            },
            {
                "name": "envoy.overload_actions.disable_http_keepalive",
                "triggers": _threshold(KEEPALIVE_OFF_AT),
            },
            {"name": "envoy.overload_actions.shrink_heap", "triggers": _threshold(SHRINK_HEAP_AT)},
            {
                "name": "envoy.overload_actions.reset_high_memory_stream",
                "triggers": _scaled(RESET_STREAMS_SCALING),
            },
            {
                "name": "envoy.overload_actions.stop_accepting_requests",
                "triggers": _threshold(STOP_REQUESTS_AT),
            },
        ],
    }


def local_replies(limits: Limits) -> list[tuple[str, int, str, str]]:
    """Envoy's own refusals at the edge, as (CEL condition on the local reply, status, message,
    code), rendered in the client's API format with the other local replies (local_reply.py)."""
    return [
        (
            "response.code_details == 'overload'",
            503,
            "the gateway is overloaded; retry later",
            "overloaded",
        ),
        (
            "response.code_details == 'request_header_timeout'",
            408,
            f"the request headers did not arrive within {limits.request_headers_timeout_s} s",
            "request_timeout",
        ),
        (
            "response.code_details == 'request_overall_timeout'",
            408,
            f"the request was not received within {limits.request_timeout_s} s",
            "request_timeout",
        ),
        (
            "response.code_details.endsWith('unexpected_underscore')",
            400,
            "request header names must not contain underscores",
            "invalid_request",
        ),
    ]
