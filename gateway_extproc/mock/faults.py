"""What the mock does to a reply, as its control headers ask, beyond building it: aim
`x-mock-fault` at this request's model (fault_header.py), hold it until released
(`POST /_mock/release/NAME`; `GET /_mock/held/NAME` counts the waiting), before it or mid-body,
delay it, reset the connection before it, cut the connection after part of it. The error
statuses it injects are built in errors.py, the write plans that split and cut a reply in
wire.py."""

from __future__ import annotations

import asyncio
import collections
import socket
import struct
from typing import Any

from aiohttp import web

from gateway_extproc.mock import recorder
from gateway_extproc.mock.controls import Controls, aimed_at

HOLDS = web.AppKey("mock_holds", dict[str, asyncio.Event])
HELD = web.AppKey("mock_held", collections.Counter[str])


def aim(request: web.Request, record: dict[str, Any], controls: Controls) -> Controls:
    """The controls for the model this request is for (its first matching `x-mock-fault`
    rule applied), counted by model and fault in the request log."""
    model = target_model(request, record["body"])
    aimed = aimed_at(controls, model, presented_keys(request))
    recorder.count(request.app, record, model, aimed.fault)
    return aimed


def presented_keys(request: web.Request) -> tuple[str, ...]:
    """The credentials the request presents (`x-mock-fault: key:<credential>=...`)."""
    h = request.headers
    scheme, _, token = h.get("authorization", "").partition(" ")
    keys = [token.strip()] if scheme.lower() == "bearer" else []
    keys += [h[k] for k in ("x-api-key", "api-key", "x-goog-api-key") if k in h]
    return tuple(keys)


def target_model(request: web.Request, body: Any) -> str | None:
    """The model the request is for, where its route carries it: Bedrock's model id, an Azure
    deployment, Gemini's and Vertex's `{model}:{method}`; else the body's `model`."""
    info = request.match_info
    if "model_id" in info:
        return info["model_id"]
    if "deployment" in info:
        return info["deployment"]
    if "target" in info:
        return info["target"].partition(":")[0]
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) else None


async def delay(app: web.Application, controls: Controls) -> None:
    """Wait as the controls ask before the reply is built: held, then the latency."""
    if controls.hold is not None:
        await _hold(app, controls.hold)
    if controls.latency_ms:
        await asyncio.sleep(controls.latency_ms / 1000)


async def hold_mid_body(app: web.Application, controls: Controls, written: int) -> None:
    """After `written` body writes: wait for the release when the controls hold there."""
    if controls.hold_after is not None and controls.hold_after[1] == written:
        await _hold(app, controls.hold_after[0])


def abort(request: web.Request) -> None:
    """Cut the connection after what was written: no terminating chunk, no more bytes."""
    transport = request.transport
    if transport is not None:
        transport.close()


def reset(request: web.Request) -> None:
    """Reset the connection (TCP RST, no FIN): nothing of the response was written."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _hold(app: web.Application, name: str) -> None:
    event = app[HOLDS].setdefault(name, asyncio.Event())
    app[HELD][name] += 1
    try:
        await event.wait()
    finally:
        app[HELD][name] -= 1


async def _release(request: web.Request) -> web.Response:
    """POST /_mock/release/NAME: every response held under NAME (and any later one) goes."""
    name = request.match_info["name"]
    request.app[HOLDS].setdefault(name, asyncio.Event()).set()
    return web.json_response({"released": name})


async def _held(request: web.Request) -> web.Response:
    """GET /_mock/held/NAME: how many responses are waiting under NAME."""
    return web.json_response({"held": request.app[HELD][request.match_info["name"]]})


def install(app: web.Application) -> None:
    """The holds, and the routes that release and count them."""
    app[HOLDS] = {}
    app[HELD] = collections.Counter()
    app.router.add_post("/_mock/release/{name}", _release)
    app.router.add_get("/_mock/held/{name}", _held)
