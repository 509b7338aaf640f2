"""AWS Bedrock's InvokeModel for Anthropic models (`POST /model/{id}/invoke` and
`/model/{id}/invoke-with-response-stream`), built as pure values, and SigV4 verified.

The request must be what Bedrock takes: SigV4-signed by the mock's fixed test credentials
(recomputed here with botocore's own signer over the method, path, signed headers and body; a
mismatch is Bedrock's 403 `InvalidSignatureException`), a body with `anthropic_version:
"bedrock-2023-05-31"` and no `model` or `stream` (400 `ValidationException`, as Bedrock says
of extraneous keys). The answer is the Anthropic message JSON (the model id from the path), or
the Anthropic stream events each in an event-stream `chunk`, the last with
`amazon-bedrock-invocationMetrics` as Bedrock adds it.
"""

from __future__ import annotations

import datetime
import hmac
import re
from collections.abc import Mapping
from typing import Any

import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from gateway_extproc.mock.anthropic_api import messages_reply
from gateway_extproc.mock.errors import ApiError
from gateway_extproc.mock.eventstream import CONTENT_TYPE, chunk_event
from gateway_extproc.mock.wire import JsonReply, Reply, ReplyContext, StreamReply

# The gateway signs with the same pair when it has no AWS credentials (make run).
MOCK_ACCESS_KEY = "AKIDGATEWAYMOCK00000"
MOCK_SECRET_KEY = "gateway-mock-bedrock-secret-key"
ANTHROPIC_VERSION = "bedrock-2023-05-31"
MAX_SKEW = datetime.timedelta(minutes=5)  # Bedrock refuses requests signed further away
_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, ?SignedHeaders=(?P<signed>[a-z0-9;-]+), ?"
    r"Signature=(?P<signature>[0-9a-f]{64})"
)
_SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check "
    "your AWS Secret Access Key and signing method. Consult the service documentation for "
    "details."
)
ERROR_TYPES = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}


def _denied(message: str, kind: str) -> ApiError:
    err = ApiError(403, message)
    err.code = kind
    return err


def signature_error(
    method: str,
    raw_path: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: datetime.datetime,
) -> ApiError | None:
    """None when the request is signed by the mock's credentials for what it carries, else
    Bedrock's 403. `headers`: lower-case names; `raw_path` as received (percent-encoded)."""
    match = _AUTH.fullmatch(headers.get("authorization", ""))
    if match is None:
        return _denied("Missing Authentication Token", "MissingAuthenticationTokenException")
    if match["key"] != MOCK_ACCESS_KEY:
        message = "The security token included in the request is invalid."
        return _denied(message, "UnrecognizedClientException")
    signed = match["signed"].split(";")
    if "host" not in signed or any(name not in headers for name in signed):
        return _denied(_SIGNATURE_MISMATCH, "InvalidSignatureException")
    amz_date = headers.get("x-amz-date", "")
    try:
        when = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        return _denied(_SIGNATURE_MISMATCH, "InvalidSignatureException")
    if abs(now - when) > MAX_SKEW:
        return _denied(
            f"Signature expired: {amz_date} is now earlier than allowed",
            "InvalidSignatureException",
        )
    request = AWSRequest(
        method=method,
        url=f"http://{headers['host']}{raw_path}",
        data=body,
        headers={name: headers[name] for name in signed},
    )
    request.context["timestamp"] = amz_date
    credentials = Credentials(MOCK_ACCESS_KEY, MOCK_SECRET_KEY, headers.get("x-amz-security-token"))
    signer = SigV4Auth(credentials, match["service"], match["region"])
    expected = signer.signature(
        signer.string_to_sign(request, signer.canonical_request(request)), request
    )
    if not hmac.compare_digest(expected, match["signature"]):
        return _denied(_SIGNATURE_MISMATCH, "InvalidSignatureException")
    return None


def _metrics(usage: Mapping[str, Any]) -> dict[str, int]:
    return {
        "inputTokenCount": int(usage.get("input_tokens", 0)),
        "outputTokenCount": int(usage.get("output_tokens", 0)),
        "invocationLatency": 100,
        "firstByteLatency": 10,
        "cacheReadInputTokenCount": int(usage.get("cache_read_input_tokens", 0)),
        "cacheWriteInputTokenCount": int(usage.get("cache_creation_input_tokens", 0)),
    }


def invoke_reply(model_id: str, stream: bool, body: dict[str, Any], ctx: ReplyContext) -> Reply:
    """InvokeModel (`stream` False) or InvokeModelWithResponseStream for a parsed body."""
    if body.get("anthropic_version") != ANTHROPIC_VERSION:
        raise ApiError(400, f"anthropic_version: must be {ANTHROPIC_VERSION}")
    extra = [key for key in ("model", "stream") if key in body]
    if extra:
        raise ApiError(400, f"extraneous key [{extra[0]}] is not permitted")
    reply = messages_reply({**body, "model": model_id, "stream": stream}, ctx)
    if isinstance(reply, JsonReply) or reply.status >= 400:
        return reply
    frames: list[bytes] = []
    input_usage: dict[str, Any] = {}
    output_tokens = 0
    for event in reply.events:
        data = next(line[6:] for line in event.split(b"\n") if line.startswith(b"data: "))
        obj = orjson.loads(data)
        kind = obj.get("type")
        if kind == "message_start":
            input_usage = obj.get("message", {}).get("usage") or {}
        elif kind == "message_delta":
            output_tokens = (obj.get("usage") or {}).get("output_tokens", output_tokens)
        elif kind == "message_stop":
            obj["amazon-bedrock-invocationMetrics"] = _metrics(
                {**input_usage, "output_tokens": output_tokens}
            )
        frames.append(chunk_event(obj))
    return StreamReply(tuple(frames), content_type=CONTENT_TYPE, bill=reply.bill)
