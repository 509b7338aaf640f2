"""What the mock saw and billed: the last requests as received (`GET /_mock/requests`, cleared by
`DELETE`), how many it received per model and `x-mock-fault` (`GET /_mock/counts`, cleared with
the requests) and what each reply was billed (`GET /_mock/bills`), kept on the app."""

from __future__ import annotations

import collections
from typing import Any

import orjson
from aiohttp import web

from gateway_extproc.mock.billing import Progress, billed
from gateway_extproc.mock.controls import Controls
from gateway_extproc.mock.fault_header import Fault
from gateway_extproc.mock.wire import Reply, StreamReply, plan_for

MAX_RECORDED = 100
MAX_BILLS = 1000
RECORDS = web.AppKey("mock_records", collections.deque[dict[str, Any]])
BILLS = web.AppKey("mock_bills", collections.deque[dict[str, Any]])
COUNTS = web.AppKey("mock_counts", collections.Counter[tuple[str, str]])
NO_MODEL = "-"  # the count key of a request with no model the mock could see
NO_FAULT = "none"  # the count key of a request no x-mock-fault rule matched


def record_of(request: web.Request, raw: bytes) -> dict[str, Any]:
    """What `/_mock/requests` shows of one request."""
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    try:
        body: Any = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = None
    return {
        "method": request.method,
        "path": request.path,
        "raw_path": request.raw_path,  # as sent (percent-encoding kept): what a signature covers
        "query": request.query_string,
        "headers": headers,
        "body": body,
    }


def count(
    app: web.Application, record: dict[str, Any], model: str | None, fault: Fault | None
) -> None:
    """Note the request's model and fault in its record, and count them."""
    record["model"] = model
    record["fault"] = None if fault is None else fault.label
    app[COUNTS][(model or NO_MODEL, NO_FAULT if fault is None else fault.label)] += 1


def record_bill(
    request: web.Request, reply: Reply, controls: Controls, progress: Progress
) -> dict[str, int] | None:
    """Record what the reply is billed (a failed request bills nothing); return the tokens."""
    if reply.bill is None or reply.status >= 400 or controls.reset:
        return None
    streamed = isinstance(reply, StreamReply)
    writes = None  # a JSON reply, or a stream written whole: billed whole
    if isinstance(reply, StreamReply) and (progress.cut or controls.aborts):
        writes = plan_for(reply.events, controls).writes
    tokens = billed(reply.bill, writes, progress, controls.generates_after_cut)
    request.app[BILLS].append(
        {
            "request_id": request.headers.get("x-request-id"),
            "path": request.path,
            "streamed": streamed,
            "cut": progress.cut,
            "tokens": tokens,
        }
    )
    return tokens


async def _list_requests(request: web.Request) -> web.Response:
    records = request.app[RECORDS]
    return web.Response(body=orjson.dumps(list(records)), content_type="application/json")


async def _clear_requests(request: web.Request) -> web.Response:
    records = request.app[RECORDS]
    cleared = len(records)
    records.clear()
    request.app[COUNTS].clear()
    return web.json_response({"cleared": cleared})


async def _counts(request: web.Request) -> web.Response:
    """GET /_mock/counts: `{model: {fault: n}}`, every provider request since the last clear
    (fault `none`: answered normally as far as x-mock-fault goes; model `-`: none seen)."""
    out: dict[str, dict[str, int]] = {}
    for (model, fault), n in sorted(request.app[COUNTS].items()):
        out.setdefault(model, {})[fault] = n
    return web.json_response(out)


async def _list_bills(request: web.Request) -> web.Response:
    """GET /_mock/bills: what each request was billed, by its `x-request-id`."""
    bills = request.app[BILLS]
    return web.Response(body=orjson.dumps(list(bills)), content_type="application/json")


def install(app: web.Application) -> None:
    """The logs, and the routes that read them."""
    app[RECORDS] = collections.deque(maxlen=MAX_RECORDED)
    app[BILLS] = collections.deque(maxlen=MAX_BILLS)
    app[COUNTS] = collections.Counter()
    app.router.add_get("/_mock/requests", _list_requests)
    app.router.add_delete("/_mock/requests", _clear_requests)
    app.router.add_get("/_mock/bills", _list_bills)
    app.router.add_get("/_mock/counts", _counts)
