"""Writing a built `Reply` to the client: the provider's headers (its request-id header, content
type, encoding), its error replies, and the body written as the controls ask: split into writes,
delayed between them, gzipped, padded to a size, or cut off (faults.py)."""

from __future__ import annotations

import asyncio

from aiohttp import web
from multidict import CIMultiDict

from gateway_extproc.mock import bedrock_routes as bedrock
from gateway_extproc.mock import faults
from gateway_extproc.mock.billing import Progress
from gateway_extproc.mock.controls import Controls
from gateway_extproc.mock.errors import ApiError, Family, error_body
from gateway_extproc.mock.wire import BodyEncoder, JsonReply, Reply, StreamReply, plan_for

_PAD = b" " * (1 << 20)


def error_reply(family: Family, err: ApiError, request_id: str) -> JsonReply:
    """`err` in the provider family's error format, with its headers."""
    body = error_body(family, err, request_id)
    headers = tuple(err.headers().items())
    if family is Family.BEDROCK:
        headers += bedrock.error_headers(err)
    return JsonReply(body, status=err.status, headers=headers)


def response_headers(family: Family, reply: Reply, request_id: str) -> CIMultiDict[str]:
    """The provider's request-id headers (unless the reply has its own), the reply's headers and
    its content type."""
    headers: CIMultiDict[str] = CIMultiDict()
    recorded = {name.lower() for name, _ in reply.headers}
    if family is Family.GEMINI:
        defaults = {"x-goog-request-id": request_id}  # not Google's header: the mock's trace
    elif family is Family.ANTHROPIC:
        defaults = {"request-id": request_id}
    elif family is Family.AZURE:
        defaults = {"apim-request-id": request_id, "x-request-id": request_id}
    elif family is Family.BEDROCK:
        defaults = {bedrock.REQUEST_ID_HEADER: request_id}
    else:
        defaults = {"x-request-id": request_id, "openai-version": "2020-10-01"}
    for name, value in defaults.items():
        if name not in recorded:
            headers[name] = value
    for name, value in reply.headers:
        headers.add(name, value)
    headers["Content-Type"] = reply.content_type
    return headers


async def send_reply(
    request: web.Request,
    reply: Reply,
    controls: Controls,
    encoder: BodyEncoder,
    headers: CIMultiDict[str],
    progress: Progress | None = None,
) -> web.StreamResponse:
    """Write `reply` as the controls ask: split, delayed, compressed, maybe cut off; how far it
    got goes into `progress`."""
    progress = progress or Progress()
    if controls.reset:  # x-mock-fault reset: not even a status line
        faults.reset(request)
        return web.StreamResponse(status=reply.status)
    if encoder.content_encoding is not None:
        headers["Content-Encoding"] = encoder.content_encoding
        headers["Vary"] = "Accept-Encoding"
    if controls.content_encoding is not None:  # a false label: the bytes stay as they are
        headers["Content-Encoding"] = controls.content_encoding
    if isinstance(reply, JsonReply) and controls.pad_bytes:
        return await _send_padded(request, reply, controls.pad_bytes, encoder, headers)
    streamed = isinstance(reply, StreamReply)
    if isinstance(reply, StreamReply):
        plan = plan_for(reply.events, controls)
        writes = [encoder.encode(chunk) for chunk in plan.writes]
    else:
        payload = encoder.encode(reply.body) + encoder.flush()
        plan = plan_for([payload], controls)
        writes = list(plan.writes)
        if not plan.abort and len(writes) <= 1 and controls.hold_after is None:
            return web.Response(body=payload, status=reply.status, headers=headers)
        headers["Content-Length"] = str(len(payload))
    response = web.StreamResponse(status=reply.status, headers=headers)
    delay = controls.chunk_delay_ms / 1000
    try:
        await response.prepare(request)
        for index, chunk in enumerate(writes):
            if index and delay:
                await asyncio.sleep(delay)
            progress.attempted = index + 1
            await response.write(chunk)
            await faults.hold_mid_body(request.app, controls, index + 1)
        if plan.abort:
            faults.abort(request)
            return response
        if streamed:
            tail = encoder.flush()
            if tail:
                await response.write(tail)
        await response.write_eof()
    except ConnectionError:
        progress.cut = True  # the client (or the gateway) went away mid-body
    return response


async def _send_padded(
    request: web.Request,
    reply: JsonReply,
    pad_bytes: int,
    encoder: BodyEncoder,
    headers: CIMultiDict[str],
) -> web.StreamResponse:
    """`reply` with `pad_bytes` spaces after its opening brace, written (and encoded) a block at
    a time: a body of any size without holding it."""
    response = web.StreamResponse(status=reply.status, headers=headers)
    await response.prepare(request)
    try:
        await response.write(encoder.encode(reply.body[:1]))
        left = pad_bytes
        while left > 0:
            block = _PAD[: min(left, len(_PAD))]
            await response.write(encoder.encode(block))
            left -= len(block)
            await asyncio.sleep(0)  # ~3 ms of gzip per block: let the mock's other replies go
        await response.write(encoder.encode(reply.body[1:]) + encoder.flush())
        await response.write_eof()
    except ConnectionError:
        pass  # the gateway stopped reading: nothing left to do
    return response
