"""Google Vertex AI (POST /v1/projects/{p}/locations/{l}/publishers/{publisher}/models/{m}:METHOD),
built as pure values over the Gemini and Anthropic replies.

`publishers/google`: `:generateContent` and `:streamGenerateContent?alt=sse`, the Gemini API's
body and answer. `publishers/anthropic`: `:rawPredict` (JSON) and `:streamRawPredict` (SSE), the
Messages body without `model` (Vertex takes it from the path; a body that names one is refused)
and with `anthropic_version: vertex-2023-10-16`; the answer is Anthropic's.

Every request must carry `Authorization: Bearer` with the access token the mock was started
with (`VERTEX_TOKEN` by default: the token the gateway sends a mocked Vertex provider), else
Google's 401 UNAUTHENTICATED, as Vertex answers an invalid or expired OAuth2 token.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway_extproc.mock.anthropic_api import messages_reply
from gateway_extproc.mock.errors import ApiError
from gateway_extproc.mock.gemini_api import generate_reply
from gateway_extproc.mock.wire import Reply, ReplyContext

VERTEX_TOKEN = "mock-vertex-access-token"
ANTHROPIC_VERSION = "vertex-2023-10-16"
GEMINI_METHODS = {"generateContent": False, "streamGenerateContent": True}
ANTHROPIC_METHODS = {"rawPredict": False, "streamRawPredict": True}


def token_error(headers: Mapping[str, str], token: str) -> ApiError | None:
    """Google's 401 when the bearer token is missing or not the one the mock accepts."""
    scheme, _, presented = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and presented.strip() == token:
        return None
    return ApiError(
        401,
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
        "cookie or other valid authentication credential.",
    )


def claude_reply(body: dict[str, Any], ctx: ReplyContext, *, model: str, stream: bool) -> Reply:
    """rawPredict / streamRawPredict: the model from the path, the rest as the Messages API."""
    if "model" in body:
        raise ApiError(400, "model: Extra inputs are not permitted", param="model")
    if body.get("anthropic_version") != ANTHROPIC_VERSION:
        raise ApiError(
            400, f"anthropic_version: must be {ANTHROPIC_VERSION}", param="anthropic_version"
        )
    if (body.get("stream") is True) is not stream:
        raise ApiError(400, "stream: streamRawPredict takes stream: true, rawPredict does not")
    rest = {k: v for k, v in body.items() if k != "anthropic_version"}
    return messages_reply({**rest, "model": model}, ctx)


def gemini_reply(body: dict[str, Any], ctx: ReplyContext, *, model: str, stream: bool) -> Reply:
    return generate_reply(body, ctx, model=model, stream=stream, version="v1")
