"""The mock's Bedrock routes: InvokeModel and InvokeModelWithResponseStream, Converse and
ConverseStream at `/model/{model_id}/...`, their SigV4 check and AWS's error and request-id
headers.

The glue between aiohttp and the pure builders of bedrock_api.py; routes.py registers the
routes and runs them through the one request handler (handler.py).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway_extproc.mock.bedrock_api import ERROR_TYPES, invoke_reply, signature_error
from gateway_extproc.mock.converse_api import converse_reply
from gateway_extproc.mock.errors import ApiError
from gateway_extproc.mock.wire import Reply, ReplyContext

# The model id is in the path (the body has none: Bedrock refuses one).
PATHS = (
    "/model/{model_id}/invoke",
    "/model/{model_id}/invoke-with-response-stream",
    "/model/{model_id}/converse",
    "/model/{model_id}/converse-stream",
)
REQUEST_ID_HEADER = "x-amzn-requestid"


def authorize(request: web.Request, raw: bytes) -> ApiError | None:
    """Bedrock's 403 unless the request is SigV4-signed by the mock's credentials over what it
    carries (the path as sent, percent-encoding kept), within Bedrock's clock skew."""
    headers = {name.lower(): value for name, value in request.headers.items()}
    now = datetime.datetime.now(datetime.UTC)
    return signature_error(request.method, request.raw_path, headers, raw, now=now)


def builder(request: web.Request) -> Callable[[dict[str, Any], ReplyContext], Reply]:
    """The reply builder for this request's model id and method (streamed or not)."""
    model_id = request.match_info["model_id"]
    converse = request.path.endswith(("/converse", "/converse-stream"))
    streamed = request.path.endswith(("-with-response-stream", "/converse-stream"))

    def build(body: dict[str, Any], ctx: ReplyContext) -> Reply:
        if converse:
            return converse_reply(model_id, streamed, body, ctx)
        return invoke_reply(model_id, streamed, body, ctx)

    return build


def error_headers(err: ApiError) -> tuple[tuple[str, str], ...]:
    """What botocore reads an error's code from."""
    kind = err.code or ERROR_TYPES.get(err.status, "InternalServerException")
    return (("x-amzn-ErrorType", f"{kind}:http://internal.amazon.com/coral/"),)
