"""The per-request audit record and where it is written.

A record holds identifiers, models, token counts and money - never prompt or completion text,
never credentials. Field names are documented in the README and are a stable interface.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import enum
import logging
import math
import queue
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any, Protocol

import orjson

from gateway_extproc.catalog.pricing import format_usd
from gateway_extproc.identity.model import Identity
from gateway_extproc.tokens import Usage, UsageSource

log = logging.getLogger("gateway.audit")


class LimitReached(enum.StrEnum):
    """A bound a request ran into (docs/security.md, "Memory and time bounds")."""

    RESPONSE_BODY_CAP = "response_body_cap"  # metering.max_json_body_bytes: metered from the ends
    RESPONSE_INFLATE_RATIO = "response_inflate_ratio"  # a decompression bomb: estimated
    GUARDRAIL_SCAN_TIMEOUT = "guardrail_scan_timeout"  # limits.guardrail_scan_timeout_ms


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
    # GuardResult.audit_fields: rules, action, categories -> {count, action}; None: none applied
    guardrails: Mapping[str, Any] | None = None
    # budgets.report.rate_limit_fields: the rate limits checked; None: none applied
    rate_limits: Sequence[Mapping[str, Any]] | None = None
    cache: str | None = None  # hit | miss | skip | refresh; None: no cache rule applied
    cost_saved_micros: int | None = None  # a hit: what the answer would have cost
    # Bounds this request ran into (LimitReached values), each with a documented outcome.
    limits_reached: tuple[str, ...] = ()
    # A late ending of a request the reaper had already ended and audited (usage_source reaped,
    # charged this much): this record corrects that one - its cost_micros is the real cost less
    # this charge, so a request's records sum to what the ledger holds. None: no such record.
    reaped_charge_micros: int | None = None
    # The API the provider was called with, when the gateway translated the request to it
    # (translate/): `api` stays the API the client called. None: not translated.
    provider_api: str | None = None
    # A chained request (fallback): every attempt's {attempt, target, key, status, latency_ms,
    # cost_micros} in attempt order (one that left no record: target None, outcome no_response;
    # a dropped 2xx charged its bound: usage_source bound), the target that answered (None: none
    # did) and the chain's targets no attempt reached before a later one did (`skipped`). All
    # absent from a request that was not chained.
    attempts: Sequence[Mapping[str, Any]] | None = None
    served_by: str | None = None
    skipped: Sequence[str] = ()

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "type": "gateway.audit.v1",
            "request_id": self.request_id,
            "time": self.time.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "method": self.method,
            "path": self.path,
            "api": self.api,
            "provider_api": self.provider_api or self.api,
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
            "guardrails": self.guardrails,
            "rate_limits": None if self.rate_limits is None else list(self.rate_limits),
            "cache": self.cache,
            "cost_saved_micros": self.cost_saved_micros,
            "limits_reached": list(self.limits_reached),
            "reaped_charge_micros": self.reaped_charge_micros,
        }
        if self.attempts is not None:
            doc["attempts"] = list(self.attempts)
            doc["served_by"] = self.served_by
            doc["skipped"] = list(self.skipped)
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


class AuditLine(Protocol):
    """A line of the audit log: a request's `AuditRecord`, or an admin API change."""

    @property
    def request_id(self) -> str: ...

    def to_json(self) -> bytes: ...


# Records queued per destination before write() starts dropping (~1 KB each: ~10 MB at most).
MAX_QUEUED = 10_000
# Lines written (and flushed) together when the writer finds several waiting.
_BATCH = 256
# How often a destination that keeps dropping records logs it.
_DROP_LOG_INTERVAL_S = 1.0


class AuditSink:
    """Writes one JSON line per record to stdout and/or an append-only file.

    `write` never blocks the caller (the event loop): each destination has a bounded queue
    drained by its own writer thread, so a slow stdout pipe delays neither the file nor the
    requests. When a destination's queue is full the record is dropped there, counted in
    `dropped` and logged (at most once a second, with the request id). `close` drains every
    queue before it returns, so a clean shutdown loses nothing.
    """

    def __init__(self, *, stdout: bool, path: str | None, max_queued: int = MAX_QUEUED) -> None:
        self._writers: list[_Writer] = []
        if stdout:
            self._writers.append(_Writer("stdout", sys.stdout.buffer, max_queued, owned=False))
        if path:
            file = open(path, "ab")  # noqa: SIM115 - closed by its writer thread
            self._writers.append(_Writer(path, file, max_queued, owned=True))

    @property
    def dropped(self) -> int:
        """Records dropped because a destination's queue was full (summed over destinations)."""
        return sum(w.dropped for w in self._writers)

    def write(self, record: AuditLine) -> None:
        line = record.to_json() + b"\n"
        for writer in self._writers:
            writer.put(line, record.request_id)

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued line is written; False if `timeout_s` passed first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        return all(w.wait_idle(deadline) for w in self._writers)

    def close(self, timeout_s: float = 30.0) -> None:
        """Write everything queued, then stop the writers (and close the file). A destination
        still blocked after `timeout_s` is abandoned and the lines it did not write are logged."""
        deadline = time.monotonic() + timeout_s
        for writer in self._writers:
            writer.stop(deadline)


class _Writer:
    """One destination: a bounded queue and the thread that drains it."""

    def __init__(self, name: str, stream: IO[bytes], max_queued: int, *, owned: bool) -> None:
        self.name = name
        self.dropped = 0
        self._stream = stream
        self._owned = owned
        self._queue: queue.Queue[bytes | None] = queue.Queue(max_queued)
        self._last_drop_log = -math.inf
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def put(self, line: bytes, request_id: str) -> None:
        if self._stopped:  # a stream that ended after shutdown began: say so, never hide it
            self.dropped += 1
            log.error(
                "audit %s is closed: record not written",
                self.name,
                extra={"request_id": request_id},
            )
            return
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            self.dropped += 1
            now = time.monotonic()
            if now - self._last_drop_log >= _DROP_LOG_INTERVAL_S:
                self._last_drop_log = now
                log.error(
                    "audit %s is not keeping up: record dropped (%d dropped so far)",
                    self.name,
                    self.dropped,
                    extra={"request_id": request_id},
                )

    def wait_idle(self, deadline: float | None) -> bool:
        done = self._queue.all_tasks_done
        with done:
            while self._queue.unfinished_tasks:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                done.wait(remaining)
        return True

    def stop(self, deadline: float) -> None:
        self._stopped = True
        with contextlib.suppress(queue.Full):  # a blocked writer: reported below
            self._queue.put(None, timeout=max(0.0, deadline - time.monotonic()))
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            log.error(
                "audit %s still blocked at shutdown: %d queued records not written",
                self.name,
                self._queue.qsize(),
            )

    def _run(self) -> None:
        stopping = False
        while not stopping:
            lines = [self._queue.get()]
            while len(lines) < _BATCH:
                try:
                    lines.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stopping = None in lines
            data = b"".join(line for line in lines if line is not None)
            try:
                if data:
                    self._stream.write(data)
                    self._stream.flush()
            except (OSError, ValueError):
                log.exception("audit %s: write failed, %d records lost", self.name, len(lines))
            finally:
                for _ in lines:
                    self._queue.task_done()
        if self._owned:
            self._stream.close()
