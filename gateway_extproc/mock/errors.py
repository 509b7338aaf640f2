"""Provider-format error bodies: OpenAI `{"error": {...}}`, Anthropic `{"type":"error",...}`.

Pure: an `ApiError` says what went wrong; `error_body` renders it the way the addressed
provider's SDK parses it.
"""

from __future__ import annotations

import enum
from typing import Any

import orjson


class Family(enum.StrEnum):
    """Which provider's wire format an endpoint speaks."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    GEMINI = "gemini"
    AZURE = "azure"  # Azure OpenAI: OpenAI's format, its own 401
    BEDROCK = "bedrock"  # AWS: `{"message": ...}` and the `x-amzn-errortype` header


_OPENAI_TYPES: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    409: ("invalid_request_error", "conflict"),
    413: ("invalid_request_error", "request_too_large"),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", None),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", None),
}
_ANTHROPIC_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_INJECTED_MESSAGES: dict[int, str] = {
    400: "Injected bad request (x-mock-status: 400).",
    401: "Injected authentication failure (x-mock-status: 401).",
    429: "Rate limit reached (injected by x-mock-status: 429). Please try again in 1s.",
    500: "The server had an error while processing your request (injected by x-mock-status).",
    503: "The service is temporarily overloaded (injected by x-mock-status: 503).",
}
# google.rpc.Code names Google's APIs pair with each HTTP status.
_GOOGLE_STATUS: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
RETRY_AFTER_SECONDS = "1"


class ApiError(Exception):
    """An error answer. `code`/`param` fill OpenAI's fields; the status picks the error type."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        anthropic_type: str | None = None,
        retry_after_s: int = int(RETRY_AFTER_SECONDS),
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s  # a 429's retry-after
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.anthropic_type = anthropic_type

    def headers(self) -> dict[str, str]:
        """Extra response headers real providers send with this status."""
        if self.status == 429:
            seconds = self.retry_after_s
            return {"retry-after": str(seconds), "retry-after-ms": str(seconds * 1000)}
        return {}


def openai_type(status: int) -> tuple[str, str | None]:
    """OpenAI's (type, default code) for a status."""
    if status in _OPENAI_TYPES:
        return _OPENAI_TYPES[status]
    return ("server_error", None) if status >= 500 else ("invalid_request_error", None)


def anthropic_type(status: int) -> str:
    """Anthropic's error type for a status."""
    if status in _ANTHROPIC_TYPES:
        return _ANTHROPIC_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def error_payload(family: Family, err: ApiError, request_id: str) -> dict[str, Any]:
    """The error object, as the provider's SDK expects it."""
    if family is Family.BEDROCK:
        return {"message": err.message}
    if family is Family.GEMINI:
        status = _GOOGLE_STATUS.get(err.status, "INTERNAL" if err.status >= 500 else "UNKNOWN")
        return {"error": {"code": err.status, "message": err.message, "status": status}}
    if family is Family.ANTHROPIC:
        return {
            "type": "error",
            "error": {
                "type": err.anthropic_type or anthropic_type(err.status),
                "message": err.message,
            },
            "request_id": request_id,
        }
    if family is Family.AZURE and err.status == 401:  # Azure's gateway, not the model API
        return {"error": {"code": "401", "message": err.message}}
    kind, default_code = openai_type(err.status)
    return {
        "error": {
            "message": err.message,
            "type": kind,
            "param": err.param,
            "code": err.code if err.code is not None else default_code,
        }
    }


def error_body(family: Family, err: ApiError, request_id: str) -> bytes:
    return orjson.dumps(error_payload(family, err, request_id))


def injected_error(status: int, retry_after_s: int | None = None) -> ApiError:
    """The error a test asked for with `x-mock-status` (or `x-mock-fault`: 500, 429@S)."""
    if status == 429 and retry_after_s is not None:
        message = f"Rate limit reached (injected). Please try again in {retry_after_s}s."
        return ApiError(429, message, retry_after_s=retry_after_s)
    message = _INJECTED_MESSAGES.get(status, f"Injected error status {status} (x-mock-status).")
    return ApiError(status, message)


def unknown_model(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
    )
