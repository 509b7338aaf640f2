"""The report APIs' routes (report_api.py), the ledger they read (ledger.py) and the switches a
test flips to make the reports disagree with what was served.

    POST   /_mock/reports          {"price_factor": {"openai": "1.1"},
                                    "prices": {"gpt-4o-mini": {"input": "0.30", ...}},
                                    "dropped_days": [["anthropic", "2026-12-06"]],
                                    "page_results": 2}            replace the switches
    DELETE /_mock/reports          switches back to none
    POST   /_mock/reports/served   {"provider", "day", "model", "api_key", "project"?,
                                    "tokens": {...}, "requests"?}  unseen traffic: usage for a
                                    key the gateway never held, as if the provider served it
    GET    /_mock/reports/served   the ledger, as JSON

The report endpoints take the provider's admin key only (`--openai-admin-key`,
`--anthropic-admin-key`); a serving key is refused as the real APIs refuse it.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
from aiohttp import web

from gateway_extproc.mock import report_api
from gateway_extproc.mock.errors import ApiError, Family, error_body
from gateway_extproc.mock.ledger import (
    DEFAULT_PAGE_RESULTS,
    DEFAULT_PROJECT,
    DEFAULT_WORKSPACE,
    PROVIDERS,
    TOKEN_KINDS,
    Served,
    Switches,
    key_id,
)
from gateway_extproc.mock.settings import CONFIG

LEDGER = web.AppKey("mock_ledger", list[Served])  # appended to by every billed reply
SWITCHES = web.AppKey("mock_report_switches", list[Switches])  # one element, replaced whole
MAX_LEDGER = 100_000
# Which paths bill on whose report (embeddings are on neither usage report: not served here).
REPORTED_PATHS = {
    "/v1/chat/completions": "openai",
    "/v1/completions": "openai",
    "/v1/responses": "openai",
    "/v1/messages": "anthropic",
}
OPENAI_SCOPE_MESSAGE = (
    "You have insufficient permissions for this operation. Missing scopes: api.usage.read. "
    "Check that you have the correct role in your organization, and if you're using a "
    "restricted API key, that it has the necessary scopes."
)


def presented_key(provider: str, headers: Mapping[str, str]) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" and token.strip() else None
    if provider == "anthropic":
        return headers.get("x-api-key") or bearer
    return bearer


def note(request: web.Request, model: str | None, tokens: Mapping[str, int]) -> None:
    """Put one billed reply on its provider's ledger (a path no report covers: nothing)."""
    provider = REPORTED_PATHS.get(request.path)
    if provider is None or model is None:
        return
    key = presented_key(provider, request.headers)
    projects = request.app[CONFIG].key_projects
    default = DEFAULT_PROJECT if provider == "openai" else DEFAULT_WORKSPACE
    ledger = request.app[LEDGER]
    if len(ledger) >= MAX_LEDGER:
        del ledger[: MAX_LEDGER // 10]
    ledger.append(
        Served(
            provider=provider,
            day=dt.datetime.now(dt.UTC).date(),
            model=model,
            project=projects.get(key, default) if key is not None else default,
            api_key_id=key_id(provider, key),
            tokens={kind: int(tokens.get(kind, 0)) for kind in TOKEN_KINDS},
        )
    )


def _refusal(provider: str, request: web.Request) -> web.Response | None:
    config = request.app[CONFIG]
    admin = config.openai_admin_key if provider == "openai" else config.anthropic_admin_key
    presented = presented_key(provider, request.headers)
    if presented is not None and presented == admin:
        return None
    request_id = f"req_mock{secrets.token_hex(12)}"
    if provider == "openai":
        message = OPENAI_SCOPE_MESSAGE
        if presented is None:
            message = (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
        body = orjson.dumps(
            {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            }
        )
    else:
        body = error_body(Family.ANTHROPIC, ApiError(401, "invalid x-api-key"), request_id)
    return web.Response(body=body, status=401, content_type="application/json")


def _bad_query(provider: str, message: str) -> web.Response:
    family = Family.OPENAI if provider == "openai" else Family.ANTHROPIC
    body = error_body(family, ApiError(400, message), f"req_mock{secrets.token_hex(12)}")
    return web.Response(body=body, status=400, content_type="application/json")


Render = Callable[[Sequence[Served], report_api.Query, Switches], dict[str, Any]]


def _route(
    provider: str,
    groups: Sequence[str],
    parse: Callable[[Mapping[str, Sequence[str]], Sequence[str]], report_api.Query],
    render: Render,
) -> Callable[[web.Request], Any]:
    async def serve(request: web.Request) -> web.Response:
        refused = _refusal(provider, request)
        if refused is not None:
            return refused
        params: dict[str, list[str]] = {}
        for name, value in request.query.items():
            params.setdefault(name, []).append(value)
        try:
            query = parse(params, groups)
        except report_api.BadQuery as exc:
            return _bad_query(provider, str(exc))
        ledger: list[Served] = request.app[LEDGER]
        body = render(ledger, query, request.app[SWITCHES][0])
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    return serve


def parse_switches(doc: Any) -> Switches:
    """The switches a test posted; raises ValueError naming every problem."""
    problems: list[str] = []
    if not isinstance(doc, dict):
        raise ValueError("body: must be a JSON object")
    factors: dict[str, Decimal] = {}
    for provider, raw in (doc.get("price_factor") or {}).items():
        try:
            factors[str(provider)] = Decimal(str(raw))
        except InvalidOperation:
            problems.append(f"price_factor.{provider}: {raw!r} is not a decimal")
    prices = {
        str(m): {str(k): str(v) for k, v in p.items()} for m, p in (doc.get("prices") or {}).items()
    }
    dropped: set[tuple[str, dt.date]] = set()
    for item in doc.get("dropped_days") or []:
        try:
            provider, day = item
            if provider not in PROVIDERS:
                raise ValueError
            dropped.add((provider, dt.date.fromisoformat(day)))
        except (TypeError, ValueError):
            problems.append(f"dropped_days: {item!r} must be [provider, YYYY-MM-DD]")
    page_results = doc.get("page_results", DEFAULT_PAGE_RESULTS)
    if not isinstance(page_results, int) or page_results < 1:
        problems.append("page_results: must be an integer >= 1")
        page_results = DEFAULT_PAGE_RESULTS
    unknown = set(doc) - {"price_factor", "prices", "dropped_days", "page_results"}
    problems += [f"{name}: unknown switch" for name in sorted(unknown)]
    if problems:
        raise ValueError("; ".join(problems))
    return Switches(factors, prices, frozenset(dropped), page_results)


async def _set_switches(request: web.Request) -> web.Response:
    try:
        switches = parse_switches(orjson.loads(await request.read() or b"{}"))
    except (ValueError, orjson.JSONDecodeError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    request.app[SWITCHES][0] = switches
    return web.json_response({"ok": True})


async def _clear_switches(request: web.Request) -> web.Response:
    request.app[SWITCHES][0] = Switches()
    return web.json_response({"ok": True})


async def _add_served(request: web.Request) -> web.Response:
    """Unseen traffic: usage the provider served to a key the gateway never held."""
    try:
        doc = orjson.loads(await request.read())
        provider = doc["provider"]
        if provider not in PROVIDERS:
            raise ValueError(f"provider: must be one of {', '.join(PROVIDERS)}")
        key = str(doc["api_key"])
        projects = request.app[CONFIG].key_projects
        default = DEFAULT_PROJECT if provider == "openai" else DEFAULT_WORKSPACE
        entry = Served(
            provider=provider,
            day=dt.date.fromisoformat(doc["day"]),
            model=str(doc["model"]),
            project=doc.get("project", projects.get(key, default)),
            api_key_id=key_id(provider, key),
            tokens={kind: int(doc["tokens"].get(kind, 0)) for kind in TOKEN_KINDS},
            requests=int(doc.get("requests", 1)),
        )
    except (KeyError, TypeError, ValueError, AttributeError, orjson.JSONDecodeError) as exc:
        return web.json_response({"error": f"bad served entry: {exc}"}, status=400)
    request.app[LEDGER].append(entry)
    return web.json_response({"api_key_id": entry.api_key_id})


async def _list_served(request: web.Request) -> web.Response:
    rows = [
        {
            "provider": e.provider,
            "day": e.day.isoformat(),
            "model": e.model,
            "project": e.project,
            "api_key_id": e.api_key_id,
            "tokens": dict(e.tokens),
            "requests": e.requests,
        }
        for e in request.app[LEDGER]
    ]
    return web.Response(body=orjson.dumps(rows), content_type="application/json")


def install(app: web.Application) -> None:
    app[LEDGER] = []
    app[SWITCHES] = [Switches()]
    app.router.add_get(
        "/v1/organization/usage/completions",
        _route(
            "openai",
            report_api.OPENAI_USAGE_GROUPS,
            report_api.openai_query,
            report_api.openai_usage,
        ),
    )
    app.router.add_get(
        "/v1/organization/costs",
        _route(
            "openai",
            report_api.OPENAI_COST_GROUPS,
            report_api.openai_query,
            report_api.openai_costs,
        ),
    )
    app.router.add_get(
        "/v1/organizations/usage_report/messages",
        _route(
            "anthropic",
            report_api.ANTHROPIC_USAGE_GROUPS,
            report_api.anthropic_query,
            report_api.anthropic_usage,
        ),
    )
    app.router.add_get(
        "/v1/organizations/cost_report",
        _route(
            "anthropic",
            report_api.ANTHROPIC_COST_GROUPS,
            report_api.anthropic_query,
            report_api.anthropic_costs,
        ),
    )
    app.router.add_post("/_mock/reports", _set_switches)
    app.router.add_delete("/_mock/reports", _clear_switches)
    app.router.add_post("/_mock/reports/served", _add_served)
    app.router.add_get("/_mock/reports/served", _list_served)
