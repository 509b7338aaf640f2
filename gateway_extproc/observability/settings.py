"""The `observability` section of the configuration, and which OTel exporters the environment asks
for. Pure: the caller passes the environment (the standard `OTEL_*` variables); nothing is read at
import time.

Exporters follow the OpenTelemetry SDK environment specification: OTLP is on when an endpoint is set
(`OTEL_EXPORTER_OTLP_ENDPOINT`, or the signal's own `..._TRACES_ENDPOINT` / `..._METRICS_ENDPOINT`)
or `OTEL_TRACES_EXPORTER` / `OTEL_METRICS_EXPORTER` says `otlp`; `none` turns a signal off. The
protocol is `grpc` unless `OTEL_EXPORTER_OTLP[_TRACES|_METRICS]_PROTOCOL` is `http/protobuf`. The
OTLP exporters read their endpoint, headers, timeout and TLS settings from the same variables.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any


class Disclosure(enum.StrEnum):
    """How an identity field appears on spans and metric labels."""

    ON = "on"
    HASHED = "hashed"  # a stable pseudonym (sha256 prefix): correlatable, not readable
    OFF = "off"


@dataclasses.dataclass(frozen=True)
class ObservabilityConfig:
    metrics: bool = True  # the per-worker Prometheus /metrics endpoint
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0  # worker i serves port + i; 0: any free port (gatewayctl prints it)
    # Span attributes gateway.identity.{kind,subject,groups}.
    identity_kind: Disclosure = Disclosure.ON
    identity_subject: Disclosure = Disclosure.HASHED
    identity_groups: Disclosure = Disclosure.OFF
    # Extra labels on gateway.cost: the caller (subject) and one verified identity attribute
    # (e.g. "team"); each capped at `max_label_values` distinct values per worker, then "_other".
    cost_by_subject: Disclosure = Disclosure.OFF
    cost_by_attribute: str | None = None
    # Budget gauges per scope value (user, group ...), not only per budget; capped the same way.
    budget_scope_values: bool = False
    max_label_values: int = 1000
    # host:port of an OTLP/gRPC collector: Envoy traces too (its span parents the sidecar's).
    envoy_otlp_endpoint: str | None = None


_KEYS = {f.name for f in dataclasses.fields(ObservabilityConfig)}


def parse_observability(doc: object, problems: list[str]) -> ObservabilityConfig:
    """Read `observability:`; every problem is appended to `problems` with its path."""
    if doc is None:
        return ObservabilityConfig()
    if not isinstance(doc, Mapping):
        problems.append("observability: must be a mapping")
        return ObservabilityConfig()
    for extra in sorted(set(doc) - _KEYS):
        problems.append(f"observability.{extra}: unknown key")
    default = ObservabilityConfig()
    values: dict[str, Any] = {}
    for field in dataclasses.fields(ObservabilityConfig):
        if field.name not in doc:
            continue
        value, path = doc[field.name], f"observability.{field.name}"
        current = getattr(default, field.name)
        if isinstance(current, Disclosure):
            try:
                # YAML 1.1 reads a bare on / off as true / false.
                word = ("on" if value else "off") if isinstance(value, bool) else value
                values[field.name] = Disclosure(str(word).lower())
            except ValueError:
                problems.append(f"{path}: must be one of on, hashed, off (got {value!r})")
        elif isinstance(current, bool):
            if not isinstance(value, bool):
                problems.append(f"{path}: must be true or false (got {value!r})")
            else:
                values[field.name] = value
        elif field.name == "metrics_port":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
                problems.append(f"{path}: must be an integer in [0, 65535] (got {value!r})")
            else:
                values[field.name] = value
        elif field.name == "max_label_values":
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100_000:
                problems.append(f"{path}: must be an integer in [1, 100000] (got {value!r})")
            else:
                values[field.name] = value
        elif field.name in ("cost_by_attribute", "envoy_otlp_endpoint") and value is None:
            values[field.name] = None
        elif field.name == "envoy_otlp_endpoint" and not _host_port(value):
            problems.append(f"{path}: must be host:port of an OTLP/gRPC collector (got {value!r})")
        elif not isinstance(value, str) or not value:
            problems.append(f"{path}: must be a non-empty string (got {value!r})")
        else:
            values[field.name] = value
    return dataclasses.replace(default, **values)


def _host_port(value: object) -> bool:
    if not isinstance(value, str) or "://" in value:
        return False
    host, _, port = value.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


class Protocol(enum.StrEnum):
    GRPC = "grpc"
    HTTP = "http/protobuf"


def otlp_protocol(environ: Mapping[str, str], signal: str) -> Protocol | None:
    """The OTLP protocol for `signal` ("traces" or "metrics"), or None when it is not exported."""
    upper = signal.upper()
    chosen = environ.get(f"OTEL_{upper}_EXPORTER", "").strip().lower()
    if chosen == "none" or environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    endpoint = environ.get(f"OTEL_EXPORTER_OTLP_{upper}_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not endpoint and "otlp" not in chosen.split(","):
        return None
    protocol = (
        environ.get(f"OTEL_EXPORTER_OTLP_{upper}_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()
    return Protocol.HTTP if protocol.startswith("http") else Protocol.GRPC
