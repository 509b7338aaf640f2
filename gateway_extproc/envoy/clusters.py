"""Envoy's clusters, built in one place: a provider's (its address, DNS, TLS and protocol
options) and the sidecar workers' (HTTP/2, health checks, outlier detection), with the circuit
breakers every one of them shares.

Pure: resolved values in, bootstrap fragments out (bootstrap.py assembles them).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from gateway_extproc import handoff
from gateway_extproc.config.fallback import FallbackConfig, Target, cluster_name
from gateway_extproc.config.gateway import GatewayConfig
from gateway_extproc.config.upstreams import Upstream
from gateway_extproc.envoy.filters import EXTPROC_CLUSTER, upstream_filter
from gateway_extproc.server import SERVICE_NAME

_T = "type.googleapis.com/envoy."
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

# Envoy's default circuit breaker allows 1,024 concurrent requests per cluster: 1,024 LLM
# streams in flight (fewer in observe mode, where each request holds two ext_proc streams)
# and the next request got a 503. The gateway bounds load itself (the listener's connection
# limit, the budget store's queue); the breakers only guard against runaway growth.
CIRCUIT_BREAKERS = {
    "thresholds": [
        {"priority": "DEFAULT", "max_requests": 1_000_000, "max_pending_requests": 1_000_000}
    ]
}


def socket_address(host: str, port: int) -> dict[str, Any]:
    """An address as Envoy's listeners and clusters take it."""
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


def _endpoint(up: Upstream) -> dict[str, Any]:
    endpoint: dict[str, Any] = {"address": socket_address(up.host, up.port)}
    if up.signer is not None:  # SigV4 covers `host`: Envoy sends the one that was signed
        endpoint["hostname"] = up.host_header
    elif not _is_ip(up.host):
        endpoint["hostname"] = up.host  # used by auto_host_rewrite for the Host header
    return endpoint


def _tls_socket(
    host: str, ca_file: str, alpn: tuple[str, ...] = ("h2", "http/1.1")
) -> dict[str, Any]:
    """TLS to `host`: its SNI, and a SAN check against `ca_file`."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _T + "extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": host,
            "common_tls_context": {
                "alpn_protocols": list(alpn),
                "validation_context": {
                    "trusted_ca": {"filename": ca_file},
                    "match_typed_subject_alt_names": [
                        {"san_type": "DNS", "matcher": {"exact": host}}
                    ],
                },
            },
        },
    }


def provider_cluster(up: Upstream, config: GatewayConfig, ca_file: str) -> dict[str, Any]:
    """One provider's cluster: its address (resolved by DNS when a name), and TLS with its SNI
    and a SAN check against `ca_file` when the upstream speaks HTTPS."""
    endpoint = _endpoint(up)
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
    if config.fallback.chains:  # the attempt count Envoy adds for the chains: not for providers
        (http,) = cluster["typed_extension_protocol_options"].values()
        http["http_filters"] = [_strip_attempt_count(), _UPSTREAM_CODEC]
    if not _is_ip(up.host):
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    if up.tls:
        cluster["transport_socket"] = _tls_socket(up.host, ca_file)
    return cluster


_UPSTREAM_CODEC = {
    "name": "envoy.filters.http.upstream_codec",
    "typed_config": {"@type": _T + "extensions.filters.http.upstream_codec.v3.UpstreamCodec"},
}
STRIP_ATTEMPT_COUNT = "gateway.strip_attempt_count"


def _strip_attempt_count() -> dict[str, Any]:
    """With chains configured Envoy adds `x-envoy-attempt-count` to every upstream request
    (`include_request_attempt_count` is a virtual host setting): the per-attempt filter numbers
    its records by it, then this upstream header mutation removes it before the provider, in
    every cluster (in Envoy: the ext_proc filter may not remove `x-envoy-*` headers unless its
    mutation rules allow every Envoy header, and a provider cluster has no ext_proc)."""
    return {
        "name": STRIP_ATTEMPT_COUNT,
        "typed_config": {
            "@type": _T + "extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {"request_mutations": [{"remove": handoff.ATTEMPT_COUNT_HEADER}]},
        },
    }


def chain_health(fallback: FallbackConfig) -> dict[str, Any]:
    """A chain cluster's circuit breakers and outlier detection (config/outlier.py). A chain's
    attempts are retries: Envoy's default allows 3 in flight per cluster, which a provider outage
    exceeds at once (every request of the chain retries), hence `max_retries` raised with the
    rest. Ejection may take a whole priority level (max_ejection_percent 100: a level is one
    target's endpoints, one per key of its pool, each ejected on its own failures); refused
    connections, resets and timeouts are counted apart from the 5xx answers
    (`split_external_local_origin_errors`), so each has its own threshold."""
    b = fallback.breakers
    breakers: dict[str, Any] = {
        "thresholds": [
            {
                "priority": "DEFAULT",
                "max_requests": b.max_requests,
                "max_pending_requests": b.max_pending,
                "max_retries": b.max_retries,
            }
        ]
    }
    if b.max_connections_per_target is not None:
        breakers["per_host_thresholds"] = [
            {"priority": "DEFAULT", "max_connections": b.max_connections_per_target}
        ]
    health: dict[str, Any] = {"circuit_breakers": breakers}
    o = fallback.outlier
    if o is not None:
        health["outlier_detection"] = {
            "consecutive_5xx": o.consecutive_5xx,
            "split_external_local_origin_errors": True,
            "consecutive_local_origin_failure": o.consecutive_local_origin_failure,
            "interval": _seconds(o.interval_s),
            "base_ejection_time": _seconds(o.base_ejection_s),
            "max_ejection_time": _seconds(o.max_ejection_s),
            "max_ejection_percent": 100,
        }
    return health


_TLS_MATCH = "envoy.transport_socket_match"


def _key_endpoints(
    up: Upstream, endpoint: dict[str, Any], metadata: dict[str, Any]
) -> list[dict[str, Any]]:
    """A target's endpoints: one, or one per key of its provider's pool (the same address,
    weighted, the key's NAME in the metadata: the per-attempt filter injects its secret)."""
    if len(up.keys) < 2:
        return [{"endpoint": endpoint, "metadata": {"filter_metadata": metadata}}]
    out = []
    for name, weight, _secret in up.keys:
        named = {**metadata[handoff.TARGET_NAMESPACE], handoff.POOL_KEY: name}
        out.append(
            {
                "endpoint": endpoint,
                "load_balancing_weight": weight,
                "metadata": {"filter_metadata": {**metadata, handoff.TARGET_NAMESPACE: named}},
            }
        )
    return out


def chain_cluster(
    model: str,
    chain: tuple[Target, ...],
    upstreams: dict[str, Upstream],
    config: GatewayConfig,
    ca_file: str,
    name: str | None = None,  # a policy variant's (config/fallback.py variant_name)
) -> dict[str, Any]:
    """A requested model's fallback chain (docs/fallback.md): priority i is target i, its
    endpoint the target provider's address with metadata naming the target (names only, never
    a secret); TLS follows the endpoint (`transport_socket_matches` on its SNI: one cluster
    holds several providers); the per-attempt ext_proc rewrites each attempt for its target."""
    levels = []
    tls_hosts: list[str] = []
    by_name = False
    for priority, target in enumerate(chain):
        up = upstreams[target.provider]
        endpoint = _endpoint(up)
        metadata: dict[str, Any] = {handoff.TARGET_NAMESPACE: {handoff.TARGET_KEY: target.name}}
        if up.tls:
            metadata[_TLS_MATCH] = {"sni": up.host}
            if up.host not in tls_hosts:
                tls_hosts.append(up.host)
        by_name = by_name or not _is_ip(up.host)
        levels.append(
            {
                "priority": priority,
                "lb_endpoints": _key_endpoints(up, endpoint, metadata),
            }
        )
    name = name or cluster_name(model)
    # HTTP/1.1 to every target: Envoy's ALPN auto_config needs one TLS socket for the whole
    # cluster, and a chain may mix TLS providers with plaintext ones (the mock, a local vLLM).
    options = _protocol_options(False)
    (http,) = options.values()
    http["http_filters"] = [upstream_filter(config), _strip_attempt_count(), _UPSTREAM_CODEC]
    cluster: dict[str, Any] = {
        "name": name,
        # STRICT_DNS: every endpoint resolved (LOGICAL_DNS allows one endpoint per cluster)
        "type": "STRICT_DNS" if by_name else "STATIC",
        "connect_timeout": f"{config.limits.upstream_connect_timeout_s}s",
        "per_connection_buffer_limit_bytes": config.limits.max_request_body_bytes,
        **chain_health(config.fallback),
        "load_assignment": {"cluster_name": name, "endpoints": levels},
        "typed_extension_protocol_options": options,
    }
    if by_name:
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    if tls_hosts:
        cluster["transport_socket_matches"] = [
            {
                "name": f"tls_{host}",
                "match": {"sni": host},
                "transport_socket": _tls_socket(host, ca_file, ("http/1.1",)),
            }
            for host in tls_hosts
        ]
    return cluster


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


def sidecar_cluster(config: GatewayConfig, host: str, ports: Iterable[int]) -> dict[str, Any]:
    """The sidecar workers' cluster: one endpoint a worker, gRPC over HTTP/2."""
    return {
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
                        {"endpoint": {"address": socket_address(host, port)}} for port in ports
                    ]
                }
            ],
        },
    }
