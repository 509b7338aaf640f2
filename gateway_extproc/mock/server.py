"""The mock provider's aiohttp application: routes, auth, request recording, sending replies.

Thin I/O around the pure builders: a handler reads the body, records it, parses the control
headers, then sends the `Reply` a builder returned, applying latency, write splitting, per-write
delays, gzip and aborts.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

from gateway_extproc.mock import azure_identity
from gateway_extproc.mock import bedrock_routes as bedrock
from gateway_extproc.mock.anthropic_api import messages_reply
from gateway_extproc.mock.azure_api import AZURE_METHODS, CONTENT_FILTER_HEADER, azure_reply
from gateway_extproc.mock.billing import Progress, billed
from gateway_extproc.mock.content import parse_body
from gateway_extproc.mock.controls import ControlError, Controls, parse_controls
from gateway_extproc.mock.errors import ApiError, Family, error_body, injected_error
from gateway_extproc.mock.gemini_api import generate_reply
from gateway_extproc.mock.openai_api import chat_reply, completion_reply, embeddings_reply
from gateway_extproc.mock.replay import load_recording
from gateway_extproc.mock.responses_api import responses_reply
from gateway_extproc.mock.vertex_api import (
    ANTHROPIC_METHODS,
    GEMINI_METHODS,
    VERTEX_TOKEN,
    claude_reply,
    gemini_reply,
    token_error,
)
from gateway_extproc.mock.wire import (
    BodyEncoder,
    GzipEncoder,
    JsonReply,
    Reply,
    ReplyContext,
    StreamReply,
    encoder_for,
    plan_for,
)

MAX_RECORDED = 100
MAX_BILLS = 1000
SHUTDOWN_GRACE_SECONDS = 0.5  # in-flight requests get this long on shutdown, then are cut
MAX_BODY_BYTES = 64 * 1024 * 1024
_PAD = b" " * (1 << 20)
Builder = Callable[[dict[str, Any], ReplyContext], Reply]
# A provider's own request check (Bedrock: SigV4) instead of the key check (`auth_error`).
Authorize = Callable[[web.Request, bytes], ApiError | None]


@dataclasses.dataclass(frozen=True, slots=True)
class MockConfig:
    fixtures_dir: Path | None
    openai_key: str | None
    anthropic_key: str | None
    gemini_key: str | None = None
    azure_key: str | None = None  # `api-key` on Azure paths
    azure_token: str | None = None  # `Authorization: Bearer` on Azure paths (Entra ID)
    vertex_token: str = VERTEX_TOKEN


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    family: Family
    build: Builder
    authorize: Authorize | None = None
    keyed: bool = True  # takes the family's API key (Vertex takes its bearer token instead)


ENDPOINTS: dict[str, Endpoint] = {
    "/v1/chat/completions": Endpoint(Family.OPENAI, chat_reply),
    "/v1/completions": Endpoint(Family.OPENAI, completion_reply),
    "/v1/embeddings": Endpoint(Family.OPENAI, embeddings_reply),
    "/v1/responses": Endpoint(Family.OPENAI, responses_reply),
    "/v1/messages": Endpoint(Family.ANTHROPIC, messages_reply),
}
CONFIG = web.AppKey("mock_config", MockConfig)
RECORDS = web.AppKey("mock_records", collections.deque[dict[str, Any]])
HOLDS = web.AppKey("mock_holds", dict[str, asyncio.Event])
HELD = web.AppKey("mock_held", collections.Counter[str])
BILLS = web.AppKey("mock_bills", collections.deque[dict[str, Any]])


def _redact(key: str) -> str:
    return f"{key[:3]}...{key[-4:]}" if len(key) > 8 else "***"


def _bearer(headers: Mapping[str, str]) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def auth_error(family: Family, headers: Mapping[str, str], config: MockConfig) -> ApiError | None:
    """The 401 to answer when a configured provider key is missing or wrong."""
    if family is Family.AZURE:  # either credential Azure takes, when the mock was given one
        if config.azure_key is None and config.azure_token is None:
            return None
        key, token = headers.get("api-key"), _bearer(headers)
        if (key is not None and key == config.azure_key) or (
            token is not None and token == config.azure_token
        ):
            return None
        return ApiError(
            401,
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
            "provide a valid key for an active subscription and use a correct regional API "
            "endpoint for your resource.",
        )
    if family is Family.GEMINI:
        key = config.gemini_key
        presented = headers.get("x-goog-api-key")
        if key is None or presented == key:
            return None
        if presented is None:
            return ApiError(
                403,
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API.",
            )
        return ApiError(400, "API key not valid. Please pass a valid API key.")
    if family is Family.ANTHROPIC:
        # The API takes `x-api-key`; anthropic SDK v2 sends `Authorization: Bearer` instead.
        key = config.anthropic_key
        if key is None or key in (headers.get("x-api-key"), _bearer(headers)):
            return None
        return ApiError(401, "invalid x-api-key")
    if config.openai_key is None:
        return None
    authorization = headers.get("authorization", "")
    if _bearer(headers) == config.openai_key:
        return None
    if not authorization:
        message = (
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
    else:
        presented = authorization.removeprefix("Bearer ").strip()
        message = (
            f"Incorrect API key provided: {_redact(presented)}. You can find your API key at "
            "https://platform.openai.com/account/api-keys."
        )
    return ApiError(401, message, code="invalid_api_key")


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


def _error_reply(family: Family, err: ApiError, request_id: str) -> JsonReply:
    body = error_body(family, err, request_id)
    headers = tuple(err.headers().items())
    if family is Family.BEDROCK:
        headers += bedrock.error_headers(err)
    return JsonReply(body, status=err.status, headers=headers)


def _response_headers(family: Family, reply: Reply, request_id: str) -> CIMultiDict[str]:
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
        if not plan.abort and len(writes) <= 1:
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
        if plan.abort:
            _abort(request)
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


def _abort(request: web.Request) -> None:
    """Cut the connection after what was written: no terminating chunk, no more bytes."""
    transport = request.transport
    if transport is not None:
        transport.close()


async def _handle(endpoint: Endpoint, request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    request.app[RECORDS].append(record_of(request, raw))
    family = endpoint.family
    request_id = f"req_mock{secrets.token_hex(12)}"
    encoder = encoder_for(request.headers.get("Accept-Encoding"))
    try:
        controls = parse_controls(request.headers)
    except ControlError as exc:
        reply: Reply = _error_reply(family, ApiError(400, str(exc)), request_id)
        headers = _response_headers(family, reply, request_id)
        return await send_reply(request, reply, Controls(), encoder, headers)
    if controls.gzip:
        encoder = GzipEncoder()
    if controls.hold is not None:
        await _hold(request.app, controls.hold)
    if controls.latency_ms:
        await asyncio.sleep(controls.latency_ms / 1000)
    try:
        reply = await _reply(endpoint, request, raw, controls)
    except ApiError as err:
        reply = _error_reply(family, err, request_id)
    headers = _response_headers(family, reply, request_id)
    progress = Progress()
    try:
        return await send_reply(request, reply, controls, encoder, headers, progress)
    finally:
        _bill(request, reply, controls, progress)


def _bill(request: web.Request, reply: Reply, controls: Controls, progress: Progress) -> None:
    """Record what the reply is billed (a failed request bills nothing)."""
    if reply.bill is None or reply.status >= 400:
        return
    streamed = isinstance(reply, StreamReply)
    writes = None  # a JSON reply, or a stream written whole: billed whole
    if isinstance(reply, StreamReply) and (progress.cut or controls.abort_after_events is not None):
        writes = plan_for(reply.events, controls).writes
    request.app[BILLS].append(
        {
            "request_id": request.headers.get("x-request-id"),
            "path": request.path,
            "streamed": streamed,
            "cut": progress.cut,
            "tokens": billed(reply.bill, writes, progress, controls.generates_after_cut),
        }
    )


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
        raise injected_error(controls.status)
    context = ReplyContext(controls, secrets.token_hex(12), int(time.time()))
    body = parse_body(raw)
    # Report another model than the one asked for (Bedrock's is in its path, not its body).
    if controls.response_model is not None and endpoint.family is not Family.BEDROCK:
        body = {**body, "model": controls.response_model}
    if endpoint.build is embeddings_reply:  # up to ~100 MB of floats: off the mock's loop
        return await asyncio.to_thread(endpoint.build, body, context)
    return endpoint.build(body, context)


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


async def _gemini(request: web.Request) -> web.StreamResponse:
    """POST /{v1beta|v1}/models/{model}:{generateContent|streamGenerateContent}."""
    version = request.match_info["version"]
    model, _, method = request.match_info["target"].partition(":")
    stream = method == "streamGenerateContent"
    if method not in ("generateContent", "streamGenerateContent"):
        return await _not_found(request)
    if stream and request.query.get("alt") != "sse":  # Google would stream a JSON array
        return await _not_found(request)

    def build(body: dict[str, Any], ctx: ReplyContext) -> Reply:
        return generate_reply(body, ctx, model=model, stream=stream, version=version)

    return await _handle(Endpoint(Family.GEMINI, build), request)


async def _azure(request: web.Request) -> web.StreamResponse:
    """Azure OpenAI: POST /openai/deployments/{d}/{method}?api-version=V (the deployment is the
    model), /openai/v1/{method} and /openai/responses?api-version=V (the body's model is)."""
    deployment = request.match_info.get("deployment")
    method = request.match_info["method"]
    build_openai = AZURE_METHODS.get(method)
    versioned = not request.path.startswith("/openai/v1/")
    if build_openai is None or (deployment is None and method != "responses" and versioned):
        return await _not_found(request)
    if versioned and not request.query.get("api-version"):
        err = ApiError(404, "Resource not found", code="404")
        reply = _error_reply(Family.AZURE, err, f"req_mock{secrets.token_hex(12)}")
        return web.Response(body=reply.body, status=404, content_type="application/json")
    filtered = request.headers.get(CONTENT_FILTER_HEADER) == "prompt"

    def build(body: dict[str, Any], ctx: ReplyContext) -> Reply:
        return azure_reply(build_openai, body, ctx, deployment=deployment, filtered=filtered)

    return await _handle(Endpoint(Family.AZURE, build), request)


async def _bedrock(request: web.Request) -> web.StreamResponse:
    """POST /model/{model_id}/invoke[-with-response-stream], SigV4-signed (bedrock_routes.py)."""
    endpoint = Endpoint(Family.BEDROCK, bedrock.builder(request), bedrock.authorize)
    return await _handle(endpoint, request)


async def _vertex(request: web.Request) -> web.StreamResponse:
    """POST /v1/projects/{p}/locations/{l}/publishers/{google|anthropic}/models/{model}:METHOD."""
    publisher = request.match_info["publisher"]
    model, _, method = request.match_info["target"].partition(":")
    if publisher == "google" and method in GEMINI_METHODS:
        family, stream, build_reply = Family.GEMINI, GEMINI_METHODS[method], gemini_reply
        if stream and request.query.get("alt") != "sse":
            return await _not_found(request)
    elif publisher == "anthropic" and method in ANTHROPIC_METHODS:
        family, stream, build_reply = Family.ANTHROPIC, ANTHROPIC_METHODS[method], claude_reply
    else:
        return await _not_found(request)
    denied = token_error(request.headers, request.app[CONFIG].vertex_token)
    if denied is not None:  # Google's error format, whichever publisher
        await request.read()
        body = error_body(Family.GEMINI, denied, f"req_mock{secrets.token_hex(12)}")
        return web.Response(body=body, status=401, content_type="application/json")

    def build(body: dict[str, Any], ctx: ReplyContext) -> Reply:
        return build_reply(body, ctx, model=model, stream=stream)

    return await _handle(Endpoint(family, build, keyed=False), request)


def _handler(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await _handle(endpoint, request)

    return handle


async def _list_requests(request: web.Request) -> web.Response:
    records = request.app[RECORDS]
    return web.Response(body=orjson.dumps(list(records)), content_type="application/json")


async def _clear_requests(request: web.Request) -> web.Response:
    records = request.app[RECORDS]
    cleared = len(records)
    records.clear()
    return web.json_response({"cleared": cleared})


async def _list_bills(request: web.Request) -> web.Response:
    """GET /_mock/bills: what each request was billed, by its `x-request-id`."""
    bills = request.app[BILLS]
    return web.Response(body=orjson.dumps(list(bills)), content_type="application/json")


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _not_found(request: web.Request) -> web.Response:
    raw = await request.read()
    request.app[RECORDS].append(record_of(request, raw))
    family = Family.ANTHROPIC if request.path.startswith("/v1/messages") else Family.OPENAI
    if request.path.startswith("/v1beta/") or ":" in request.path:
        family = Family.GEMINI
    err = ApiError(
        404, f"Unknown request URL: {request.method} {request.path}.", code="unknown_url"
    )
    reply = _error_reply(family, err, f"req_mock{secrets.token_hex(12)}")
    return web.Response(body=reply.body, status=404, content_type="application/json")


def create_app(
    fixtures_dir: Path | None,
    openai_key: str | None,
    anthropic_key: str | None,
    gemini_key: str | None = None,
    azure_key: str | None = None,
    azure_token: str | None = None,
    identity_header: str | None = None,
) -> web.Application:
    """The mock provider. Keys, when given, are required on their provider's endpoints."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[CONFIG] = MockConfig(
        fixtures_dir,
        openai_key or None,
        anthropic_key or None,
        gemini_key or None,
        azure_key or None,
        azure_token or None,
    )
    app[RECORDS] = collections.deque(maxlen=MAX_RECORDED)
    app[HOLDS] = {}
    app[HELD] = collections.Counter()
    app[BILLS] = collections.deque(maxlen=MAX_BILLS)
    for path, endpoint in ENDPOINTS.items():
        app.router.add_post(path, _handler(endpoint))
    app.router.add_post(r"/{version:v1beta|v1}/models/{target}", _gemini)
    app.router.add_post(r"/openai/deployments/{deployment}/{method:.+}", _azure)
    app.router.add_post(r"/openai/v1/{method:.+}", _azure)
    app.router.add_post(r"/openai/{method:responses}", _azure)
    for path in bedrock.PATHS:
        app.router.add_post(path, _bedrock)
    app.router.add_post(
        "/v1/projects/{project}/locations/{location}/publishers/{publisher}/models/{target}",
        _vertex,
    )
    app.router.add_get("/_mock/requests", _list_requests)
    app.router.add_delete("/_mock/requests", _clear_requests)
    app.router.add_get("/_mock/bills", _list_bills)
    app.router.add_get("/_mock/health", _health)
    app.router.add_post("/_mock/release/{name}", _release)
    app.router.add_get("/_mock/held/{name}", _held)
    azure_identity.install(app, azure_token or None, identity_header or None)
    app.router.add_route("*", "/{tail:.*}", _not_found)
    return app
