"""Anthropic's Usage and Cost Admin API: the query for one UTC day and the parsing of its pages.
Pure.

    GET /v1/organizations/usage_report/messages?starting_at=D&ending_at=D+1&bucket_width=1d
        &group_by[]=model&group_by[]=workspace_id&group_by[]=api_key_id&limit=1[&page=P]
    GET /v1/organizations/cost_report?starting_at=D&ending_at=D+1&bucket_width=1d
        &group_by[]=workspace_id&group_by[]=description&limit=1[&page=P]
    x-api-key: <admin key>, anthropic-version: 2023-06-01

Usage results: `uncached_input_tokens`, `cache_read_input_tokens`,
`cache_creation.ephemeral_5m_input_tokens` / `ephemeral_1h_input_tokens`, `output_tokens` (no
request count). Cost results: `amount`, a decimal string in cents; grouped by `description`
each names its `model` (null for costs that are not tokens, e.g. web search: kept under "").
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from gateway_extproc.reconcile.money import cents
from gateway_extproc.reconcile.openai_report import ReportShapeError, token_count
from gateway_extproc.reconcile.rows import KeyUsage, Tokens

USAGE_PATH = "/v1/organizations/usage_report/messages"
COSTS_PATH = "/v1/organizations/cost_report"
API_VERSION = "2023-06-01"


def _iso(day: dt.date) -> str:
    return f"{day.isoformat()}T00:00:00Z"


def day_params(day: dt.date) -> dict[str, Any]:
    return {
        "starting_at": _iso(day),
        "ending_at": _iso(day + dt.timedelta(days=1)),
        "bucket_width": "1d",
        "limit": 1,
    }


def usage_params(day: dt.date) -> dict[str, Any]:
    return {**day_params(day), "group_by[]": ["model", "workspace_id", "api_key_id"]}


def costs_params(day: dt.date) -> dict[str, Any]:
    return {**day_params(day), "group_by[]": ["workspace_id", "description"]}


def _bucket_day(bucket: Mapping[str, Any]) -> dt.date | None:
    raw = bucket.get("starting_at")
    if not isinstance(raw, str):
        raise ReportShapeError("bucket: no `starting_at`")
    try:
        moment = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ReportShapeError(f"bucket: starting_at {raw!r} is not RFC 3339") from None
    return moment.astimezone(dt.UTC).date() if moment.tzinfo else moment.date()


def results(page: Any, day: dt.date) -> Iterable[Mapping[str, Any]]:
    if not isinstance(page, dict) or not isinstance(page.get("data"), list):
        raise ReportShapeError("page: no `data` list")
    if not isinstance(page.get("has_more"), bool):
        raise ReportShapeError("page: no `has_more`")
    for bucket in page["data"]:
        if not isinstance(bucket, dict) or not isinstance(bucket.get("results"), list):
            raise ReportShapeError("bucket: no `results` list")
        if _bucket_day(bucket) != day:
            continue
        for result in bucket["results"]:
            if not isinstance(result, dict):
                raise ReportShapeError("result: not an object")
            yield result


def usage_entries(page: Any, day: dt.date) -> list[tuple[str, str | None, KeyUsage]]:
    out = []
    for r in results(page, day):
        creation = r.get("cache_creation") or {}
        if not isinstance(creation, dict):
            raise ReportShapeError("cache_creation: not an object")
        tokens = Tokens(
            input=token_count(r, "uncached_input_tokens"),
            cached_input=token_count(r, "cache_read_input_tokens"),
            cache_write=token_count(creation, "ephemeral_5m_input_tokens"),
            cache_write_1h=token_count(creation, "ephemeral_1h_input_tokens"),
            output=token_count(r, "output_tokens"),
        )
        share = KeyUsage(r.get("api_key_id"), tokens, None)
        out.append((str(r.get("model") or ""), r.get("workspace_id"), share))
    return out


def cost_entries(page: Any, day: dt.date) -> list[tuple[str, str | None, Decimal]]:
    out = []
    for r in results(page, day):
        currency = str(r.get("currency", "USD")).upper()
        if currency != "USD":
            raise ReportShapeError(f"currency: {currency!r} (only USD is reconciled)")
        out.append((str(r.get("model") or ""), r.get("workspace_id"), cents(r.get("amount"))))
    return out
