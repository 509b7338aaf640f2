"""The one request handler every provider route runs: read and record the request, parse the
control headers, wait as they ask, build the reply (auth first, then the request, as a provider
decides), send it, and record what it billed."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway_extproc.mock import faults, recorder, reports
from gateway_extproc.mock.auth import auth_error
from gateway_extproc.mock.billing import Progress
from gateway_extproc.mock.content import parse_body
from gateway_extproc.mock.controls import ControlError, Controls, parse_controls
from gateway_extproc.mock.errors import ApiError, Family, injected_error
from gateway_extproc.mock.openai_api import embeddings_reply
from gateway_extproc.mock.replay import load_recording
from gateway_extproc.mock.send import error_reply, response_headers, send_reply
from gateway_extproc.mock.settings import CONFIG
from gateway_extproc.mock.wire import GzipEncoder, Reply, ReplyContext, encoder_for

Builder = Callable[[dict[str, Any], ReplyContext], Reply]
# A provider's own request check (Bedrock: SigV4) instead of the key check (`auth_error`).
Authorize = Callable[[web.Request, bytes], ApiError | None]


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    family: Family
    build: Builder
    authorize: Authorize | None = None
    keyed: bool = True  # takes the family's API key (Vertex takes its bearer token instead)


async def handle(endpoint: Endpoint, request: web.Request) -> web.StreamResponse:
    """Answer `request` as `endpoint`'s provider would, as its control headers ask."""
    raw = await request.read()
    record = recorder.record_of(request, raw)
    request.app[recorder.RECORDS].append(record)
    family = endpoint.family
    request_id = f"req_mock{secrets.token_hex(12)}"
    encoder = encoder_for(request.headers.get("Accept-Encoding"))
    try:
        controls = parse_controls(request.headers)
    except ControlError as exc:
        reply: Reply = error_reply(family, ApiError(400, str(exc)), request_id)
        headers = response_headers(family, reply, request_id)
        return await send_reply(request, reply, Controls(), encoder, headers)
    controls = faults.aim(request, record, controls)  # this target's x-mock-fault, counted
    if controls.gzip:
        encoder = GzipEncoder()
    await faults.delay(request.app, controls)
    try:
        reply = await _reply(endpoint, request, raw, controls)
    except ApiError as err:
        reply = error_reply(family, err, request_id)
    headers = response_headers(family, reply, request_id)
    progress = Progress()
    try:
        return await send_reply(request, reply, controls, encoder, headers, progress)
    finally:
        tokens = recorder.record_bill(request, reply, controls, progress)
        if tokens is not None:  # on its provider's usage and cost reports too
            reports.note(request, record.get("model"), tokens)


async def _reply(endpoint: Endpoint, request: web.Request, raw: bytes, controls: Controls) -> Reply:
    """The reply to send, in the order a provider decides: auth, then the request itself."""
    config = request.app[CONFIG]
    if endpoint.authorize is not None:
        denied = endpoint.authorize(request, raw)
    else:
        denied = auth_error(endpoint.family, request.headers, config) if endpoint.keyed else None
    if denied is not None:
        raise denied
    if controls.replay is not None:
        fixtures = config.fixtures_dir
        recording = await asyncio.to_thread(load_recording, fixtures, controls.replay)
        return recording.reply()
    if controls.status is not None:
        raise injected_error(controls.status, controls.retry_after_s)
    context = ReplyContext(controls, secrets.token_hex(12), int(time.time()))
    body = parse_body(raw)
    # Report another model than the one asked for (Bedrock's is in its path, not its body).
    if controls.response_model is not None and endpoint.family is not Family.BEDROCK:
        body = {**body, "model": controls.response_model}
    if endpoint.build is embeddings_reply:  # up to ~100 MB of floats: off the mock's loop
        return await asyncio.to_thread(endpoint.build, body, context)
    return endpoint.build(body, context)


def handler(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An aiohttp handler that runs `endpoint` through `handle`."""

    async def run(request: web.Request) -> web.StreamResponse:
        return await handle(endpoint, request)

    return run
