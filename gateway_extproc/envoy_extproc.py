"""The ext_proc filters that put the sidecar in Envoy's path: the request filter and the
observability-mode observer filter (observe mode), or one synchronous filter (synchronous mode),
with their processing modes and the metadata they hand over."""

from __future__ import annotations

from typing import Any

from gateway_extproc import handoff
from gateway_extproc.config import GatewayConfig
from gateway_extproc.server import GRPC_MESSAGE_SLACK

EXTPROC_CLUSTER = "gateway_extproc"
_T = "type.googleapis.com/envoy."


def _ext_proc_service(config: GatewayConfig) -> dict[str, Any]:
    return {
        "envoy_grpc": {
            "cluster_name": EXTPROC_CLUSTER,
            "max_receive_message_length": config.limits.max_request_body_bytes + GRPC_MESSAGE_SLACK,
        },
    }


def ext_proc_filters(config: GatewayConfig) -> list[dict[str, Any]]:
    """Synchronous mode: one filter that waits for the sidecar on every message. Observe mode
    (the default): a synchronous filter for the request only, and an observability-mode filter
    Envoy never waits for, which sees the request headers (after the request filter is done
    with the body) and the response, with the request filter's state in dynamic metadata
    (handoff.py)."""
    timeout_ms = config.limits.ext_proc_message_timeout_ms
    synchronous = config.metering.synchronous
    request: dict[str, Any] = {
        "@type": _T + "extensions.filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": _ext_proc_service(config),
        # A dead sidecar must not let traffic through unmetered: fail closed, clearly.
        "failure_mode_allow": False,
        "status_on_error": {"code": 503},
        "message_timeout": f"{timeout_ms / 1000:g}s",
        "max_message_timeout": f"{max(timeout_ms / 1000, 30):g}s",
        "processing_mode": {
            "request_header_mode": "SEND",
            "request_body_mode": "BUFFERED",
            "response_header_mode": "SEND" if synchronous else "SKIP",
            # JSON bodies are buffered (the cost header needs the whole body); the sidecar
            # switches event streams to STREAMED with mode_override.
            "response_body_mode": "BUFFERED" if synchronous else "NONE",
            "request_trailer_mode": "SKIP",
            "response_trailer_mode": "SKIP",
        },
    }
    if synchronous:
        request["allow_mode_override"] = True
        return [{"name": "envoy.filters.http.ext_proc", "typed_config": request}]
    request["metadata_options"] = {"receiving_namespaces": {"untyped": [handoff.NAMESPACE]}}
    close_ms = config.metering.observer_close_timeout_ms
    observer = {
        "@type": _T + "extensions.filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": _ext_proc_service(config),
        "observability_mode": True,
        # Fail closed as in synchronous mode: an observer stream that dies (its worker killed
        # or cut by the grace period) resets the client's response, so what the sidecar
        # metered - or the reaper charges - is what the client got. (With true, the response
        # would run on unmetered; measured on Envoy 1.40, see README "Performance".)
        "failure_mode_allow": False,
        "deferred_close_timeout": f"{close_ms / 1000:g}s",
        # Request headers: Envoy passes them on only after the request filter has handled the
        # body, so they carry its state; a request cut before its response still reaches an
        # observer. (Observing the request body instead would make Envoy drop content-length
        # and send the provider a chunked body: some servers answer 411.)
        "processing_mode": {
            "request_header_mode": "SEND",
            "request_body_mode": "NONE",
            "response_header_mode": "SEND",
            "response_body_mode": "STREAMED",
            "request_trailer_mode": "SKIP",
            "response_trailer_mode": "SKIP",
        },
        "metadata_options": {"forwarding_namespaces": {"untyped": [handoff.NAMESPACE]}},
    }
    return [
        {"name": "gateway.request", "typed_config": request},
        {"name": "gateway.observer", "typed_config": observer},
    ]
