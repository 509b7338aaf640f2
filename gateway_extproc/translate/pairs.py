"""The translations the gateway performs, one `Translation` per (client API, provider API) pair:
the one place that lists them. A new pair (Messages -> Bedrock) is a module of pure functions
beside these and one entry in `PAIRS`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from gateway_extproc.apis import API_PREFIX, Api, Schema
from gateway_extproc.translate import (
    chat_to_gemini,
    chat_to_messages,
    gemini_to_chat,
    messages_to_bedrock,
    messages_to_chat,
)
from gateway_extproc.translate.gemini_stream import GeminiToChatStream
from gateway_extproc.translate.stream import MessagesToChatStream

# The Messages API version the translated requests are written for.
ANTHROPIC_VERSION = "2023-06-01"


class StreamTranslator(Protocol):
    """Fed the provider's stream bytes as they come (split anywhere); returns the client's."""

    def feed(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Translation:
    client_api: Api
    provider_api: Api
    # The client's body -> the provider's (unserialised: the model and the output limit are
    # set when the request is forwarded). Raises errors.Untranslatable.
    request: Callable[[dict[str, Any]], dict[str, Any]]
    # The provider's body, the served model and the output limit -> the bytes sent upstream.
    upstream_body: Callable[..., bytes]
    headers: Mapping[str, str]  # set on the forwarded request (API version)
    # The provider's JSON answer -> the client's (`created`: unix seconds).
    response: Callable[..., bytes]
    # A provider error body and its status -> the client's error body (same status).
    error: Callable[[bytes, int], bytes]
    # A streamed answer's translator (`created`, `include_usage`: the client asked for usage).
    stream: Callable[..., StreamTranslator]
    # The provider's path for (the served model, streamed); None: `/v1` + the provider API's
    # path. Gemini and Bedrock name the model (Bedrock: its id) and the method in the path.
    path: Callable[[str, bool], str] | None = None
    # The provider API of a streamed request, when not `provider_api` (Gemini's stream method).
    stream_api: Api | None = None
    # The content type of a translated stream, when the provider's is not the client's.
    stream_content_type: str | None = None

    @property
    def name(self) -> str:
        """`openai_chat>anthropic_messages`, as the audit record and the logs name it."""
        return f"{self.client_api.name.lower()}>{self.provider_api.name.lower()}"

    def provider_api_for(self, stream: bool) -> Api:
        """The API the provider is called with, for a streamed request or not."""
        return self.stream_api if stream and self.stream_api is not None else self.provider_api

    def provider_path(self, model: str, stream: bool) -> str:
        """The provider's path (before the upstream's base path) for the served model."""
        if self.path is not None:
            return self.path(model, stream)
        return API_PREFIX + self.provider_api.value


CHAT_TO_MESSAGES = Translation(
    client_api=Api.OPENAI_CHAT,
    provider_api=Api.ANTHROPIC_MESSAGES,
    request=chat_to_messages.messages_request,
    upstream_body=chat_to_messages.with_overrides,
    headers={"anthropic-version": ANTHROPIC_VERSION},
    response=messages_to_chat.chat_completion,
    error=messages_to_chat.chat_error,
    stream=MessagesToChatStream,
)

CHAT_TO_GEMINI = Translation(
    client_api=Api.OPENAI_CHAT,
    provider_api=Api.GEMINI_GENERATE,
    request=chat_to_gemini.gemini_request,
    upstream_body=chat_to_gemini.with_overrides,
    headers={},
    response=gemini_to_chat.chat_completion,
    error=gemini_to_chat.chat_error,
    stream=GeminiToChatStream,
    path=chat_to_gemini.upstream_path,
    stream_api=Api.GEMINI_STREAM,
)

MESSAGES_TO_BEDROCK = Translation(
    client_api=Api.ANTHROPIC_MESSAGES,
    provider_api=Api.BEDROCK_INVOKE,
    request=messages_to_bedrock.invoke_request,
    upstream_body=messages_to_bedrock.invoke_body,
    headers={},
    response=messages_to_bedrock.same_message,
    error=messages_to_bedrock.anthropic_error,
    stream=messages_to_bedrock.EventStreamToSSE,
    path=messages_to_bedrock.invoke_path,
    stream_content_type=messages_to_bedrock.STREAM_CONTENT_TYPE,
)

PAIRS: dict[tuple[Api, Schema], Translation] = {
    (Api.OPENAI_CHAT, Schema.ANTHROPIC): CHAT_TO_MESSAGES,
    (Api.OPENAI_CHAT, Schema.GEMINI): CHAT_TO_GEMINI,
    (Api.ANTHROPIC_MESSAGES, Schema.BEDROCK): MESSAGES_TO_BEDROCK,
}
# By the API the provider was called with (a request's state names it): both of Gemini's.
BY_APIS: dict[tuple[Api, Api], Translation] = {
    (t.client_api, api): t
    for t in PAIRS.values()
    for api in (t.provider_api, t.provider_api_for(stream=True))
}


def translation_for(client_api: Api, provider_schema: Schema) -> Translation | None:
    """How a request to `client_api` reaches a provider of `provider_schema`; None when the
    gateway does not translate that pair (the same schema needs none)."""
    return PAIRS.get((client_api, provider_schema))


def reaches(client_api: Api, provider_schema: Schema) -> bool:
    """Whether a request to `client_api` can be served by a provider of `provider_schema`
    (natively or translated): what a cross-API downgrade needs."""
    return client_api.schema is provider_schema or (client_api, provider_schema) in PAIRS
