"""How `gatewayctl spend` and `gatewayctl budgets` print: tables for people, JSON and CSV (stable
column names) for scripts. Pure: messages in, text out."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Sequence
from typing import Any

import orjson

from gateway_extproc.admin._generated.gateway.admin.v1 import admin_pb2 as pb
from gateway_extproc.catalog.pricing import format_usd

# Requests refused before anything was sent, by what refused them (pb.Refusals' fields).
REFUSED = ("refused_guardrail", "refused_rate_limit", "refused_budget", "refused_policy")
SPEND_COLUMNS = (
    "requests",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_input_tokens",
    "cache_write_1h_input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_usd",
    "estimated_cost_usd",
    "reported_cost_usd",
    "cache_hits",
    "cache_saved_usd",
    *REFUSED,
)
BUDGET_COLUMNS = (
    "budget",
    "scope_kind",
    "scope_value",
    "action",
    "limit_usd",
    "spent_usd",
    "held_usd",
    "remaining_usd",
    "top_up_usd",
    "window_id",
    "resets_at",
    "override_until",
)


def spend_record(row: pb.SpendRow) -> dict[str, Any]:
    t = row.tokens
    return {
        "requests": row.requests,
        "input_tokens": t.input,
        "cached_input_tokens": t.cached_input,
        "cache_write_input_tokens": t.cache_write,
        "cache_write_1h_input_tokens": t.cache_write_1h,
        "output_tokens": t.output,
        "reasoning_tokens": t.reasoning,
        "cost_usd": format_usd(row.cost_micros),
        "estimated_cost_usd": format_usd(row.estimated_cost_micros),
        "reported_cost_usd": format_usd(row.reported_cost_micros),
        "cost_micros": row.cost_micros,
        "estimated_cost_micros": row.estimated_cost_micros,
        "cache_hits": row.cache_hits,
        "cache_saved_usd": format_usd(row.cache_saved_micros),
        "cache_saved_micros": row.cache_saved_micros,
        "refused_guardrail": row.refused.guardrail,
        "refused_rate_limit": row.refused.rate_limit,
        "refused_budget": row.refused.budget,
        "refused_policy": row.refused.policy,
    }


def _time(t: Any, present: bool) -> str:
    if not present:
        return ""
    return dt.datetime.fromtimestamp(t.seconds, dt.UTC).isoformat().replace("+00:00", "Z")


def budget_record(s: pb.BudgetStatus) -> dict[str, Any]:
    override = s.override if s.HasField("override") else None
    return {
        "budget": s.budget,
        "scope_kind": s.scope_kind,
        "scope_value": s.scope_value,
        "action": s.action,
        "limit_usd": format_usd(s.limit_micros),
        "configured_limit_usd": format_usd(s.configured_limit_micros),
        "spent_usd": format_usd(s.spent_micros),
        "held_usd": format_usd(s.held_micros),
        "remaining_usd": format_usd(s.remaining_micros),
        "top_up_usd": format_usd(s.top_up_micros),
        "window": s.window,
        "window_id": s.window_id,
        "window_start": _time(s.window_start, s.HasField("window_start")),
        "resets_at": _time(s.resets_at, s.HasField("resets_at")),
        "override_until": _time(override.expires_at, True) if override else "",
        "override_reason": override.reason if override else "",
        "override_by": override.set_by if override else "",
    }


def override_record(o: pb.Override) -> dict[str, Any]:
    return {
        "budget": o.budget,
        "scope_value": o.scope_value,
        "limit_usd": format_usd(o.limit_micros),
        "expires_at": _time(o.expires_at, True),
        "reason": o.reason,
        "set_by": o.set_by,
        "set_at": _time(o.set_at, True),
    }


def spend_records(response: pb.GetSpendResponse) -> list[dict[str, Any]]:
    out = []
    for row in response.rows:
        record = {dim: value for dim, value in zip(response.group_by, row.key, strict=True)}
        out.append(record | spend_record(row))
    return out


def render(records: Sequence[dict[str, Any]], columns: Sequence[str], fmt: str) -> str:
    if fmt == "json":
        return orjson.dumps(list(records), option=orjson.OPT_INDENT_2).decode()
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
        return buf.getvalue().rstrip("\n")
    cells = [[str(r.get(c, "")) or "-" for c in columns] for r in records]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def render_spend(response: pb.GetSpendResponse, fmt: str) -> str:
    records = spend_records(response)
    if fmt == "json":
        doc = {
            "first_day": response.first_day,
            "last_day": response.last_day,
            "timezone": response.timezone,
            "group_by": list(response.group_by),
            "rows": records,
            "total": spend_record(response.total),
        }
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()
    table_columns = (
        "requests",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "estimated_cost_usd",
        "cache_hits",
        "cache_saved_usd",
        "refused",
    )
    if fmt == "table":
        records = [r | {"refused": refused(r)} for r in records]
    columns = [*response.group_by, *(SPEND_COLUMNS if fmt == "csv" else table_columns)]
    text = render(records, columns, fmt)
    if fmt == "table":
        total = spend_record(response.total)
        text += (
            f"\n\n{response.first_day} to {response.last_day} ({response.timezone}): "
            f"{total['requests']} requests, ${total['cost_usd']} "
            f"(${total['estimated_cost_usd']} estimated); {total['cache_hits']} cache hits "
            f"(${total['cache_saved_usd']} saved); {refused(total)} refused"
        )
    return text


def refused(record: dict[str, Any]) -> int:
    """Every kind of refusal of a spend record (the table's one column)."""
    return sum(int(record[name]) for name in REFUSED)
