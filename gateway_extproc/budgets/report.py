"""What a response and its audit record say about budgets (and the admission's rate limits).
Pure: admission in, values out."""

from __future__ import annotations

from typing import Any

from gateway_extproc.budgets.admission import Admission, Decision
from gateway_extproc.budgets.ratelimits import report as rate_report
from gateway_extproc.budgets.ratelimits.report import RateLimited
from gateway_extproc.catalog.pricing import format_usd

# Every header `response_headers` may return: in observe mode Envoy copies them from dynamic
# metadata, and its route names each one (envoy/routes.py).
RESPONSE_HEADERS = (
    "x-gateway-budget-name",
    "x-gateway-budget-remaining-usd",
    "x-gateway-budget-limit-usd",
    "x-gateway-budget-override",
    "x-gateway-budget-would-block",
    "x-gateway-budget-unchecked",
    "x-gateway-downgraded-from",
    "x-gateway-ratelimit-would-block",
    *(
        f"x-ratelimit-{what}-{unit}"
        for unit in ("requests", "tokens")
        for what in ("limit", "remaining", "reset")
    ),
)


def response_headers(admission: Admission | None, cost_micros: int | None = None) -> dict[str, str]:
    """The most constrained budget's name and what it has left; the downgrade, if any; the
    `x-ratelimit-*` headers of the most constrained rate limits (at admission, this request
    counted and its worst-case tokens held).

    Streams report the remainder at admission (the request's worst case still held); JSON
    responses, whose cost is known when the headers go out, report it after the real cost."""
    if admission is None:
        return {}
    headers: dict[str, str] = rate_report.headers(admission.rate_limits)
    if admission.rate_limit_would_block:
        headers["x-gateway-ratelimit-would-block"] = "true"
    tightest = admission.most_constrained
    if tightest is not None:
        remaining = tightest.remaining_micros
        if cost_micros is not None:
            estimate = next(
                (c.estimate_micros for c in admission.charges if c.budget is tightest.budget), 0
            )
            remaining += estimate - cost_micros
        headers["x-gateway-budget-name"] = tightest.budget.name
        headers["x-gateway-budget-remaining-usd"] = format_usd(max(remaining, 0))
        headers["x-gateway-budget-limit-usd"] = format_usd(tightest.limit_micros)
        if tightest.overridden:  # the limit in force is an admin override's
            headers["x-gateway-budget-override"] = "true"
    if admission.would_block:
        headers["x-gateway-budget-would-block"] = "true"
    if admission.decision is Decision.FAIL_OPEN:
        headers["x-gateway-budget-unchecked"] = "true"
    if admission.downgraded_from:
        headers["x-gateway-downgraded-from"] = admission.downgraded_from
    return headers


def audit_fields(admission: Admission | None) -> dict[str, Any] | None:
    if admission is None:
        return None
    result = admission.result
    return {
        "decision": admission.decision.value,
        "would_block": admission.would_block,
        "downgraded_from": admission.downgraded_from,
        "downgrade_budget": admission.downgrade_budget,
        "budgets": [
            {
                "name": b.budget.name,
                "scope_value": b.scope_value,
                "window": b.window_id,
                "action": b.budget.action.value,
                "limit_micros": b.limit_micros,
                "overridden": b.overridden,
                "remaining_micros": b.remaining_micros,
                "would_block": b.would_block,
            }
            for b in (result.budgets if result else ())
        ],
        "estimate_micros": admission.estimate_micros,
        "overrun_micros": admission.overrun_micros,
        "reservation_id": (
            admission.reservation_id if admission.charges or admission.reserved else None
        ),
        "bound": None
        if admission.bound is None
        else {
            "input_tokens": admission.bound.input_tokens,
            "output_tokens": admission.bound.output_tokens,
        },
    }


def rate_limit_fields(
    admission: Admission | None, refused: RateLimited | None = None
) -> list[dict[str, Any]] | None:
    """The audit record's `rate_limits`: every rate limit the request counted in, or that
    refused it (`refused`), with what it has left; None when none applied."""
    if refused is not None:
        return rate_report.audit_fields(refused.states)
    if admission is None or not admission.rate_limits:
        return None
    return rate_report.audit_fields(admission.rate_limits)
