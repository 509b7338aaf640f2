"""Google's Gemini API as the gateway's `Provider`: generateContent and its SSE stream."""

from __future__ import annotations

from typing import Any

import orjson

from gateway_extproc.apis import Api, Schema
from gateway_extproc.errors import ClientError
from gateway_extproc.providers.base import JsonMeterResult, StreamHandler
from gateway_extproc.providers.gemini.metering import GeminiStream, meter_gemini_json

# google.rpc.Code names by HTTP status, as Google's APIs pair them.
_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def rpc_status(status: int) -> str:
    """Google's `status` string for an HTTP status."""
    return _STATUS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")


class GeminiProvider:
    schema = Schema.GEMINI
    apis = frozenset({Api.GEMINI_GENERATE, Api.GEMINI_STREAM})

    def meter_json(self, api: Api, obj: dict[str, object]) -> JsonMeterResult:
        return meter_gemini_json(obj)

    def stream_handler(self, api: Api) -> StreamHandler:
        return GeminiStream()

    def error_body(self, err: ClientError, request_id: str) -> bytes:
        """`{"error": {code, message, status, details}}`, as google-genai parses it; the
        gateway's stable code is the `reason` of a google.rpc.ErrorInfo detail."""
        payload: dict[str, Any] = {
            "error": {
                "code": err.status,
                "message": err.message,
                "status": rpc_status(err.status),
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": err.code,
                        "domain": "llm-gateway",
                        "metadata": {"request_id": request_id},
                    }
                ],
            }
        }
        return orjson.dumps(payload)


PROVIDER = GeminiProvider()
