"""The `limits:` section: body and JSON bounds, the ext_proc message and guardrail scan timeouts,
and the settings that shape Envoy at the edge (envoy/edge.py; README "Envoy settings and why").
Validated with every problem's path. Pure."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from gateway_extproc.config.reader import Reader

# What Envoy does with a request header whose name has an underscore (its
# `headers_with_underscores_action`): some servers read `x_api_key` as `x-api-key`.
UNDERSCORE_ACTIONS = ("reject", "drop", "allow")


@dataclasses.dataclass(frozen=True)
class Limits:
    max_request_body_bytes: int = 32 * 1024 * 1024
    ext_proc_message_timeout_ms: int = 5000
    guardrail_scan_timeout_ms: int = 1000  # below the message timeout (guardrails/scan.py)
    stream_idle_timeout_s: int = 600
    upstream_connect_timeout_s: int = 10
    max_downstream_connections: int = 10000
    # Structural caps on a request body, checked before it is parsed (gateway_extproc/jsonshape).
    max_json_depth: int = 128  # below orjson's re-serialisation limit (255 levels)
    max_json_values: int = 200_000  # array elements + object members; bounds the parse
    # Envoy at the edge (envoy/edge.py; README "Envoy settings and why").
    first_byte_timeout_s: int = 10  # a connection that sends nothing is closed
    request_headers_timeout_s: int = 10  # from the first byte of a request to its last header
    request_timeout_s: int = 300  # the whole request received (32 MiB at ~1 Mbit/s); 0: off
    connection_idle_timeout_s: int = 75  # a connection without a request in flight
    http2_max_concurrent_streams: int = 100
    http2_connection_window_bytes: int = 1 << 20
    headers_with_underscores: str = "reject"  # reject (400), drop, allow
    envoy_memory_limit_bytes: int = 0  # overload manager's bound; 0: the container's cgroup limit


def parse_limits(r: Reader, doc: Mapping[str, Any]) -> Limits:
    """The section's values (its unknown keys are the caller's `Reader.section`'s to report)."""
    limits = Limits(
        max_request_body_bytes=r.integer(
            doc, "limits", "max_request_body_bytes", 1024, 512 * 1024 * 1024
        ),
        ext_proc_message_timeout_ms=r.integer(
            doc, "limits", "ext_proc_message_timeout_ms", 50, 3_600_000
        ),
        stream_idle_timeout_s=r.integer(doc, "limits", "stream_idle_timeout_s", 1, 86_400),
        upstream_connect_timeout_s=r.integer(doc, "limits", "upstream_connect_timeout_s", 1, 600),
        max_downstream_connections=r.integer(
            doc, "limits", "max_downstream_connections", 1, 10_000_000
        ),
        max_json_depth=r.integer(doc, "limits", "max_json_depth", 2, 254),
        max_json_values=r.integer(doc, "limits", "max_json_values", 100, 100_000_000),
        **_edge_limits(r, doc),
    )
    return dataclasses.replace(limits, guardrail_scan_timeout_ms=_scan_timeout(r, doc))


def _edge_limits(r: Reader, doc: Mapping[str, Any]) -> dict[str, Any]:
    """The `limits` keys that shape Envoy at the edge (envoy/edge.py)."""

    def whole(key: str, lo: int, hi: int) -> int:
        return r.integer(doc, "limits", key, lo, hi)

    underscores = doc.get("headers_with_underscores")
    if underscores not in UNDERSCORE_ACTIONS:
        r.problems.append(
            "limits.headers_with_underscores: must be one of "
            f"{', '.join(UNDERSCORE_ACTIONS)} (got {underscores!r})"
        )
        underscores = Limits.headers_with_underscores
    return {
        "first_byte_timeout_s": whole("first_byte_timeout_s", 1, 600),
        "request_headers_timeout_s": whole("request_headers_timeout_s", 1, 3600),
        "request_timeout_s": whole("request_timeout_s", 0, 86_400),
        "connection_idle_timeout_s": whole("connection_idle_timeout_s", 1, 86_400),
        "http2_max_concurrent_streams": whole("http2_max_concurrent_streams", 1, 2**31 - 1),
        "http2_connection_window_bytes": whole("http2_connection_window_bytes", 65_535, 2**31 - 1),
        "headers_with_underscores": underscores,
        "envoy_memory_limit_bytes": whole("envoy_memory_limit_bytes", 0, 1 << 50),
    }


def _scan_timeout(r: Reader, limits: Mapping[str, Any]) -> int:
    """`limits.guardrail_scan_timeout_ms`: below the message timeout, whose answer the scan is
    part of; by default 1 s, or half the message timeout when that is shorter."""
    message_ms = limits.get("ext_proc_message_timeout_ms", Limits.ext_proc_message_timeout_ms)
    if not isinstance(message_ms, int) or message_ms < 50:
        return Limits.guardrail_scan_timeout_ms  # reported as the message timeout's problem
    key = "guardrail_scan_timeout_ms"
    if key not in limits:
        return min(Limits.guardrail_scan_timeout_ms, message_ms // 2)
    value = r.integer(limits, "limits", key, 10, 3_600_000)
    if value >= message_ms:
        r.problems.append(
            f"limits.{key}: must be below limits.ext_proc_message_timeout_ms ({message_ms}): "
            "the scan is part of one message's answer"
        )
    return value
