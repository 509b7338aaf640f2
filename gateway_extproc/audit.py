"""The per-request audit record and where it is written.

A record holds identifiers, models, token counts and money - never prompt or completion text,
never credentials. Field names are documented in the README and are a stable interface.
"""

from __future__ import annotations

import dataclasses
import datetime
import sys
import threading
from collections.abc import Mapping
from typing import IO, Any

import orjson

from gateway_extproc.identity.model import Identity
from gateway_extproc.pricing import format_usd
from gateway_extproc.tokens import Usage, UsageSource


@dataclasses.dataclass(frozen=True, slots=True)
class AuditRecord:
    request_id: str
    time: datetime.datetime  # when the request arrived (UTC)
    method: str
    path: str
    api: str | None
    requested_model: str | None
    served_model: str | None  # catalog model the gateway sent upstream
    provider_model: str | None  # the model name the provider's response reported
    provider: str | None
    upstream_mocked: bool
    stream: bool
    status: int
    completed: bool  # the response reached its natural end
    usage: Usage
    usage_source: UsageSource
    cost_micros: int
    latency_ms: float
    time_to_first_byte_ms: float | None
    error_code: str | None = None
    identity: Identity | None = None  # None: the request was refused before it was identified
    unverified_metadata: Mapping[str, str] = dataclasses.field(default_factory=dict)
    budget: Mapping[str, Any] | None = None  # budgets.report.audit_fields; None: none checked
    output_cap_injected: bool = False  # the gateway wrote its output cap into the request

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "type": "gateway.audit.v1",
            "request_id": self.request_id,
            "time": self.time.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "method": self.method,
            "path": self.path,
            "api": self.api,
            "requested_model": self.requested_model,
            "served_model": self.served_model,
            "provider_model": self.provider_model,
            "provider": self.provider,
            "upstream_mocked": self.upstream_mocked,
            "stream": self.stream,
            "status": self.status,
            "completed": self.completed,
            "tokens": self.usage.as_dict(),
            "usage_source": self.usage_source.value,
            "cost_micros": self.cost_micros,
            "cost_usd": format_usd(self.cost_micros),
            "latency_ms": round(self.latency_ms, 3),
            "time_to_first_byte_ms": (
                None if self.time_to_first_byte_ms is None else round(self.time_to_first_byte_ms, 3)
            ),
            "error_code": self.error_code,
            "identity": _identity(self.identity),
            # Client-supplied (x-gateway-metadata): recorded, never trusted for policy or budgets.
            "unverified_metadata": dict(self.unverified_metadata),
            "budget": self.budget,
            "output_cap_injected": self.output_cap_injected,
        }
        return orjson.dumps(doc)


def _identity(identity: Identity | None) -> dict[str, Any] | None:
    if identity is None:
        return None
    return {
        "kind": identity.kind.value,
        "auth_method": identity.auth_method.value,
        "user": identity.user,
        "service": identity.service,
        "static_token": identity.static_token,
        "groups": sorted(identity.groups),
        "issuer": identity.issuer,
        "client_id": identity.client_id,
        "attributes": dict(identity.attributes),
    }


class AuditSink:
    """Writes one JSON line per record to stdout and/or an append-only file."""

    def __init__(self, *, stdout: bool, path: str | None) -> None:
        self._streams: list[IO[bytes]] = []
        if stdout:
            self._streams.append(sys.stdout.buffer)
        self._file: IO[bytes] | None = open(path, "ab") if path else None  # noqa: SIM115
        if self._file is not None:
            self._streams.append(self._file)
        self._lock = threading.Lock()

    def write(self, record: AuditRecord) -> None:
        line = record.to_json() + b"\n"
        with self._lock:
            for stream in self._streams:
                stream.write(line)
                stream.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
