"""Budget status, overrides and top-ups. Every change is validated whole before anything is
written, applied by one script (atomic with the reserves), and written to the audit log."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
from google.protobuf.timestamp_pb2 import Timestamp

from gateway_extproc.admin._generated.gateway.admin.v1 import admin_pb2 as pb
from gateway_extproc.budgets import windows
from gateway_extproc.budgets.model import (
    GLOBAL_SCOPE_VALUE,
    BudgetConfig,
    CalendarWindow,
    ScopeKind,
)
from gateway_extproc.budgets.overrides import Override, Overrides
from gateway_extproc.budgets.settings import MAX_LIMIT_USD
from gateway_extproc.catalog.pricing import MICROS_PER_USD
from gateway_extproc.identity.model import Identity

MAX_MICROS = MAX_LIMIT_USD * MICROS_PER_USD
MAX_OVERRIDE_S = 366 * 86_400


class AdminError(Exception):
    """A request the API refuses; `code` is a grpc.StatusCode name, nothing was changed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclasses.dataclass(frozen=True, slots=True)
class AdminAuditRecord:
    """One admin change, as a line of the audit log (`type` gateway.admin.v1)."""

    method: str
    caller: Identity
    time: float
    budget: str
    scope_value: str
    change: dict[str, Any]
    reason: str
    request_id: str = dataclasses.field(default_factory=lambda: f"admin-{uuid.uuid4()}")

    def to_json(self) -> bytes:
        when = dt.datetime.fromtimestamp(self.time, dt.UTC)
        return orjson.dumps(
            {
                "type": "gateway.admin.v1",
                "request_id": self.request_id,
                "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "method": self.method,
                "caller": {
                    "subject": self.caller.subject,
                    "kind": self.caller.kind.value,
                    "issuer": self.caller.issuer,
                    "groups": sorted(self.caller.groups),
                },
                "budget": self.budget,
                "scope_value": self.scope_value,
                "change": self.change,
                "reason": self.reason,
            }
        )


def ts(seconds: float) -> Timestamp:
    out = Timestamp()
    out.FromNanoseconds(round(seconds * 1e9))
    return out


def seconds_of(t: Timestamp) -> float:
    return float(t.seconds) + float(t.nanos) / 1e9


def find_budget(budgets: Sequence[BudgetConfig], name: str) -> BudgetConfig:
    for budget in budgets:
        if budget.name == name:
            return budget
    known = ", ".join(b.name for b in budgets) or "none"
    raise AdminError("NOT_FOUND", f"no budget named {name!r} (configured: {known})")


def check_scope_value(budget: BudgetConfig, value: str) -> None:
    if not value:
        raise AdminError("INVALID_ARGUMENT", f"budget {budget.name!r} needs a scope_value")
    if budget.scope.kind is ScopeKind.GLOBAL and value != GLOBAL_SCOPE_VALUE:
        raise AdminError("INVALID_ARGUMENT", f"budget {budget.name!r} is global: scope_value *")
    fixed = budget.scope.value
    if fixed is not None and value != fixed:
        raise AdminError(
            "INVALID_ARGUMENT", f"budget {budget.name!r} counts only scope_value {fixed!r}"
        )


def override_pb(o: Override, previous: int | None = None) -> pb.Override:
    return pb.Override(
        budget=o.budget,
        scope_value=o.scope_value,
        limit_micros=o.limit_micros,
        expires_at=ts(o.expires_at),
        reason=o.reason,
        set_by=o.set_by,
        set_at=ts(o.set_at),
        previous_limit_micros=-1 if previous is None else previous,
    )


def _window_text(budget: BudgetConfig) -> str:
    w = budget.window
    if isinstance(w, CalendarWindow):
        return f"calendar:{w.period.value}:{w.timezone}"
    return f"rolling:{w.duration_s}s"


async def status(
    overrides: Overrides, budget: BudgetConfig, scope_value: str, now: float
) -> pb.BudgetStatus:
    state = await overrides.counter(budget, scope_value, now)
    limit = state.limit_micros(budget)
    out = pb.BudgetStatus(
        budget=budget.name,
        scope_kind=budget.scope.kind.value,
        scope_value=scope_value,
        action=budget.action.value,
        limit_micros=limit,
        configured_limit_micros=budget.limit_micros,
        top_up_micros=state.top_up_micros,
        spent_micros=state.spent_micros,
        held_micros=state.held_micros,
        remaining_micros=limit - state.spent_micros - state.held_micros,
        window=_window_text(budget),
    )
    if isinstance(budget.window, CalendarWindow):
        span = windows.calendar_span(budget.window, now)
        out.window_id = span.id
        out.window_start.CopyFrom(ts(span.start))
        out.resets_at.CopyFrom(ts(span.end))
    else:
        out.window_id = "rolling"
        out.window_start.CopyFrom(ts(now - budget.window.duration_s))
    if state.override is not None:
        out.override.CopyFrom(override_pb(state.override))
    return out


async def scope_values(overrides: Overrides, budget: BudgetConfig, now: float) -> list[str]:
    """Values with a counter in the current window, plus fixed and overridden ones."""
    found = set(await overrides.scope_values(budget, now))
    if budget.scope.kind is ScopeKind.GLOBAL:
        found.add(GLOBAL_SCOPE_VALUE)
    if budget.scope.value is not None:
        found.add(budget.scope.value)
    found |= {o.scope_value for o in await overrides.in_force(now) if o.budget == budget.name}
    return sorted(found)


def validate_override(
    request: pb.SetOverrideRequest, budgets: Sequence[BudgetConfig], now: float
) -> BudgetConfig:
    budget = find_budget(budgets, request.budget)
    check_scope_value(budget, request.scope_value)
    if not 0 <= request.limit_micros <= MAX_MICROS:
        raise AdminError("INVALID_ARGUMENT", f"limit_micros must be in [0, {MAX_MICROS}]")
    if not request.HasField("expires_at"):
        raise AdminError("INVALID_ARGUMENT", "expires_at is required (an override is temporary)")
    expires = seconds_of(request.expires_at)
    if expires <= now:
        raise AdminError("INVALID_ARGUMENT", "expires_at is in the past")
    if expires - now > MAX_OVERRIDE_S:
        raise AdminError("INVALID_ARGUMENT", "expires_at is more than 366 days away")
    if not request.reason.strip():
        raise AdminError("INVALID_ARGUMENT", "reason is required (it is audited)")
    return budget


def validate_top_up(request: pb.TopUpRequest, budgets: Sequence[BudgetConfig]) -> BudgetConfig:
    budget = find_budget(budgets, request.budget)
    check_scope_value(budget, request.scope_value)
    if request.amount_micros <= 0:
        raise AdminError(
            "INVALID_ARGUMENT", f"amount_micros must be positive (got {request.amount_micros})"
        )
    if request.amount_micros > MAX_MICROS:
        raise AdminError("INVALID_ARGUMENT", f"amount_micros must be at most {MAX_MICROS}")
    if not isinstance(budget.window, CalendarWindow):
        raise AdminError(
            "FAILED_PRECONDITION",
            f"budget {budget.name!r} has a rolling window: top-ups credit a calendar window; "
            "set an override instead",
        )
    if not request.reason.strip():
        raise AdminError("INVALID_ARGUMENT", "reason is required (it is audited)")
    return budget
