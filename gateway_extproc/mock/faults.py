"""What the mock does to a reply, as its control headers ask, beyond building it: hold it until
released (`POST /_mock/release/NAME`; `GET /_mock/held/NAME` counts the waiting), delay it, cut
the connection after part of it. The error statuses it injects are built in errors.py, the write
plans that split and cut a reply in wire.py."""

from __future__ import annotations

import asyncio
import collections

from aiohttp import web

from gateway_extproc.mock.controls import Controls

HOLDS = web.AppKey("mock_holds", dict[str, asyncio.Event])
HELD = web.AppKey("mock_held", collections.Counter[str])


async def delay(app: web.Application, controls: Controls) -> None:
    """Wait as the controls ask before the reply is built: held, then the latency."""
    if controls.hold is not None:
        await _hold(app, controls.hold)
    if controls.latency_ms:
        await asyncio.sleep(controls.latency_ms / 1000)


def abort(request: web.Request) -> None:
    """Cut the connection after what was written: no terminating chunk, no more bytes."""
    transport = request.transport
    if transport is not None:
        transport.close()


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
