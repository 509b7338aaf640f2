"""Envoy's own error replies (sidecar down, body too large, provider unreachable, the edge's
limits) as JSON in the format of the client's API, chosen by the request's path.

Pure: the gateway config in, the connection manager's `local_reply_config` out.
"""

from __future__ import annotations

from typing import Any

from gateway_extproc.config.gateway import GatewayConfig
from gateway_extproc.envoy.edge import local_replies
from gateway_extproc.providers.bedrock.converse import error_type as bedrock_error_type
from gateway_extproc.providers.gemini.provider import rpc_status

_T = "type.googleapis.com/envoy."

# Envoy's own replies for each client API family: (CEL test on the path, the family). Envoy
# takes the first mapper that matches; the OpenAI one, last, has no test and also answers errors
# before any path was read (a malformed request line).
_FAMILIES = (
    (
        " && (request.path.startsWith('/v1beta/') || (request.path.startsWith('/v1/models/')"
        " && request.path.contains(':')))",
        "gemini",
    ),
    (" && request.path.startsWith('/v1/messages')", "anthropic"),
    (" && request.path.startsWith('/model/')", "bedrock"),  # boto3's bedrock-runtime (Converse)
    ("", "openai"),
)


def _error_json(family: str, message: str, code: str, status: int | None) -> dict[str, Any]:
    if family == "gemini":  # google-genai reads code, message and status
        return {
            "error": {
                "code": "%RESPONSE_CODE%" if status is None else status,
                "message": message,
                "status": rpc_status(status or 500),
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": code,
                        "domain": "llm-gateway",
                        "metadata": {"request_id": "%REQ(X-REQUEST-ID)%"},
                    }
                ],
            }
        }
    if family == "bedrock":  # botocore reads the code from `__type` (a body `code` would win)
        body: dict[str, Any] = {
            "message": message,
            "gatewayCode": code,
            "requestId": "%REQ(X-REQUEST-ID)%",
        }
        if status is not None:  # else botocore's code is the HTTP status Envoy keeps
            body["__type"] = bedrock_error_type(status)
        return body
    if family == "anthropic":
        return {
            "type": "error",
            "error": {"type": code, "message": message},
            "request_id": "%REQ(X-REQUEST-ID)%",
        }
    return {
        "error": {"message": message, "type": "gateway_error", "param": None, "code": code},
        "request_id": "%REQ(X-REQUEST-ID)%",
    }


def local_reply_config(config: GatewayConfig) -> dict[str, Any]:
    """Envoy's own error replies (sidecar down, body too large, provider unreachable) as JSON in
    the client's API format. The sidecar's replies (details `gateway_*`) are left alone."""
    cases: list[tuple[str, int | None, str, str]] = [
        (
            "response.code_details.startsWith('ext_proc')",
            503,
            "the gateway's metering sidecar is unavailable; "
            "the request was not sent to the provider",
            "gateway_unavailable",
        ),
        (
            "response.code_details == 'request_payload_too_large'",
            413,
            f"request body exceeds the gateway's limit of "
            f"{config.limits.max_request_body_bytes} bytes",
            "request_too_large",
        ),
        *local_replies(config.limits),
        (
            # A route's direct response (/.well-known/llm-gateway) is an answer, not an error.
            "!response.code_details.startsWith('gateway_')"
            " && response.code_details != 'direct_response'",
            None,
            "%LOCAL_REPLY_BODY% (%RESPONSE_CODE_DETAILS%)",
            "gateway_error",
        ),
    ]
    mappers = []
    for condition, status, message, code in cases:
        for path_test, family in _FAMILIES:
            expression = condition + path_test
            mapper: dict[str, Any] = {
                "filter": {
                    "extension_filter": {
                        "name": "envoy.access_loggers.extension_filters.cel",
                        "typed_config": {
                            "@type": _T
                            + "extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                            "expression": expression,
                        },
                    }
                },
                "body_format_override": {"json_format": _error_json(family, message, code, status)},
            }
            if status is not None:
                mapper["status_code"] = status
            mappers.append(mapper)
    return {"mappers": mappers}
