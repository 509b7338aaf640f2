"""Which provider path goes to which reply builder: the OpenAI and Anthropic paths, Gemini's,
Azure OpenAI's, Bedrock's (bedrock_routes.py) and Vertex AI's, each run through the one request
handler (handler.py); any other path gets the provider's 404."""

from __future__ import annotations

import secrets
from typing import Any

from aiohttp import web

from gateway_extproc.mock import bedrock_routes as bedrock
from gateway_extproc.mock import recorder
from gateway_extproc.mock.anthropic_api import messages_reply
from gateway_extproc.mock.azure_api import AZURE_METHODS, CONTENT_FILTER_HEADER, azure_reply
from gateway_extproc.mock.errors import ApiError, Family, error_body
from gateway_extproc.mock.gemini_api import generate_reply
from gateway_extproc.mock.handler import Endpoint, handle, handler
from gateway_extproc.mock.openai_api import chat_reply, completion_reply, embeddings_reply
from gateway_extproc.mock.responses_api import responses_reply
from gateway_extproc.mock.send import error_reply
from gateway_extproc.mock.settings import CONFIG
from gateway_extproc.mock.vertex_api import (
    ANTHROPIC_METHODS,
    GEMINI_METHODS,
    claude_reply,
    gemini_reply,
    token_error,
)
from gateway_extproc.mock.wire import Reply, ReplyContext

ENDPOINTS: dict[str, Endpoint] = {
    "/v1/chat/completions": Endpoint(Family.OPENAI, chat_reply),
    "/v1/completions": Endpoint(Family.OPENAI, completion_reply),
    "/v1/embeddings": Endpoint(Family.OPENAI, embeddings_reply),
    "/v1/responses": Endpoint(Family.OPENAI, responses_reply),
    "/v1/messages": Endpoint(Family.ANTHROPIC, messages_reply),
}


async def _gemini(request: web.Request) -> web.StreamResponse:
    """POST /{v1beta|v1}/models/{model}:{generateContent|streamGenerateContent}."""
    version = request.match_info["version"]
    model, _, method = request.match_info["target"].partition(":")
    stream = method == "streamGenerateContent"
    if method not in ("generateContent", "streamGenerateContent"):
        return await not_found(request)
    if stream and request.query.get("alt") != "sse":  # Google would stream a JSON array
        return await not_found(request)

    def build(body: dict[str, Any], ctx: ReplyContext) -> Reply:
        return generate_reply(body, ctx, model=model, stream=stream, version=version)

    return await handle(Endpoint(Family.GEMINI, build), request)


async def _azure(request: web.Request) -> web.StreamResponse:
    """Azure OpenAI: POST /openai/deployments/{d}/{method}?api-version=V (the deployment is the
    model), /openai/v1/{method} and /openai/responses?api-version=V (the body's model is)."""
    deployment = request.match_info.get("deployment")
    method = request.match_info["method"]
    build_openai = AZURE_METHODS.get(method)
    versioned = not request.path.startswith("/openai/v1/")
    if build_openai is None or (deployment is None and method != "responses" and versioned):
        return await not_found(request)
    if versioned and not request.query.get("api-version"):
        err = ApiError(404, "Resource not found", code="404")
        reply = error_reply(Family.AZURE, err, f"req_mock{secrets.token_hex(12)}")
        return web.Response(body=reply.body, status=404, content_type="application/json")
    filtered = request.headers.get(CONTENT_FILTER_HEADER) == "prompt"

    def build(body: dict[str, Any], ctx: ReplyContext) -> Reply:
        return azure_reply(build_openai, body, ctx, deployment=deployment, filtered=filtered)

    return await handle(Endpoint(Family.AZURE, build), request)


async def _bedrock(request: web.Request) -> web.StreamResponse:
    """POST /model/{model_id}/invoke[-with-response-stream], SigV4-signed (bedrock_routes.py)."""
    endpoint = Endpoint(Family.BEDROCK, bedrock.builder(request), bedrock.authorize)
    return await handle(endpoint, request)


async def _vertex(request: web.Request) -> web.StreamResponse:
    """POST /v1/projects/{p}/locations/{l}/publishers/{google|anthropic}/models/{model}:METHOD."""
    publisher = request.match_info["publisher"]
    model, _, method = request.match_info["target"].partition(":")
    if publisher == "google" and method in GEMINI_METHODS:
        family, stream, build_reply = Family.GEMINI, GEMINI_METHODS[method], gemini_reply
        if stream and request.query.get("alt") != "sse":
            return await not_found(request)
    elif publisher == "anthropic" and method in ANTHROPIC_METHODS:
        family, stream, build_reply = Family.ANTHROPIC, ANTHROPIC_METHODS[method], claude_reply
    else:
        return await not_found(request)
    denied = token_error(request.headers, request.app[CONFIG].vertex_token)
    if denied is not None:  # Google's error format, whichever publisher
        await request.read()
        body = error_body(Family.GEMINI, denied, f"req_mock{secrets.token_hex(12)}")
        return web.Response(body=body, status=401, content_type="application/json")

    def build(body: dict[str, Any], ctx: ReplyContext) -> Reply:
        return build_reply(body, ctx, model=model, stream=stream)

    return await handle(Endpoint(family, build, keyed=False), request)


async def not_found(request: web.Request) -> web.Response:
    """Any other path: the 404 of the provider the path looks like, recorded like any request."""
    raw = await request.read()
    request.app[recorder.RECORDS].append(recorder.record_of(request, raw))
    family = Family.ANTHROPIC if request.path.startswith("/v1/messages") else Family.OPENAI
    if request.path.startswith("/v1beta/") or ":" in request.path:
        family = Family.GEMINI
    err = ApiError(
        404, f"Unknown request URL: {request.method} {request.path}.", code="unknown_url"
    )
    reply = error_reply(family, err, f"req_mock{secrets.token_hex(12)}")
    return web.Response(body=reply.body, status=404, content_type="application/json")


def install(app: web.Application) -> None:
    """The provider routes (the catch-all `not_found` is the app's to add, last)."""
    for path, endpoint in ENDPOINTS.items():
        app.router.add_post(path, handler(endpoint))
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
