"""The ext_proc filters that put the sidecar in Envoy's path: the request filter and the
observability-mode observer filter (observe mode), or one synchronous filter (synchronous mode),
with their processing modes and the metadata they hand over."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from gateway_extproc import handoff
from gateway_extproc.config.gateway import GatewayConfig
from gateway_extproc.errors import ConfigError
from gateway_extproc.server import GRPC_MESSAGE_SLACK
from gateway_extproc.sidecar_auth.caller import METADATA_KEY
from gateway_extproc.sidecar_auth.settings import caller_tokens

EXTPROC_CLUSTER = "gateway_extproc"
OBSERVER_FILTER = "gateway.observer"
UPSTREAM_FILTER = "gateway.attempt"
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
    (the default): the same request filter, which also meters the responses of non-streamed
    requests (their buffered body on the same stream: one stream, four messages), and an
    observability-mode filter Envoy never waits for, for event streams: it sees the request
    headers (after the request filter is done with the body) and the response, with the
    request filter's state in dynamic metadata (handoff.py). The route a non-streamed request
    is re-matched to after its body disables the observer (`RESPONSE_ON_REQUEST_STREAM`)."""
    timeout_ms = config.limits.ext_proc_message_timeout_ms
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
            # No response by default: Envoy's own replies (a header timeout, a malformed
            # request) and the sidecar's immediate responses are not metered. The reply to the
            # request headers of a request the sidecar forwards asks for its response
            # (`mode_override`, honoured only in a headers reply on Envoy 1.40; extproc/
            # messages.py FORWARDED_MODE): the headers, and a JSON body buffered (the cost header
            # needs the whole body) up to Envoy's buffer limit - a larger one is sent on
            # unmetered after its first part (PARTIAL: with BUFFERED Envoy would answer the client
            # 500 response_payload_too_large) and charged its bound. The reply to the response
            # headers changes the mode again: STREAMED for an event stream this stream meters,
            # NONE for one the observer meters.
            "response_header_mode": "SKIP",
            "response_body_mode": "NONE",
            "request_trailer_mode": "SKIP",
            "response_trailer_mode": "SKIP",
        },
        "allow_mode_override": True,
    }
    if config.fallback.chains:  # the state for the per-attempt filter; its attempt records back
        request["metadata_options"] = {
            "receiving_namespaces": {"untyped": [handoff.NAMESPACE]},
            "forwarding_namespaces": {"untyped": [handoff.ATTEMPTS_NAMESPACE]},
        }
        # A trimmed chain's `x-envoy-max-retries` (request/chain.py): ext_proc drops a mutation
        # of an x-envoy-* header unless `allow_envoy` (measured on 1.40: Envoy went on to the
        # next target). Clients' x-envoy-* headers are stripped at the edge before this filter.
        request["mutation_rules"] = {"allow_envoy": True}
    if config.metering.synchronous:
        return [{"name": "envoy.filters.http.ext_proc", "typed_config": request}]
    request["metadata_options"] = {
        **request.get("metadata_options", {}),
        "receiving_namespaces": {"untyped": [handoff.NAMESPACE]},
    }
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
        "metadata_options": {"forwarding_namespaces": {"untyped": _observed(config)}},
    }
    return [
        {"name": "gateway.request", "typed_config": request},
        {"name": OBSERVER_FILTER, "typed_config": observer},
    ]


def _observed(config: GatewayConfig) -> list[str]:
    """The namespaces the observer is sent: the state, and with chains the attempt records."""
    if config.fallback.chains:
        return [handoff.NAMESPACE, handoff.ATTEMPTS_NAMESPACE]
    return [handoff.NAMESPACE]


# The attribute the per-attempt filter asks for: the target named by the metadata of the
# endpoint THIS attempt got (docs/fallback.md, fact 1).
TARGET_ATTRIBUTE = (
    f"xds.upstream_host_metadata.filter_metadata['{handoff.TARGET_NAMESPACE}']"
    f"['{handoff.TARGET_KEY}']"
)
# ... and the key of a key pool's endpoint (absent for a provider with one key).
KEY_ATTRIBUTE = (
    f"xds.upstream_host_metadata.filter_metadata['{handoff.TARGET_NAMESPACE}']"
    f"['{handoff.POOL_KEY}']"
)


def upstream_filter(config: GatewayConfig) -> dict[str, Any]:
    """The per-attempt ext_proc of a chain cluster (its upstream `http_filters`, before
    `upstream_codec`): one stream per attempt, sent the request headers and the body Envoy
    replays from its retry buffer, the request filter's state (forwarded namespace), the target
    as an attribute; it rewrites the request for that target (`allow_all_routing`: else Envoy
    drops the `:authority` change) and writes the attempt's record when its response headers
    come (`receiving_namespaces`). Its streams carry `STREAM_KIND_KEY` in their gRPC metadata."""
    timeout_ms = config.limits.ext_proc_message_timeout_ms
    service = _ext_proc_service(config)
    service["initial_metadata"] = [
        {"key": handoff.STREAM_KIND_KEY, "value": handoff.UPSTREAM_STREAM}
    ]
    return {
        "name": UPSTREAM_FILTER,
        "typed_config": {
            "@type": _T + "extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": service,
            "failure_mode_allow": False,
            "status_on_error": {"code": 503},
            "message_timeout": f"{timeout_ms / 1000:g}s",
            "processing_mode": {
                "request_header_mode": "SEND",
                "request_body_mode": "BUFFERED",
                "response_header_mode": "SEND",
                "response_body_mode": "NONE",
                "request_trailer_mode": "SKIP",
                "response_trailer_mode": "SKIP",
            },
            "request_attributes": [TARGET_ATTRIBUTE, KEY_ATTRIBUTE],
            "mutation_rules": {"allow_all_routing": True},
            "metadata_options": {
                "forwarding_namespaces": {"untyped": [handoff.NAMESPACE]},
                "receiving_namespaces": {"untyped": [handoff.ATTEMPTS_NAMESPACE]},
            },
        },
    }


def observer_disabled() -> dict[str, dict[str, Any]]:
    """A route's `typed_per_filter_config` that turns the observer off for its requests: Envoy
    opens no observer stream and sends it nothing (the request filter meters them)."""
    return {
        OBSERVER_FILTER: {
            "@type": _T + "extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
            "disabled": True,
        }
    }


def ext_proc_disabled(config: GatewayConfig) -> dict[str, dict[str, Any]]:
    """A route's `typed_per_filter_config` that turns every ext_proc filter off: Envoy answers
    the route itself (a direct response) and the sidecar never hears of the request."""
    off = {"@type": _T + "extensions.filters.http.ext_proc.v3.ExtProcPerRoute", "disabled": True}
    return {f["name"]: dict(off) for f in ext_proc_filters(config)}


# -- how Envoy proves itself to the sidecar ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClientTls:
    """Envoy's side of TLS to a sidecar apart from it: its client certificate and key, the CA
    that signed the sidecar's certificate, and the DNS name that certificate must carry (SNI)."""

    cert_file: str
    key_file: str
    ca_file: str
    server_name: str


@dataclasses.dataclass(frozen=True)
class SidecarAccess:
    """How Envoy proves itself to the sidecar (README "Who may talk to the sidecar"): the caller
    token it sends on every ext_proc stream, and/or a client certificate."""

    token: str | None
    tls: ClientTls | None = None

    def __post_init__(self) -> None:
        if self.token is None and self.tls is None:
            raise ValueError("Envoy needs the sidecar's caller token or a client certificate")


def sidecar_access(
    config: GatewayConfig, environ: Mapping[str, str], tls: ClientTls | None = None
) -> SidecarAccess:
    """What the bootstrap generator gives Envoy: the first caller token the sidecar accepts
    (read from `sidecar.caller_token` as the sidecar reads it), and `tls` if given."""
    problems: list[str] = []
    tokens = caller_tokens(config.sidecar_auth, environ, problems)
    if not problems and not tokens and tls is None:
        problems.append(
            "sidecar.caller_token: null, so Envoy must present a client certificate "
            "(envoy-config --sidecar-tls-cert, --sidecar-tls-key, --sidecar-tls-ca)"
        )
    if problems:
        raise ConfigError(problems)
    return SidecarAccess(tokens[0] if tokens else None, tls)


def _is_ext_proc(http_filter: dict[str, Any]) -> bool:
    config = http_filter.get("typed_config", {})
    return bool(config.get("@type", "").endswith("ext_proc.v3.ExternalProcessor"))


def secure_sidecar_calls(bootstrap: dict[str, Any], access: SidecarAccess) -> None:
    """Every ext_proc filter of the gateway listener sends the caller token as gRPC metadata on
    every stream (`GrpcService.initial_metadata`); with `access.tls` the ext_proc cluster
    speaks TLS with Envoy's client certificate (ALPN h2 for gRPC)."""
    resources = bootstrap["static_resources"]
    (gateway,) = (x for x in resources["listeners"] if x["name"] == "gateway")
    filters = [
        f
        for chain in gateway["filter_chains"]
        for network in chain["filters"]
        for f in network["typed_config"].get("http_filters", ())
        if _is_ext_proc(f)
    ]
    assert filters, "the gateway listener has no ext_proc filter"
    filters += [  # the per-attempt filters of the chain clusters
        f
        for cluster in resources["clusters"]
        for options in cluster.get("typed_extension_protocol_options", {}).values()
        for f in options.get("http_filters", ())
        if _is_ext_proc(f)
    ]
    for f in filters:
        if access.token is not None:
            service = f["typed_config"]["grpc_service"]
            token = {"key": METADATA_KEY, "value": access.token}
            service["initial_metadata"] = [*service.get("initial_metadata", ()), token]
    if access.tls is None:
        return
    tls = access.tls
    (cluster,) = (c for c in resources["clusters"] if c["name"] == EXTPROC_CLUSTER)
    cluster["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _T + "extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": tls.server_name,
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": tls.cert_file},
                        "private_key": {"filename": tls.key_file},
                    }
                ],
                "validation_context": {
                    "trusted_ca": {"filename": tls.ca_file},
                    "match_typed_subject_alt_names": [
                        {"san_type": "DNS", "matcher": {"exact": tls.server_name}}
                    ],
                },
            },
        },
    }
