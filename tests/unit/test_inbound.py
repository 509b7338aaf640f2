"""Request side, pure: parsing request bodies, estimating input tokens, the upstream body."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import orjson
import pytest

from gateway_extproc.apis import CLIENT_APIS, Api
from gateway_extproc.errors import BadRequest, UnsupportedOption
from gateway_extproc.providers.inbound import (
    TOKENS_PER_MEDIA_PART,
    TOKENS_PER_MESSAGE,
    ParsedRequest,
    estimate_input_tokens,
    parse_request,
    upstream_body,
)


def raw(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def parse(api: Api, obj: Any) -> ParsedRequest:
    return parse_request(api, raw(obj))


CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}
MESSAGES = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Hi"}],
}
BASE: dict[Api, dict[str, Any]] = {
    Api.OPENAI_CHAT: CHAT,
    Api.OPENAI_RESPONSES: {"model": "gpt-4o", "input": "Hi"},
    Api.OPENAI_EMBEDDINGS: {"model": "text-embedding-3-small", "input": "Hi"},
    Api.OPENAI_COMPLETIONS: {"model": "gpt-3.5-turbo-instruct", "prompt": "Hi"},
    Api.ANTHROPIC_MESSAGES: MESSAGES,
    Api.GEMINI_GENERATE: {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]},
    Api.GEMINI_STREAM: {"contents": [{"parts": [{"text": "Hi"}]}]},
    Api.BEDROCK_CONVERSE: {"messages": [{"role": "user", "content": [{"text": "Hi"}]}]},
    Api.BEDROCK_CONVERSE_STREAM: {"messages": [{"role": "user", "content": [{"text": "Hi"}]}]},
}
# Gemini names the model, and whether it streams, in the path.
GEMINI_PATHS = {
    Api.GEMINI_GENERATE: "/v1beta/models/gemini-2.5-flash:generateContent",
    Api.GEMINI_STREAM: "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
    # Bedrock's Converse too (the model id percent-encoded, as botocore sends it)
    Api.BEDROCK_CONVERSE: "/model/gemini-2.5-flash/converse",
    Api.BEDROCK_CONVERSE_STREAM: "/model/gemini-2.5-flash/converse-stream",
}


def test_every_api_has_a_base_request() -> None:
    assert set(BASE) == set(CLIENT_APIS)  # Bedrock's InvokeModel is spoken to providers only


# --- parse_request: the fields the gateway relies on --------------------------------------------


@pytest.mark.parametrize("api", CLIENT_APIS)
def test_parse_minimal_request(api: Api) -> None:
    body = BASE[api]
    path = GEMINI_PATHS.get(api, "")
    req = parse_request(api, raw(body), path)
    assert (req.api, req.body, req.model, req.stream, req.wants_usage) == (
        api,
        body,
        "gemini-2.5-flash" if path else body["model"],
        api in (Api.GEMINI_STREAM, Api.BEDROCK_CONVERSE_STREAM),
        False,
    )
    assert req.input_tokens_estimate == estimate_input_tokens(body, api) > 0


# (api, extra fields, max_output_tokens)
MAX_TOKENS: list[tuple[Api, dict[str, Any], int | None]] = [
    (Api.OPENAI_CHAT, {}, None),
    (Api.OPENAI_CHAT, {"max_tokens": 100}, 100),
    (Api.OPENAI_CHAT, {"max_completion_tokens": 200}, 200),
    (Api.OPENAI_CHAT, {"max_completion_tokens": 200, "max_tokens": 100}, 200),
    (Api.OPENAI_CHAT, {"max_completion_tokens": None, "max_tokens": 100}, 100),
    (Api.OPENAI_CHAT, {"max_completion_tokens": 0}, 0),
    (Api.OPENAI_CHAT, {"max_output_tokens": 100}, None),  # not chat's field
    (Api.OPENAI_RESPONSES, {}, None),
    (Api.OPENAI_RESPONSES, {"max_output_tokens": 300}, 300),
    (Api.OPENAI_RESPONSES, {"max_tokens": 300}, None),  # not the Responses field
    (Api.OPENAI_COMPLETIONS, {"max_tokens": 16}, 16),
    (Api.OPENAI_COMPLETIONS, {"max_completion_tokens": 16}, None),
    (Api.OPENAI_COMPLETIONS, {}, None),
    (Api.ANTHROPIC_MESSAGES, {}, 64),
    (Api.ANTHROPIC_MESSAGES, {"max_tokens": 4096}, 4096),
    (Api.ANTHROPIC_MESSAGES, {"max_tokens": None}, None),
    (Api.OPENAI_EMBEDDINGS, {}, 0),
    (Api.OPENAI_EMBEDDINGS, {"max_tokens": 100}, 0),  # embeddings produce no output
]


@pytest.mark.parametrize(("api", "extra", "expected"), MAX_TOKENS)
def test_max_output_tokens(api: Api, extra: dict[str, Any], expected: int | None) -> None:
    assert parse(api, {**BASE[api], **extra}).max_output_tokens == expected


# (api, extra fields, stream, wants_usage)
STREAMS: list[tuple[Api, dict[str, Any], bool, bool]] = [
    (Api.OPENAI_CHAT, {"stream": True}, True, False),
    (Api.OPENAI_CHAT, {"stream": False}, False, False),
    (Api.OPENAI_CHAT, {"stream": None}, False, False),
    (Api.OPENAI_CHAT, {"stream": True, "stream_options": None}, True, False),
    (Api.OPENAI_CHAT, {"stream": True, "stream_options": {}}, True, False),
    (Api.OPENAI_CHAT, {"stream": True, "stream_options": {"include_usage": True}}, True, True),
    (Api.OPENAI_CHAT, {"stream": True, "stream_options": {"include_usage": False}}, True, False),
    (Api.OPENAI_CHAT, {"stream": True, "stream_options": {"include_usage": 1}}, True, False),
    (Api.OPENAI_COMPLETIONS, {"stream": True}, True, False),
    (Api.OPENAI_RESPONSES, {"stream": True}, True, False),
    (Api.ANTHROPIC_MESSAGES, {"stream": True}, True, False),
    (Api.OPENAI_EMBEDDINGS, {"stream": False}, False, False),
    (Api.OPENAI_EMBEDDINGS, {"stream": None}, False, False),
]


@pytest.mark.parametrize(("api", "extra", "stream", "wants_usage"), STREAMS)
def test_stream_flags(api: Api, extra: dict[str, Any], stream: bool, wants_usage: bool) -> None:
    req = parse(api, {**BASE[api], **extra})
    assert (req.stream, req.wants_usage) == (stream, wants_usage)


MISSING = object()


def with_model(api: Api, model: object) -> bytes:
    body = {k: v for k, v in BASE[api].items() if k != "model"}
    return raw(body if model is MISSING else {**body, "model": model})


# (id, api, raw body, message)
BAD: list[tuple[str, Api, bytes, str]] = [
    ("empty", Api.OPENAI_CHAT, b"", "request body is empty: expected a JSON object"),
    (
        "whitespace",
        Api.ANTHROPIC_MESSAGES,
        b" \r\n\t",
        "request body is empty: expected a JSON object",
    ),
    ("array", Api.OPENAI_CHAT, b"[]", "request body must be a JSON object"),
    ("string", Api.OPENAI_CHAT, b'"hi"', "request body must be a JSON object"),
    ("null", Api.OPENAI_RESPONSES, b"null", "request body must be a JSON object"),
    ("number", Api.OPENAI_EMBEDDINGS, b"1", "request body must be a JSON object"),
    *[
        (
            f"model {name}",
            api,
            with_model(api, value),
            "`model` is required and must be a non-empty string",
        )
        for name, value in (
            ("missing", MISSING),
            ("null", None),
            ("empty", ""),
            ("blank", "  "),
            ("number", 4),
            ("list", ["gpt-4o"]),
        )
        for api in (Api.OPENAI_CHAT, Api.ANTHROPIC_MESSAGES)
    ],
    *[
        (
            f"stream {value!r}",
            Api.OPENAI_CHAT,
            raw({**CHAT, "stream": value}),
            "`stream` must be a boolean",
        )
        for value in ("true", 1, 0, [], {})
    ],
    (
        "stream on embeddings",
        Api.OPENAI_EMBEDDINGS,
        raw({**BASE[Api.OPENAI_EMBEDDINGS], "stream": True}),
        "embeddings do not support `stream`",
    ),
    *[
        (
            f"{api.name} {field}={value!r}",
            api,
            raw({**BASE[api], field: value}),
            f"`{field}` must be a non-negative integer",
        )
        for api, field in (
            (Api.OPENAI_CHAT, "max_tokens"),
            (Api.OPENAI_CHAT, "max_completion_tokens"),
            (Api.OPENAI_RESPONSES, "max_output_tokens"),
            (Api.OPENAI_COMPLETIONS, "max_tokens"),
            (Api.ANTHROPIC_MESSAGES, "max_tokens"),
        )
        for value in (-1, True, False, 1.5, 10.0, "10")
    ],
    (
        "bad max_completion_tokens wins over a good max_tokens",
        Api.OPENAI_CHAT,
        raw({**CHAT, "max_completion_tokens": -5, "max_tokens": 10}),
        "`max_completion_tokens` must be a non-negative integer",
    ),
    *[
        (
            f"stream_options {value!r}",
            Api.OPENAI_CHAT,
            raw({**CHAT, "stream": True, "stream_options": value}),
            "`stream_options` must be an object",
        )
        for value in (True, "include_usage", [], 1)
    ],
]


@pytest.mark.parametrize(("api", "body", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_request(api: Api, body: bytes, message: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_request(api, body)
    assert info.value.message == message
    assert info.value.status == 400


@pytest.mark.parametrize(
    "body", [b"{", b"{'model': 'x'}", b'{"model": "x",}', b"\xff\xfe", b"NaN", b"{} {}"]
)
def test_not_json(body: bytes) -> None:
    with pytest.raises(BadRequest) as info:
        parse_request(Api.OPENAI_CHAT, body)
    assert info.value.message.startswith("request body is not valid JSON: ")


def test_unknown_fields_are_kept() -> None:
    body = {**CHAT, "temperature": 0.2, "metadata": {"team": "search"}, "n": 2}
    assert parse(Api.OPENAI_CHAT, body).body == body


# --- estimate_input_tokens ---------------------------------------------------------------------


def text_tokens(*texts: str) -> int:
    return math.ceil(sum(len(t) for t in texts) / 4)


PNG = "data:image/png;base64," + "iVBORw0KGgo" * 500

# (id, body, expected estimate)
ESTIMATES: list[tuple[str, dict[str, Any], int]] = [
    ("no text fields", {"model": "m"}, 0),
    ("model is not input", {"model": "x" * 400}, 0),
    ("prompt string", {"model": "m", "prompt": "abcd" * 10}, 10),
    ("prompt rounds up", {"model": "m", "prompt": "abcde"}, 2),
    ("prompt list", {"model": "m", "prompt": ["abcd", "efgh"]}, 2),
    ("input string", {"model": "m", "input": "a" * 9}, 3),
    ("input list", {"model": "m", "input": ["a" * 4, "b" * 4, "c"]}, 3),
    ("instructions + input", {"model": "m", "instructions": "a" * 8, "input": "b" * 8}, 4),
    ("suffix", {"model": "m", "prompt": "a" * 4, "suffix": "b" * 4}, 2),
    (
        "other fields ignored",
        {"model": "m", "prompt": "a", "user": "x" * 100, "stop": ["y" * 100]},
        1,
    ),
    (
        "one message: role + content + 4",
        {"model": "m", "messages": [{"role": "user", "content": "Hello world!"}]},
        text_tokens("user", "Hello world!") + TOKENS_PER_MESSAGE,
    ),
    (
        "three messages",
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
            ],
        },
        text_tokens("system", "Be brief.", "user", "Hi", "assistant", "Hello")
        + 3 * TOKENS_PER_MESSAGE,
    ),
    (
        "anthropic system string",
        {"model": "m", "system": "s" * 40, "messages": [{"role": "user", "content": "Hi"}]},
        text_tokens("s" * 40, "user", "Hi") + TOKENS_PER_MESSAGE,
    ),
    (
        "anthropic system blocks",
        {"model": "m", "system": [{"type": "text", "text": "s" * 40}], "messages": []},
        text_tokens("text", "s" * 40),
    ),
    (
        "tools count as text",
        {"model": "m", "tools": [{"type": "function", "function": {"name": "get_weather"}}]},
        text_tokens("function", "get_weather"),
    ),
    (
        "chat image_url part is media, its URL is not text",
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "https://example.com/cat.png", "detail": "high"},
                        },
                    ],
                }
            ],
        },
        text_tokens("user", "text", "What is this?", "image_url")
        + TOKENS_PER_MEDIA_PART
        + TOKENS_PER_MESSAGE,
    ),
    (
        "chat image as base64 data URL is media, not 5500 characters of text",
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG}}]}
            ],
        },
        text_tokens("user", "image_url") + TOKENS_PER_MEDIA_PART + TOKENS_PER_MESSAGE,
    ),
    (
        "responses input_image data URL string is media",
        {
            "model": "m",
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "Describe"},
                        {"type": "input_image", "image_url": PNG},
                    ],
                }
            ],
        },
        text_tokens("user", "input_text", "Describe", "input_image") + TOKENS_PER_MEDIA_PART,
    ),
    (
        "responses input_image plain URL is media",
        {
            "model": "m",
            "input": [
                {
                    "role": "user",
                    "content": [{"type": "input_image", "image_url": "https://example.com/a.png"}],
                }
            ],
        },
        text_tokens("user", "input_image") + TOKENS_PER_MEDIA_PART,
    ),
    (
        "anthropic image source is media",
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "image/png",
                                "data": "iVBOR" * 1000,
                            },
                        },
                        {
                            "type": "image",
                            "source": {"type": "url", "url": "https://example.com/a.png"},
                        },
                        {"type": "text", "text": "Compare"},
                    ],
                }
            ],
        },
        text_tokens("user", "image", "image", "text", "Compare")
        + 2 * TOKENS_PER_MEDIA_PART
        + TOKENS_PER_MESSAGE,
    ),
    (
        "audio and file parts are media",
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "input_audio",
                            "input_audio": {"data": "AAAA" * 100, "format": "wav"},
                        },
                        {"type": "file", "file": {"file_data": PNG, "filename": "a.pdf"}},
                    ],
                }
            ],
        },
        text_tokens("user", "input_audio", "file") + 2 * TOKENS_PER_MEDIA_PART + TOKENS_PER_MESSAGE,
    ),
    (
        "a media key holding plain text is text",
        {"model": "m", "prompt": [{"image": "a cat"}]},
        text_tokens("a cat"),
    ),
    (
        "non-list messages: no per-message overhead",
        {"model": "m", "messages": "Hello"},
        text_tokens("Hello"),
    ),
    (
        "numbers and booleans are not text",
        {"model": "m", "messages": [{"role": "user", "content": "Hi", "n": 12345, "x": True}]},
        text_tokens("user", "Hi") + TOKENS_PER_MESSAGE,
    ),
]


@pytest.mark.parametrize(
    ("body", "expected"), [e[1:] for e in ESTIMATES], ids=[e[0] for e in ESTIMATES]
)
def test_estimate_input_tokens(body: dict[str, Any], expected: int) -> None:
    assert estimate_input_tokens(body) == expected


def test_estimate_handles_deep_nesting() -> None:
    deep: Any = "abcd"
    for _ in range(10_000):  # deeper than Python's recursion limit
        deep = [deep]
    assert estimate_input_tokens({"model": "m", "input": deep}) == 1


def test_parse_request_carries_the_estimate() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 396}]}
    assert parse(Api.OPENAI_CHAT, body).input_tokens_estimate == 100 + TOKENS_PER_MESSAGE


# --- upstream_body -----------------------------------------------------------------------------


# (api, extra fields) - the client's bytes go upstream untouched
UNCHANGED: list[tuple[Api, dict[str, Any]]] = [
    (Api.OPENAI_CHAT, {}),
    (Api.OPENAI_CHAT, {"stream": False}),
    (Api.OPENAI_CHAT, {"stream": True, "stream_options": {"include_usage": True}}),
    (Api.OPENAI_COMPLETIONS, {}),
    (Api.OPENAI_COMPLETIONS, {"stream": True, "stream_options": {"include_usage": True}}),
    (Api.OPENAI_RESPONSES, {}),
    (Api.OPENAI_RESPONSES, {"stream": True}),
    (Api.OPENAI_EMBEDDINGS, {}),
    (Api.ANTHROPIC_MESSAGES, {}),
    (Api.ANTHROPIC_MESSAGES, {"stream": True}),
]


@pytest.mark.parametrize(("api", "extra"), UNCHANGED)
def test_upstream_body_unchanged(api: Api, extra: dict[str, Any]) -> None:
    req = parse(api, {**BASE[api], **extra})
    assert upstream_body(req, served_model=req.model) is None


def test_unchanged_body_is_not_reserialised() -> None:
    # Odd spacing, key order and escapes survive because the client's bytes are sent as they are.
    body = b'{ "messages":[{"content":"caf\\u00e9","role":"user"}],  "model" : "gpt-4o" }'
    req = parse_request(Api.OPENAI_CHAT, body)
    assert upstream_body(req, served_model="gpt-4o") is None


def test_a_model_named_outside_the_body_is_written_into_it() -> None:
    """An Azure deployment path names the model; the body's own `model` is replaced."""
    req = dataclasses.replace(parse(Api.OPENAI_CHAT, BASE[Api.OPENAI_CHAT]), model="gpt-4o-mini")
    sent = upstream_body(req, served_model="gpt-4o-mini")
    assert sent is not None and orjson.loads(sent)["model"] == "gpt-4o-mini"


# (api, extra fields, the stream_options sent upstream)
INJECTED: list[tuple[Api, dict[str, Any], dict[str, Any]]] = [
    (Api.OPENAI_CHAT, {"stream": True}, {"include_usage": True}),
    (Api.OPENAI_CHAT, {"stream": True, "stream_options": None}, {"include_usage": True}),
    (Api.OPENAI_CHAT, {"stream": True, "stream_options": {}}, {"include_usage": True}),
    (
        Api.OPENAI_CHAT,
        {"stream": True, "stream_options": {"include_usage": False}},
        {"include_usage": True},
    ),
    (
        Api.OPENAI_CHAT,
        {"stream": True, "stream_options": {"include_obfuscation": False}},
        {"include_obfuscation": False, "include_usage": True},
    ),
    (Api.OPENAI_COMPLETIONS, {"stream": True}, {"include_usage": True}),
    (
        Api.OPENAI_COMPLETIONS,
        {"stream": True, "stream_options": {"x": 1}},
        {"x": 1, "include_usage": True},
    ),
]


@pytest.mark.parametrize(("api", "extra", "options"), INJECTED)
def test_upstream_body_asks_for_stream_usage(
    api: Api, extra: dict[str, Any], options: dict[str, Any]
) -> None:
    body = {**BASE[api], **extra}
    req = parse(api, body)
    out = upstream_body(req, served_model=req.model)
    assert out is not None
    assert orjson.loads(out) == {**body, "stream_options": options}
    assert req.body == body, "the parsed request is not modified"


# (api, extra fields)
REWRITES: list[tuple[Api, dict[str, Any]]] = [
    (Api.OPENAI_CHAT, {}),
    (Api.OPENAI_CHAT, {"stream": True, "stream_options": {"include_usage": True}}),
    (Api.OPENAI_RESPONSES, {"stream": True}),
    (Api.OPENAI_EMBEDDINGS, {}),
    (Api.OPENAI_COMPLETIONS, {}),
    (Api.ANTHROPIC_MESSAGES, {"stream": True}),
]


@pytest.mark.parametrize(("api", "extra"), REWRITES)
def test_upstream_body_rewrites_the_model(api: Api, extra: dict[str, Any]) -> None:
    body = {**BASE[api], **extra}
    req = parse(api, body)
    out = upstream_body(req, served_model="served-model")
    assert out is not None
    assert orjson.loads(out) == {**body, "model": "served-model"}
    assert req.body == body


def test_upstream_body_rewrites_model_and_asks_for_usage() -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_obfuscation": True}}
    out = upstream_body(parse(Api.OPENAI_CHAT, body), served_model="gpt-4o-mini")
    assert out is not None
    assert orjson.loads(out) == {
        **body,
        "model": "gpt-4o-mini",
        "stream_options": {"include_obfuscation": True, "include_usage": True},
    }


@pytest.mark.parametrize(
    "extra",
    [
        {"background": True},
        {"background": True, "stream": True},
        {"background": True, "stream": False},
        {"background": "true", "stream": True},
        {"background": 1, "stream": True},
    ],
    ids=["json", "streamed", "stream-false", "string", "one"],
)
def test_background_responses_are_refused_streamed_or_not(extra: dict[str, Any]) -> None:
    """A streamed background response is no better than a non-streamed one: the client may read
    `response.created` and leave while the provider finishes (and bills) the whole response."""
    with pytest.raises(UnsupportedOption) as info:
        parse(Api.OPENAI_RESPONSES, {**BASE[Api.OPENAI_RESPONSES], **extra})
    assert (info.value.status, info.value.code) == (400, "unsupported_option")
    assert "`background: true` is not supported" in info.value.message


@pytest.mark.parametrize("value", [False, None])
def test_a_background_that_is_false_is_not_refused(value: object) -> None:
    body = {**BASE[Api.OPENAI_RESPONSES], "background": value, "stream": True}
    assert parse(Api.OPENAI_RESPONSES, body).stream is True


def test_background_is_a_responses_option_only() -> None:
    assert parse(Api.OPENAI_CHAT, {**CHAT, "background": True}).model == "gpt-4o"
