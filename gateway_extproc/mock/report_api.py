"""The providers' organisation report APIs over the mock's ledger (ledger.py). Pure: a query
string's parameters and the ledger in, a status and a JSON body out.

    OpenAI     GET /v1/organization/usage/completions  start_time, end_time (unix s), 1d buckets,
                                                       group_by (model, project_id,
                                                       api_key_id, batch), limit, page
               GET /v1/organization/costs              start_time, end_time, bucket_width=1d,
                                                       group_by (project_id, line_item), limit, page
    Anthropic  GET /v1/organizations/usage_report/messages   starting_at, ending_at (RFC 3339),
                                                       bucket_width=1d, group_by[] (model,
                                                       workspace_id, api_key_id, service_tier,
                                                       context_window), limit, page
               GET /v1/organizations/cost_report       starting_at, ending_at, group_by[]
                                                       (workspace_id, description), limit, page

Shapes as documented (docs/reconciliation.md cites the pages): OpenAI money is a JSON number of
USD, Anthropic's a decimal string of cents. Only daily buckets (`1d`) are served.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, TypeVar

import orjson

from gateway_extproc.mock.ledger import (
    TOKEN_KINDS,
    Bucket,
    Served,
    Switches,
    cost_lines,
    days_between,
    paginate,
    reported,
    usage_by_group,
)

MAX_DAYS = 31  # `limit` for 1d buckets: default 7, max 31 (both providers)
DEFAULT_DAYS = 7
OPENAI_USAGE_GROUPS = ("project_id", "user_id", "api_key_id", "model", "batch", "service_tier")
OPENAI_COST_GROUPS = ("project_id", "line_item")
ANTHROPIC_USAGE_GROUPS = ("api_key_id", "workspace_id", "model", "service_tier", "context_window")
ANTHROPIC_COST_GROUPS = ("workspace_id", "description")
# OpenAI line items: "<model>, <kind>" (the documented field is a free string; see the docs page)
OPENAI_LINE_KIND = {
    "input_tokens": "input",
    "cached_input_tokens": "cached input",
    "cache_write_input_tokens": "input",  # OpenAI bills cache writes as input
    "cache_write_1h_input_tokens": "input",
    "output_tokens": "output",
}
ANTHROPIC_TOKEN_TYPE = {
    "input_tokens": "uncached_input_tokens",
    "cached_input_tokens": "cache_read_input_tokens",
    "cache_write_input_tokens": "cache_creation.ephemeral_5m_input_tokens",
    "cache_write_1h_input_tokens": "cache_creation.ephemeral_1h_input_tokens",
    "output_tokens": "output_tokens",
}
_DESCRIPTION_KIND = {
    "uncached_input_tokens": "Input Tokens",
    "cache_read_input_tokens": "Cache Read",
    "cache_creation.ephemeral_5m_input_tokens": "Cache Write (5m)",
    "cache_creation.ephemeral_1h_input_tokens": "Cache Write (1h)",
    "output_tokens": "Output Tokens",
}


K = TypeVar("K")  # the key a day's costs are summed by


class BadQuery(ValueError):
    """A query the real API would refuse with 400 (the message says why)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Query:
    start: dt.date
    end: dt.date  # exclusive
    group_by: tuple[str, ...]
    limit: int
    cursor: tuple[int, int]


def _cursor(page: str | None) -> tuple[int, int]:
    if not page:
        return (0, 0)
    try:
        b, r = base64.urlsafe_b64decode(page.removeprefix("page_")).decode().split(":")
        return int(b), int(r)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadQuery(f"page: {page!r} is not a page token") from exc


def _token(cursor: tuple[int, int]) -> str:
    return "page_" + base64.urlsafe_b64encode(f"{cursor[0]}:{cursor[1]}".encode()).decode()


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_DAYS
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_DAYS:
        raise BadQuery(f"limit: must be an integer between 1 and {MAX_DAYS} for 1d buckets")
    return int(raw)


def _groups(values: Sequence[str], allowed: Sequence[str]) -> tuple[str, ...]:
    for value in values:
        if value not in allowed:
            raise BadQuery(f"group_by: {value!r} is not one of {', '.join(allowed)}")
    return tuple(dict.fromkeys(values))


def _width(params: Mapping[str, Sequence[str]]) -> None:
    width = (params.get("bucket_width") or ["1d"])[-1]
    if width != "1d":
        raise BadQuery(f"bucket_width: the mock serves only 1d buckets (got {width!r})")


def _day_of_unix(raw: str | None, name: str) -> dt.date | None:
    if raw is None:
        return None
    if not raw.lstrip("-").isdigit():
        raise BadQuery(f"{name}: must be unix seconds")
    return dt.datetime.fromtimestamp(int(raw), dt.UTC).date()


def _day_of_rfc3339(raw: str | None, name: str) -> dt.date | None:
    if raw is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadQuery(f"{name}: must be an RFC 3339 timestamp") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).date()


def _first(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = params.get(name)
    return values[-1] if values else None


def openai_query(params: Mapping[str, Sequence[str]], groups: Sequence[str]) -> Query:
    start = _day_of_unix(_first(params, "start_time"), "start_time")
    if start is None:
        raise BadQuery("start_time: required")
    _width(params)
    limit = _limit(_first(params, "limit"))
    end = _day_of_unix(_first(params, "end_time"), "end_time") or start + dt.timedelta(days=limit)
    end_raw = _first(params, "end_time")
    if end_raw is not None and int(end_raw) % 86_400:
        end += dt.timedelta(days=1)  # a bucket that starts before end_time is returned
    return Query(
        start,
        max(end, start),
        _groups(params.get("group_by", []), groups),
        limit,
        _cursor(_first(params, "page")),
    )


def anthropic_query(params: Mapping[str, Sequence[str]], groups: Sequence[str]) -> Query:
    start = _day_of_rfc3339(_first(params, "starting_at"), "starting_at")
    if start is None:
        raise BadQuery("starting_at: required")
    _width(params)
    limit = _limit(_first(params, "limit"))
    ending = _first(params, "ending_at")
    end = _day_of_rfc3339(ending, "ending_at") or start + dt.timedelta(days=limit)
    if ending is not None and not ending.replace("Z", "+00:00").endswith("00:00:00+00:00"):
        end += dt.timedelta(days=1)
    values = [*params.get("group_by[]", []), *params.get("group_by", [])]
    return Query(
        start, max(end, start), _groups(values, groups), limit, _cursor(_first(params, "page"))
    )


def _page(
    buckets: list[Bucket],
    q: Query,
    switches: Switches,
    render: Callable[[Bucket], Any],
) -> dict[str, Any]:
    page, following = paginate(buckets, q.limit, switches.page_results, q.cursor)
    return {
        "data": [render(b) for b in page],
        "has_more": following is not None,
        "next_page": None if following is None else _token(following),
    }


def _ts(day: dt.date) -> int:
    return int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp())


def _iso(day: dt.date) -> str:
    return f"{day.isoformat()}T00:00:00Z"


def _usage_buckets(
    served: Sequence[Served],
    q: Query,
    result: Callable[[Mapping[str, object], Mapping[str, int]], dict[str, Any]],
) -> list[Bucket]:
    """A bucket a day, a result per group of `q.group_by`: `result(dimensions, totals)`."""
    buckets = []
    for day in days_between(q.start, q.end):
        groups = usage_by_group(served, day, q.group_by)
        buckets.append(Bucket(day, [result(dict(g), t) for g, t in groups.items()]))
    return buckets


def _day_costs(
    served: Sequence[Served], day: dt.date, switches: Switches, key: Callable[[Served, str], K]
) -> dict[K, Decimal]:
    """`day`'s exact USD summed by `key(entry, token kind)`, over the kinds an entry used."""
    sums: dict[K, Decimal] = {}
    for e in served:
        if e.day != day:
            continue
        for kind, usd in cost_lines(e, switches).items():
            if not e.tokens.get(kind):
                continue
            k = key(e, kind)
            sums[k] = sums.get(k, Decimal(0)) + usd
    return sums


def _openai_bucket(b: Bucket) -> dict[str, Any]:
    return {
        "object": "bucket",
        "start_time": _ts(b.day),
        "end_time": _ts(b.day + dt.timedelta(days=1)),
        "results": b.results,
    }


def _anthropic_bucket(b: Bucket) -> dict[str, Any]:
    return {
        "starting_at": _iso(b.day),
        "ending_at": _iso(b.day + dt.timedelta(days=1)),
        "results": b.results,
    }


def openai_usage(entries: Sequence[Served], q: Query, switches: Switches) -> dict[str, Any]:
    def result(dims: Mapping[str, object], t: Mapping[str, int]) -> dict[str, Any]:
        return {
            "object": "organization.usage.completions.result",
            "input_tokens": t["input_tokens"]
            + t["cached_input_tokens"]
            + t["cache_write_input_tokens"]
            + t["cache_write_1h_input_tokens"],
            "output_tokens": t["output_tokens"],
            "input_cached_tokens": t["cached_input_tokens"],
            "input_audio_tokens": 0,
            "output_audio_tokens": 0,
            "num_model_requests": t["requests"],
            "project_id": dims.get("project_id"),
            "user_id": None,
            "api_key_id": dims.get("api_key_id"),
            "model": dims.get("model"),
            "batch": False if "batch" in q.group_by else None,
            "service_tier": "default" if "service_tier" in q.group_by else None,
        }

    buckets = _usage_buckets(reported(entries, "openai", switches), q, result)
    return {"object": "page", **_page(buckets, q, switches, _openai_bucket)}


def _usd_number(value: Decimal) -> orjson.Fragment:
    """An exact decimal as a JSON number (no float on the way)."""
    return orjson.Fragment(format(value.normalize(), "f").encode())


def openai_costs(entries: Sequence[Served], q: Query, switches: Switches) -> dict[str, Any]:
    served = reported(entries, "openai", switches)

    def key(e: Served, kind: str) -> tuple[str | None, str | None]:
        project = e.project if "project_id" in q.group_by else None
        line = f"{e.model}, {OPENAI_LINE_KIND[kind]}" if "line_item" in q.group_by else None
        return project, line

    buckets = []
    for day in days_between(q.start, q.end):
        results: list[dict[str, Any]] = [
            {
                "object": "organization.costs.result",
                "amount": {"value": _usd_number(usd), "currency": "usd"},
                "line_item": line,
                "project_id": project,
            }
            for (project, line), usd in _day_costs(served, day, switches, key).items()
        ]
        buckets.append(Bucket(day, results))
    return {"object": "page", **_page(buckets, q, switches, _openai_bucket)}


def anthropic_usage(entries: Sequence[Served], q: Query, switches: Switches) -> dict[str, Any]:
    def result(dims: Mapping[str, object], t: Mapping[str, int]) -> dict[str, Any]:
        return {
            "uncached_input_tokens": t["input_tokens"],
            "cache_creation": {
                "ephemeral_1h_input_tokens": t["cache_write_1h_input_tokens"],
                "ephemeral_5m_input_tokens": t["cache_write_input_tokens"],
            },
            "cache_read_input_tokens": t["cached_input_tokens"],
            "output_tokens": t["output_tokens"],
            "server_tool_use": {"web_search_requests": 0},
            "api_key_id": dims.get("api_key_id"),
            "workspace_id": dims.get("workspace_id"),
            "model": dims.get("model"),
            "service_tier": "standard" if "service_tier" in q.group_by else None,
            "context_window": "0-200k" if "context_window" in q.group_by else None,
        }

    buckets = _usage_buckets(reported(entries, "anthropic", switches), q, result)
    return _page(buckets, q, switches, _anthropic_bucket)


def anthropic_costs(entries: Sequence[Served], q: Query, switches: Switches) -> dict[str, Any]:
    served = reported(entries, "anthropic", switches)
    described = "description" in q.group_by

    def key(e: Served, kind: str) -> tuple[str | None, str | None, str | None]:
        workspace = e.project if "workspace_id" in q.group_by else None
        model = e.model if described else None
        token_type = ANTHROPIC_TOKEN_TYPE[kind] if described else None
        return workspace, model, token_type

    buckets = []
    for day in days_between(q.start, q.end):
        results: list[dict[str, Any]] = []
        for (workspace, model, token_type), usd in _day_costs(served, day, switches, key).items():
            cents = usd * 100
            results.append(
                {
                    "currency": "USD",
                    "amount": format(cents.normalize(), "f"),
                    "workspace_id": workspace,
                    "description": None
                    if model is None
                    else f"{model} Usage - {_DESCRIPTION_KIND[str(token_type)]}",
                    "cost_type": "tokens" if described else None,
                    "context_window": "0-200k" if described else None,
                    "model": model,
                    "service_tier": "standard" if described else None,
                    "token_type": token_type,
                    "inference_geo": None,
                }
            )
        buckets.append(Bucket(day, results))
    return _page(buckets, q, switches, _anthropic_bucket)


__all__ = ["TOKEN_KINDS", "BadQuery", "Query"]
