"""The budget errors clients see (429, 503) and the sentence that explains a refusal."""

from __future__ import annotations

from gateway_extproc.budgets.model import CalendarWindow, ScopeKind
from gateway_extproc.budgets.results import BudgetState
from gateway_extproc.catalog.pricing import format_usd
from gateway_extproc.errors import ClientError


class BudgetExceeded(ClientError):
    status = 429
    code = "budget_exceeded"
    openai_type = "insufficient_quota"
    anthropic_type = "rate_limit_error"


class BudgetUnavailable(ClientError):
    status = 503
    code = "budget_store_unavailable"
    openai_type = "server_error"
    anthropic_type = "overloaded_error"


def describe(state: BudgetState) -> str:
    budget = state.budget
    who = f"{budget.scope.kind.value} {state.scope_value}"
    if budget.scope.kind is ScopeKind.GLOBAL:
        who = "everyone"
    if isinstance(budget.window, CalendarWindow):
        period = budget.window.period.value
        window = "today" if period == "day" else f"this {period}"
    else:
        window = f"in the last {budget.window.duration_s // 60} minutes"
    limit = f"${format_usd(state.limit_micros)}"
    if state.overridden:
        limit += " (a temporary limit set by an administrator)"
    return (
        f"budget {budget.name!r} for {who} is exhausted: ${format_usd(state.spent_micros)} "
        f"spent and ${format_usd(state.held_micros)} reserved of {limit} {window}"
    )
