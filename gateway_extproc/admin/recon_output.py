"""How `gatewayctl reconcile` prints a reconciliation: a table for people (per provider, day
and model, then each day's total), JSON and CSV (stable column names, every field) for scripts.
Pure: messages in, text out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from gateway_extproc.admin._generated.gateway.admin.v1 import admin_pb2 as pb
from gateway_extproc.admin.output import render
from gateway_extproc.catalog.pricing import format_usd

TABLE_COLUMNS = (
    "provider",
    "day",
    "model",
    "gateway_usd",
    "provider_usd",
    "capture_rate",
    "outside_usd",
    "estimates_usd",
    "rounding_usd",
    "unexplained_usd",
)
TOKEN_KINDS = ("input", "cached_input", "cache_write", "cache_write_1h", "output")
CSV_COLUMNS = (
    *TABLE_COLUMNS[:3],
    "gateway_requests",
    "provider_requests",
    *(
        f"{side}_{kind}_tokens"
        for side in ("gateway", "provider", "outside")
        for kind in TOKEN_KINDS
    ),
    "gateway_cost_micros",
    "estimated_cost_micros",
    "provider_cost_micros",
    "outside_cost_micros",
    "difference_micros",
    *TABLE_COLUMNS[3:],
    "difference_usd",
    "unexplained_micros",
)


def row_record(day: pb.ReconciliationDay, row: pb.ReconciliationRow) -> dict[str, Any]:
    record: dict[str, Any] = {
        "provider": day.provider,
        "day": day.day,
        "model": row.model,
        "gateway_requests": row.gateway_requests,
        "provider_requests": None if row.provider_requests < 0 else row.provider_requests,
    }
    for side, tokens in (
        ("gateway", row.gateway_tokens),
        ("provider", row.provider_tokens),
        ("outside", row.outside_tokens),
    ):
        for kind in TOKEN_KINDS:
            record[f"{side}_{kind}_tokens"] = getattr(tokens, kind)
    return record | {
        "gateway_cost_micros": row.gateway_cost_micros,
        "estimated_cost_micros": row.estimated_cost_micros,
        "provider_cost_micros": row.provider_cost_micros,
        "outside_cost_micros": row.outside_cost_micros,
        "difference_micros": row.difference_micros,
        "gateway_usd": format_usd(row.gateway_cost_micros),
        "provider_usd": format_usd(row.provider_cost_micros),
        "capture_rate": row.capture_rate or None,
        "outside_usd": format_usd(row.explained_outside_micros),
        "estimates_usd": format_usd(row.explained_estimates_micros),
        "rounding_usd": format_usd(row.explained_rounding_micros),
        "unexplained_usd": format_usd(row.unexplained_micros),
        "difference_usd": format_usd(row.difference_micros),
        "unexplained_micros": row.unexplained_micros,
    }


def records(days: Sequence[pb.ReconciliationDay]) -> list[dict[str, Any]]:
    """Each day's models, then its total (model `*`)."""
    return [row_record(d, r) for d in days for r in (*d.rows, d.total)]


def render_reconciliation(
    days: Sequence[pb.ReconciliationDay], missing: Sequence[str], fmt: str
) -> str:
    if fmt == "json":
        doc = {
            "days": [
                {
                    "provider": d.provider,
                    "day": d.day,
                    "reconciled_at": d.reconciled_at.ToJsonString(),
                    "rows": [row_record(d, r) for r in d.rows],
                    "total": row_record(d, d.total),
                }
                for d in days
            ],
            "missing": list(missing),
        }
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()
    text = render(records(days), CSV_COLUMNS if fmt == "csv" else TABLE_COLUMNS, fmt)
    if fmt == "table":
        text += (
            "\n\nmodel * is the provider's day; gateway - provider = outside + estimates + "
            "rounding + unexplained (docs/reconciliation.md)"
        )
        if missing:
            text += "\nnever reconciled: " + ", ".join(missing)
    return text
