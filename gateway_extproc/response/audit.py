"""The record of one forwarded request, written once when its response ends: its audit line,
and its span and metrics when telemetry is on. Built from the request's state (handoff.py) and
what its `ResponseObserver` metered; the audit line is queued for the writer threads."""

from __future__ import annotations

import datetime
import logging
from typing import TYPE_CHECKING, Protocol

from gateway_extproc.audit import AuditRecord
from gateway_extproc.observability.attributes import RequestFacts
from gateway_extproc.response.attempts import with_costs
from gateway_extproc.tokens import Usage, UsageSource

if TYPE_CHECKING:
    from gateway_extproc.catalog.models import ModelEntry
    from gateway_extproc.config.upstreams import Upstream
    from gateway_extproc.extproc.context import GatewayContext
    from gateway_extproc.handoff import RequestState
    from gateway_extproc.response.body import ResponseBody

log = logging.getLogger("gateway.observer")


class Observed(Protocol):
    """What the record reads of the `ResponseObserver` that metered the request (the observer
    calls `write_record`: a view of it, not an import back)."""

    @property
    def ctx(self) -> GatewayContext: ...
    @property
    def state(self) -> RequestState: ...
    @property
    def entry(self) -> ModelEntry: ...
    @property
    def upstream(self) -> Upstream | None: ...
    @property
    def body(self) -> ResponseBody: ...
    @property
    def status(self) -> int | None: ...
    @property
    def first_byte(self) -> float | None: ...
    @property
    def completed(self) -> bool: ...
    @property
    def error_code(self) -> str | None: ...
    @property
    def overrun_micros(self) -> int: ...
    @property
    def response_meta(self) -> tuple[str | None, tuple[str, ...]]: ...


def write_record(
    o: Observed,
    usage: Usage,
    source: UsageSource,
    provider_model: str | None,
    cost: int,
    *,
    latency_s: float,
    reaped_micros: int | None = None,
) -> None:
    """Write the audit line of the request `o` observed; record its span and metrics.
    `reaped_micros`: the reaper had ended the request and its record charged this much; this
    record is the correction (its cost: `cost` less that charge)."""
    state = o.state
    budget = None
    if state.budget is not None and state.budget.audit is not None:
        budget = {**state.budget.audit, "overrun_micros": o.overrun_micros}
    extra, limits = state.audit_extra, tuple(o.body.limits_reached)
    if "limits_reached" in extra:  # the request phase's bounds come first
        extra = dict(extra)
        limits = (*extra.pop("limits_reached"), *limits)
    charged = cost if reaped_micros is None else cost - reaped_micros
    if "attempts" in extra:  # a chained request: each attempt's cost
        extra = dict(extra)
        extra["attempts"] = with_costs(extra["attempts"], extra.get("served_by"), charged)
    record = AuditRecord(
        request_id=state.request_id,
        time=datetime.datetime.fromtimestamp(state.arrived, datetime.UTC),
        method=state.method,
        path=state.path.split("?", 1)[0],
        api=(state.client_api or state.api).name.lower(),
        provider_api=state.api.name.lower() if state.client_api is not None else None,
        requested_model=state.requested_model,
        served_model=o.entry.name,
        provider_model=provider_model,
        provider=state.provider,
        upstream_mocked=o.upstream.mocked if o.upstream else False,
        stream=state.stream,
        status=o.status if o.status is not None else 0,
        completed=o.completed,
        usage=usage,
        usage_source=source,
        cost_micros=charged,
        latency_ms=latency_s * 1000,
        time_to_first_byte_ms=None if o.first_byte is None else o.first_byte * 1000,
        error_code=o.error_code,
        identity=state.identity,
        unverified_metadata=state.metadata,
        budget=budget,
        output_cap_injected=state.cap_injected,
        limits_reached=limits,
        reaped_charge_micros=reaped_micros,
        **extra,
    )
    try:
        o.ctx.audit.write(record)
    except OSError:
        log.exception("audit write failed", extra={"request_id": state.request_id})
    if o.ctx.telemetry.enabled:
        up = o.upstream
        facts = RequestFacts(
            traceparent=state.traceparent,
            tracestate=state.tracestate,
            max_tokens=state.max_tokens,
            response_id=o.response_meta[0],
            finish_reasons=o.response_meta[1],
            server_address=up.host if up is not None else None,
            server_port=up.port if up is not None else None,
            budgets=state.budget.span_budgets if state.budget is not None else (),
        )
        o.ctx.telemetry.request_done(record, facts)
