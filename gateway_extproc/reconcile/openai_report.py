"""OpenAI's organisation Usage (completions) and Costs APIs: the query for one UTC day and the
parsing of their pages. Pure.

    GET /v1/organization/usage/completions?start_time=S&end_time=E&bucket_width=1d
        &group_by=model&group_by=project_id&group_by=api_key_id&limit=1[&page=P]
    GET /v1/organization/costs?start_time=S&end_time=E&bucket_width=1d
        &group_by=project_id&group_by=line_item&limit=1[&page=P]
    Authorization: Bearer <admin key>

Usage results: `input_tokens` (cached included), `input_cached_tokens`, `output_tokens`,
`num_model_requests`. Cost results: `amount.value` (USD, a JSON number: parsed exactly) and
`line_item`, read as "<model>, <kind>" - the documented field is a free string, so a line item
without ", " counts whole as the model name.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from gateway_extproc.reconcile.money import usd
from gateway_extproc.reconcile.rows import KeyUsage, Tokens

USAGE_PATH = "/v1/organization/usage/completions"
COSTS_PATH = "/v1/organization/costs"


class ReportShapeError(ValueError):
    """A page that is not the documented shape (never read as zero spend)."""


def day_params(day: dt.date) -> dict[str, Any]:
    start = int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp())
    return {"start_time": start, "end_time": start + 86_400, "bucket_width": "1d", "limit": 1}


def usage_params(day: dt.date) -> dict[str, Any]:
    return {**day_params(day), "group_by": ["model", "project_id", "api_key_id"]}


def costs_params(day: dt.date) -> dict[str, Any]:
    return {**day_params(day), "group_by": ["project_id", "line_item"]}


def results(page: Any, day: dt.date) -> Iterable[Mapping[str, Any]]:
    """The results of `page`'s buckets for `day` (a page must say whether more follow)."""
    if not isinstance(page, dict) or not isinstance(page.get("data"), list):
        raise ReportShapeError("page: no `data` list")
    if not isinstance(page.get("has_more"), bool):
        raise ReportShapeError("page: no `has_more`")
    start = int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp())
    for bucket in page["data"]:
        if not isinstance(bucket, dict) or not isinstance(bucket.get("results"), list):
            raise ReportShapeError("bucket: no `results` list")
        if bucket.get("start_time") != start:
            continue  # another day's bucket: not this pull's
        for result in bucket["results"]:
            if not isinstance(result, dict):
                raise ReportShapeError("result: not an object")
            yield result


def token_count(result: Mapping[str, Any], name: str) -> int:
    """A result's token count `name` (absent or null: 0); anything else than a count is refused."""
    value = result.get(name) or 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ReportShapeError(f"{name}: {value!r} is not a token count")
    return value


def usage_entries(page: Any, day: dt.date) -> list[tuple[str, str | None, KeyUsage]]:
    """(model, project, key share) per usage result of `day`."""
    out = []
    for r in results(page, day):
        total, cached = token_count(r, "input_tokens"), token_count(r, "input_cached_tokens")
        tokens = Tokens(
            input=max(total - cached, 0),
            cached_input=cached,
            output=token_count(r, "output_tokens"),
        )
        share = KeyUsage(r.get("api_key_id"), tokens, token_count(r, "num_model_requests"))
        out.append((str(r.get("model") or ""), r.get("project_id"), share))
    return out


def line_model(line_item: object) -> str:
    text = str(line_item or "")
    model, sep, _kind = text.rpartition(", ")
    return model if sep else text


def cost_entries(page: Any, day: dt.date) -> list[tuple[str, str | None, Decimal]]:
    """(model, project, exact USD) per cost result of `day`."""
    out = []
    for r in results(page, day):
        amount = r.get("amount")
        if not isinstance(amount, dict):
            raise ReportShapeError("amount: not an object")
        currency = str(amount.get("currency", "usd")).lower()
        if currency != "usd":
            raise ReportShapeError(f"amount.currency: {currency!r} (only usd is reconciled)")
        out.append((line_model(r.get("line_item")), r.get("project_id"), usd(amount.get("value"))))
    return out
