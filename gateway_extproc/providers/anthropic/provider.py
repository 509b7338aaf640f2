"""Anthropic's wire format as the gateway's `Provider`: the Messages API."""

from __future__ import annotations

from typing import Any

import orjson

from gateway_extproc.apis import Api, Schema
from gateway_extproc.errors import ClientError
from gateway_extproc.providers.anthropic.metering import AnthropicStream, meter_anthropic_json
from gateway_extproc.providers.base import JsonMeterResult, StreamHandler


class AnthropicProvider:
    schema = Schema.ANTHROPIC
    apis = frozenset({Api.ANTHROPIC_MESSAGES})

    def meter_json(self, api: Api, obj: dict[str, object]) -> JsonMeterResult:
        return meter_anthropic_json(obj)

    def stream_handler(self, api: Api) -> StreamHandler:
        return AnthropicStream()

    def error_body(self, err: ClientError, request_id: str) -> bytes:
        """`{"type": "error", "error": {type, message}}`, as the anthropic SDKs parse it."""
        payload: dict[str, Any] = {
            "type": "error",
            "error": {"type": err.anthropic_type, "message": err.message},
            "request_id": request_id,
        }
        return orjson.dumps(payload)


PROVIDER = AnthropicProvider()
