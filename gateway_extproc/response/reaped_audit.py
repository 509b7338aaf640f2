"""The one audit record of a reservation nobody settled: the replica whose reap script expired it
(exactly once across replicas) writes it, from the facts the reservation record kept at reserve
(budgets/facts.py), with `usage_source: reaped` and the cost the reaper charged - and counts it in
the same metrics as every audited request. `facts_for` builds those facts on the request path."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from typing import Any

from gateway_extproc.audit import AuditRecord
from gateway_extproc.budgets.facts import ReservationFacts
from gateway_extproc.budgets.results import Reaped
from gateway_extproc.catalog.models import ModelEntry
from gateway_extproc.extproc.context import GatewayContext
from gateway_extproc.handoff import identity_doc, identity_of
from gateway_extproc.identity.model import Identity
from gateway_extproc.observability.attributes import RequestFacts
from gateway_extproc.spend.rollup import Dimensions
from gateway_extproc.tokens import Usage, UsageSource

log = logging.getLogger("gateway.budgets")
# The error code of a reaped request: no response was metered before its lease ran out.
LEASE_EXPIRED = "lease_expired"


def facts_for(
    *,
    request_id: str,
    arrived: float,
    method: str,
    path: str,
    api: str,
    stream: bool,
    requested: ModelEntry,
    requested_model: str,
    identity: Identity,
    metadata: dict[str, str],
    provider_of: Callable[[ModelEntry], str],
    trace: tuple[str | None, str | None],
) -> Callable[[ModelEntry], ReservationFacts]:
    """The facts a reservation keeps, for the entry the gate reserves it on (a downgrade reserves
    the fallback). Only what an audit record holds: never prompts, never credentials."""

    def facts(served: ModelEntry) -> ReservationFacts:
        provider = provider_of(served)
        audit = {
            "rid": request_id,
            "m": method,
            "p": path.split("?", 1)[0],
            "api": api,
            "s": stream,
            "req": requested_model,
            "srv": served.name,
            "prov": provider,
            "id": identity_doc(identity),
            "md": metadata,
            "dg": requested.name if served.name != requested.name else None,
            "tp": trace[0],
            "ts": trace[1],
        }
        return ReservationFacts(arrived, Dimensions.of(identity, served.name, provider), audit)

    return facts


def record_of(reaped: Reaped, now: float) -> AuditRecord | None:
    """The audit record of a reaped reservation (None: it kept no facts)."""
    facts = reaped.facts
    if facts is None:
        return None
    doc: dict[str, Any] = dict(facts.audit)
    cost = reaped.rolled_micros
    if cost is None:
        cost = max(reaped.charged_micros, default=0)
    budget = {
        "decision": "downgraded" if doc.get("dg") else "admitted",
        "would_block": False,
        "downgraded_from": doc.get("dg"),
        "downgrade_budget": None,
        "budgets": [
            {"name": name, "scope_value": scope, "window": window}
            for name, scope, window in reaped.budgets
        ],
        "estimate_micros": None,
        "overrun_micros": 0,
        "reservation_id": reaped.request_id,
        "bound": None,
    }
    return AuditRecord(
        request_id=str(doc["rid"]),
        time=datetime.datetime.fromtimestamp(facts.arrived, datetime.UTC),
        method=str(doc["m"]),
        path=str(doc["p"]),
        api=doc.get("api"),
        requested_model=doc.get("req"),
        served_model=doc.get("srv"),
        provider_model=None,
        provider=doc.get("prov"),
        upstream_mocked=False,
        stream=bool(doc.get("s", False)),
        status=0,
        completed=False,
        usage=Usage(),  # no response was metered: its tokens are unknown
        usage_source=UsageSource.REAPED,
        cost_micros=cost,
        latency_ms=max(now - facts.arrived, 0.0) * 1000,  # until the reaper ended it
        time_to_first_byte_ms=None,
        error_code=LEASE_EXPIRED,
        identity=identity_of(doc["id"]),
        unverified_metadata={str(k): str(v) for k, v in (doc.get("md") or {}).items()},
        budget=budget,
    )


def write(ctx: GatewayContext, reaped: Reaped, now: float) -> None:
    """Audit a reservation this replica's reaper expired; count it in the metrics."""
    try:
        record = record_of(reaped, now)
    except (KeyError, TypeError, ValueError):
        log.exception("reaped reservation's facts unreadable", extra={"request_id": "-"})
        record = None
    if record is None:
        log.error(
            "reaped a reservation that kept no facts: charged, but not audited",
            extra={"request_id": reaped.request_id},
        )
        return
    try:
        ctx.audit.write(record)
    except OSError:
        log.exception("audit write failed", extra={"request_id": record.request_id})
    if ctx.telemetry.enabled:
        doc = reaped.facts.audit if reaped.facts is not None else {}
        ctx.telemetry.request_done(record, RequestFacts(doc.get("tp"), doc.get("ts")))
