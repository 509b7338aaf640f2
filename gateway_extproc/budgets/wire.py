"""What the reserve script takes and returns for each budget charge, and the labels a
reservation keeps for each (see `budgets/lua/reserve.lua`). Pure: values in, values out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway_extproc.budgets.model import CalendarWindow
from gateway_extproc.budgets.results import BudgetState, Charge


def charge_args(
    charge: Charge, window_id: str, window_end: int, now_ms: int, grace_ms: int
) -> list[str | int]:
    """A charge's script arguments; `window_end`: its calendar window's end (unix seconds)."""
    window = charge.budget.window
    if isinstance(window, CalendarWindow):
        end = window_end
        field, expire_at, life, bucket_ms, count = "spent", end * 1000 + grace_ms, 0, 0, 0
    else:
        bucket_ms = window.bucket_s * 1000
        field, expire_at, count = f"b:{now_ms // bucket_ms}", 0, window.buckets
        life = window.duration_s * 1000 + grace_ms
    limit = charge.limit_micros
    thresholds = ",".join(
        f"{pct}={-(-limit * pct // 100)}" for pct in charge.budget.alerts.thresholds_percent
    )
    return [
        field,
        charge.estimate_micros,
        limit,
        1 if charge.budget.enforced else 0,
        expire_at,
        life,
        bucket_ms,
        count,
        thresholds,
        charge.budget.name,
        charge.scope_value,
        window_id,
    ]


def budget_states(
    charges: Sequence[Charge], window_ids: Sequence[str], reply: Sequence[Any]
) -> tuple[BudgetState, ...]:
    """Each charge's counter as the reserve script answered it (five values per charge, after
    the status and the reservation's state)."""
    return tuple(
        BudgetState(
            budget=charge.budget,
            scope_value=charge.scope_value,
            window_id=window_id,
            spent_micros=int(reply[2 + 5 * i]),
            held_micros=int(reply[3 + 5 * i]),
            limit_micros=int(reply[4 + 5 * i]),
            would_block=int(reply[5 + 5 * i]) == 1,
            overridden=int(reply[6 + 5 * i]) == 1,
        )
        for i, (charge, window_id) in enumerate(zip(charges, window_ids, strict=True))
    )


def record_labels(
    charges: Sequence[Charge], window_ids: Sequence[str], rate_limits: int = 0
) -> dict[str, str]:
    """The labels a reservation's record holds for its charges (what `crossings` reads)."""
    labels = {"n": str(len(charges)), "rn": str(rate_limits)}
    for i, (charge, window_id) in enumerate(zip(charges, window_ids, strict=True), 1):
        labels[f"b:{i}"] = charge.budget.name
        labels[f"s:{i}"] = charge.scope_value
        labels[f"w:{i}"] = window_id
        labels[f"l:{i}"] = str(charge.limit_micros)
        labels[f"e:{i}"] = str(charge.estimate_micros)
    return labels
