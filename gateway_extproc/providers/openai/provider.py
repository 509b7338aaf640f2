"""OpenAI's wire format as the gateway's `Provider`: Chat Completions, Responses, legacy
Completions and Embeddings (the last two meter like chat; embeddings never stream)."""

from __future__ import annotations

from typing import Any

import orjson

from gateway_extproc.apis import Api, Schema
from gateway_extproc.errors import ClientError
from gateway_extproc.providers.base import JsonMeterResult, StreamHandler
from gateway_extproc.providers.openai.metering import (
    OpenAIChatStream,
    OpenAIResponsesStream,
    meter_openai_chat_json,
    meter_openai_responses_json,
)


class OpenAIProvider:
    schema = Schema.OPENAI
    apis = frozenset(
        {Api.OPENAI_CHAT, Api.OPENAI_RESPONSES, Api.OPENAI_EMBEDDINGS, Api.OPENAI_COMPLETIONS}
    )

    def meter_json(self, api: Api, obj: dict[str, object]) -> JsonMeterResult:
        if api is Api.OPENAI_RESPONSES:
            return meter_openai_responses_json(obj)
        return meter_openai_chat_json(obj)  # chat, legacy completions, embeddings

    def stream_handler(self, api: Api) -> StreamHandler:
        if api is Api.OPENAI_RESPONSES:
            return OpenAIResponsesStream()
        return OpenAIChatStream()  # chat, legacy completions (embeddings never stream)

    def error_body(self, err: ClientError, request_id: str) -> bytes:
        """`{"error": {message, type, param, code}}`, as the openai SDKs parse it."""
        payload: dict[str, Any] = {
            "error": {
                "message": err.message,
                "type": err.openai_type,
                "param": None,
                "code": err.code,
            },
            "request_id": request_id,
        }
        return orjson.dumps(payload)


PROVIDER = OpenAIProvider()
