"""The Gemini API, pure parts: paths, request shapes and bounds, usageMetadata from JSON and from
streams split at every byte, guardrail texts, the error format."""

from __future__ import annotations

import orjson
import pytest

from gateway_extproc.apis import Api, Schema, api_for_path, looks_gemini, schema_for_path
from gateway_extproc.catalog.models import Catalog
from gateway_extproc.cost.bounds import Unpriced, UnseenInput, bound
from gateway_extproc.cost.endings import hides_reasoning
from gateway_extproc.errors import BadRequest, UnknownModel
from gateway_extproc.providers.gemini.metering import (
    GeminiStream,
    meter_gemini_json,
    usage_from_gemini,
)
from gateway_extproc.providers.gemini.paths import parse_path, without_credentials
from gateway_extproc.providers.gemini.provider import PROVIDER
from gateway_extproc.providers.gemini.texts import text_slots
from gateway_extproc.providers.inbound import parse_request, upstream_body
from gateway_extproc.providers.metering import StreamMeter
from gateway_extproc.tokens import Usage

GEN = "/v1beta/models/gemini-2.5-flash:generateContent"
STREAM = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
BODY = {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}


# -- paths -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "api"),
    [
        (GEN, Api.GEMINI_GENERATE),
        (STREAM, Api.GEMINI_STREAM),
        ("/v1/models/gemini-2.5-pro:generateContent", Api.GEMINI_GENERATE),
        ("/v1/models/gemini-2.5-pro:streamGenerateContent?alt=sse&key=k", Api.GEMINI_STREAM),
        ("/v1beta/models/x:countTokens", None),
        ("/v2/models/x:generateContent", None),
        ("/v1/models", None),
        ("/v1/chat/completions", Api.OPENAI_CHAT),
    ],
)
def test_api_for_path(path: str, api: Api | None) -> None:
    assert api_for_path(path) is api


def test_gemini_paths_are_answered_in_gemini_format_even_unmetered() -> None:
    assert schema_for_path("/v1beta/models/x:countTokens") is Schema.GEMINI
    assert schema_for_path("/v1/models/x:embedContent") is Schema.GEMINI
    assert schema_for_path("/v1/models") is Schema.OPENAI
    assert not looks_gemini("/v1/models/gpt-4o")


@pytest.mark.parametrize(
    ("path", "model", "upstream"),
    [
        (GEN, "gemini-2.5-flash", "/v1beta/models/M:generateContent"),
        (STREAM, "gemini-2.5-flash", "/v1beta/models/M:streamGenerateContent?alt=sse"),
        (
            "/v1/publishers/google/models/gemini-2.5-pro:generateContent?alt=json",
            "gemini-2.5-pro",
            "/v1/models/M:generateContent?alt=json",
        ),
        (
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?key=SECRET&alt=sse",
            "gemini-2.5-flash",
            "/v1beta/models/M:streamGenerateContent?alt=sse",
        ),
    ],
)
def test_parse_path(path: str, model: str, upstream: str) -> None:
    parsed = parse_path(path)
    assert parsed.model == model
    assert parsed.upstream("M") == upstream  # the served model; `key` never forwarded


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/v1beta/models/gemini-2.5-flash:streamGenerateContent", "alt=sse"),
        ("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=json", "alt=sse"),
        ("/v1beta/models/gemini-2.5-flash:generateContent?alt=sse", "answers JSON"),
        ("/v1beta/models/gemini-2.5-flash:generateContent?fields=candidates", "'fields'"),
        ("/v1beta/models/gemini-2.5-flash:generateContent?%24alt=proto", "not supported"),
        ("/v1beta/models/gemini-2.5-flash:generateContent?alt=json&alt=json", "once"),
        ("/v1beta/models/../openai:generateContent", "models/NAME"),
        ("/v1beta/models/a%2Fb:generateContent", "models/NAME"),
        ("/v1beta/tunedModels/x:generateContent", "models/NAME"),
    ],
)
def test_bad_paths_are_400(path: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_path(path)


@pytest.mark.parametrize(
    ("path", "clean"),
    [
        ("/v1beta/models/m:generateContent?key=abc", "/v1beta/models/m:generateContent"),
        ("/v1beta/models/m:x?alt=sse&key=abc", "/v1beta/models/m:x?alt=sse"),
        ("/v1beta/models/m:x?k%65y=abc&alt=sse", "/v1beta/models/m:x?alt=sse"),
        ("/v1beta/models/m:x?access_token=t", "/v1beta/models/m:x"),
        ("/v1beta/models/m:x", "/v1beta/models/m:x"),
    ],
)
def test_credentials_leave_the_query(path: str, clean: str) -> None:
    assert without_credentials(path) == clean


# -- requests ----------------------------------------------------------------------------------


def test_model_comes_from_the_path_and_a_body_model_is_refused() -> None:
    request = parse_request(Api.GEMINI_STREAM, orjson.dumps(BODY), STREAM)
    assert (request.model, request.stream, request.max_output_tokens) == (
        "gemini-2.5-flash",
        True,
        None,
    )
    with pytest.raises(BadRequest, match="in the path"):
        parse_request(Api.GEMINI_GENERATE, orjson.dumps({**BODY, "model": "x"}), GEN)
    with pytest.raises(BadRequest, match="contents"):
        parse_request(Api.GEMINI_GENERATE, b"{}", GEN)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"generationConfig": 3}, "must be an object"),
        ({"generationConfig": {"maxOutputTokens": -1}}, "maxOutputTokens"),
        ({"generationConfig": {"maxOutputTokens": True}}, "maxOutputTokens"),
        ({"generationConfig": {"candidateCount": 9}}, "at most 8"),
        ({"generationConfig": {}, "generation_config": {}}, "given twice"),
        ({"generationConfig": {"maxOutputTokens": 1, "max_output_tokens": 2}}, "given twice"),
    ],
)
def test_bad_generation_config_is_400(config: dict[str, object], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_request(Api.GEMINI_GENERATE, orjson.dumps({**BODY, **config}), GEN)


CATALOG = Catalog.load()


def _bound(body: dict[str, object], model: str = "gemini-2.5-flash", **kw: object):  # type: ignore[no-untyped-def]
    request = parse_request(Api.GEMINI_GENERATE, orjson.dumps(body), GEN)
    entry = CATALOG.lookup(model)
    assert entry is not None
    args = {"default_max_output": 4096, "unseen_input": UnseenInput.REFUSE, **kw}
    return request, bound(request.shape, entry, **args)  # type: ignore[arg-type]


def test_the_cap_is_injected_into_generation_config() -> None:
    request, b = _bound({**BODY, "generationConfig": {"temperature": 0.5}})
    assert (b.inject_max_output, b.cap_field) == (4096, "generationConfig.maxOutputTokens")
    sent = orjson.loads(upstream_body(request, "gemini-2.5-pro", (b.cap_field, 4096)) or b"")
    assert sent["generationConfig"] == {"temperature": 0.5, "maxOutputTokens": 4096}
    assert "model" not in sent  # the served model goes into the path


def test_the_cap_goes_into_the_spelling_the_client_uses() -> None:
    request, b = _bound({**BODY, "generation_config": {"temperature": 0.5}})
    assert b.cap_field == "generation_config.maxOutputTokens"
    sent = orjson.loads(upstream_body(request, "gemini-2.5-flash", (b.cap_field, 7)) or b"")
    assert "generationConfig" not in sent and sent["generation_config"]["maxOutputTokens"] == 7


def test_unchanged_body_goes_as_sent_even_when_downgraded() -> None:
    request = parse_request(Api.GEMINI_GENERATE, orjson.dumps(BODY), GEN)
    assert upstream_body(request, "gemini-2.5-flash-lite") is None


def test_own_limit_times_candidates_bounds_output() -> None:
    config = {"generationConfig": {"max_output_tokens": 100, "candidateCount": 3}}
    _, b = _bound({**BODY, **config})
    assert (b.output_tokens, b.inject_max_output) == (300, None)


def test_media_parts_are_bounded_by_the_window_and_text_by_its_bytes() -> None:
    image = {"inlineData": {"mimeType": "image/png", "data": "A" * 100_000}}
    video = {"file_data": {"mime_type": "video/mp4", "file_uri": "https://x/v"}}
    body = {"contents": [{"role": "user", "parts": [{"text": "abc"}, image, video]}]}
    request, b = _bound(body)
    assert (request.shape.images, request.shape.files) == (1, 1)
    assert request.shape.text_tokens < 1000  # the base64 bytes are not text
    entry = CATALOG.lookup("gemini-2.5-flash")
    assert entry is not None and b.input_tokens == entry.context_window


def test_audio_is_refused_as_unpriced() -> None:
    audio = {"inlineData": {"mimeType": "audio/wav", "data": "AAAA"}}
    with pytest.raises(Unpriced, match="audio/wav"):
        _bound({"contents": [{"parts": [audio]}]})


@pytest.mark.parametrize(
    ("extra", "unseen"),
    [
        ({"cachedContent": "cachedContents/abc"}, ("cachedContent",)),
        ({"cached_content": "cachedContents/abc"}, ("cached_content",)),
        ({"tools": [{"googleSearch": {}}]}, ("tools[0].googleSearch",)),
        (
            {"tools": [{"codeExecution": {}}, {"functionDeclarations": []}]},
            ("tools[0].codeExecution",),
        ),
        ({"tools": [{"functionDeclarations": [{"name": "f"}]}]}, ()),
    ],
)
def test_unseen_input(extra: dict[str, object], unseen: tuple[str, ...]) -> None:
    request = parse_request(Api.GEMINI_GENERATE, orjson.dumps({**BODY, **extra}), GEN)
    assert request.shape.unseen == unseen
    entry = CATALOG.lookup("gemini-2.5-flash")
    assert entry is not None
    if unseen:
        b = bound(
            request.shape,
            entry,
            default_max_output=1,
            unseen_input=UnseenInput.RESERVE_CONTEXT_WINDOW,
        )
        assert b.input_tokens == entry.context_window


@pytest.mark.parametrize(
    ("model", "thinking", "hidden"),
    [
        ("gemini-2.5-flash", None, True),
        ("gemini-2.5-flash", {"thinkingBudget": 0}, False),
        ("gemini-2.5-pro", {"thinking_budget": -1}, True),
        ("gemini-2.5-flash-lite", None, False),
        ("gemini-2.5-flash-lite", {"thinkingBudget": 512}, True),
    ],
)
def test_hidden_reasoning(model: str, thinking: object, hidden: bool) -> None:
    config = {} if thinking is None else {"generationConfig": {"thinkingConfig": thinking}}
    entry = CATALOG.lookup(model)
    assert entry is not None
    assert hides_reasoning(Api.GEMINI_STREAM, {**BODY, **config}, entry) is hidden


def test_catalog_prices_the_long_context_tier_of_pro() -> None:
    entry = CATALOG.lookup("gemini-2.5-pro")
    assert entry is not None and entry.schema is Schema.GEMINI
    assert entry.price.for_input(200_000) is not entry.price.for_input(200_001)
    for name in ("gemini-2.5-flash", "gemini-2.5-flash-lite"):
        assert CATALOG.lookup(name) is not None
    assert CATALOG.lookup("unknown-gemini") is None
    assert UnknownModel.status == 400


def test_guardrail_texts_are_the_prompt_strings_only() -> None:
    body = {
        "systemInstruction": {"parts": [{"text": "sys"}]},
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "hi"},
                    {"inlineData": {"mimeType": "image/png", "data": "QUFB"}},
                    {"functionResponse": {"name": "f", "response": {"out": ["r1", {"x": "r2"}]}}},
                ],
            },
            {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"a": "c"}}}]},
        ],
    }
    found = sorted(str(c[k]) for c, k in text_slots(body))  # type: ignore[index]
    assert found == ["hi", "r1", "r2", "sys"]


# -- metering ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (
            {
                "promptTokenCount": 1000,
                "cachedContentTokenCount": 600,
                "toolUsePromptTokenCount": 50,
                "candidatesTokenCount": 30,
                "thoughtsTokenCount": 70,
                "totalTokenCount": 1150,
            },
            Usage(
                input_tokens=450, cached_input_tokens=600, output_tokens=100, reasoning_tokens=70
            ),
        ),
        ({"promptTokenCount": 5}, Usage(input_tokens=5)),
        ({"cachedContentTokenCount": 9, "promptTokenCount": 4}, Usage(cached_input_tokens=4)),
        ({"candidatesTokenCount": "7", "promptTokenCount": -1}, None),
        ({}, None),
        ("garbage", None),
    ],
)
def test_usage_from_gemini(usage: object, expected: Usage | None) -> None:
    assert usage_from_gemini(usage) == expected


def test_json_response() -> None:
    body = {
        "candidates": [
            {
                "content": {"parts": [{"text": "héllo"}, {"functionCall": {"name": "f"}}]},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2},
        "modelVersion": "gemini-2.5-flash-001",
        "responseId": "r1",
    }
    result = meter_gemini_json(body)
    assert result.usage == Usage(input_tokens=3, output_tokens=2)
    assert result.served_model == "gemini-2.5-flash-001" and result.response_id == "r1"
    assert result.output_bytes == 6 + len(b'{"name":"f"}')
    assert result.finish_reasons == ("STOP",)


def _chunk(text: str, usage: dict[str, int] | None, finish: str | None = None) -> bytes:
    candidate: dict[str, object] = {"content": {"parts": [{"text": text}], "role": "model"}}
    if finish:
        candidate["finishReason"] = finish
    doc: dict[str, object] = {"candidates": [candidate], "modelVersion": "gemini-2.5-pro"}
    if usage is not None:
        doc["usageMetadata"] = usage
    return b"data: " + orjson.dumps(doc) + b"\r\n\r\n"


# Running totals in every chunk (the last is the whole); the middle chunk leaves usage out.
STREAM_BODY = (
    _chunk("Hé", {"promptTokenCount": 120, "cachedContentTokenCount": 100})
    + _chunk("llo", None)
    + _chunk(
        " world",
        {
            "promptTokenCount": 120,
            "cachedContentTokenCount": 100,
            "candidatesTokenCount": 4,
            "thoughtsTokenCount": 40,
        },
        "STOP",
    )
)
STREAM_USAGE = Usage(
    input_tokens=20, cached_input_tokens=100, output_tokens=44, reasoning_tokens=40
)


def _meter(chunks: list[bytes]):  # type: ignore[no-untyped-def]
    meter = StreamMeter(Api.GEMINI_STREAM)
    for chunk in chunks:
        meter.feed(chunk)
    return meter.flush()


def test_stream_split_at_every_byte_boundary() -> None:
    whole = _meter([STREAM_BODY])
    assert whole.usage == STREAM_USAGE and whole.completed
    assert whole.served_model == "gemini-2.5-pro" and whole.output_bytes == len(
        "Héllo world".encode()
    )
    for cut in range(1, len(STREAM_BODY)):
        assert _meter([STREAM_BODY[:cut], STREAM_BODY[cut:]]) == whole, cut
    assert _meter([STREAM_BODY[i : i + 1] for i in range(len(STREAM_BODY))]) == whole


def test_a_cut_stream_is_not_completed_and_keeps_its_input() -> None:
    cut = STREAM_BODY[: STREAM_BODY.index(b" world")]
    result = _meter([cut])
    assert not result.completed
    assert result.usage == Usage(input_tokens=20, cached_input_tokens=100)


def test_an_error_event_ends_a_stream_incomplete() -> None:
    error = b'data: {"error": {"code": 500, "message": "x", "status": "INTERNAL"}}\r\n\r\n'
    assert not _meter([STREAM_BODY + error]).completed
    stream = GeminiStream()
    stream.on_json(None, {"error": {}})
    stream.on_json(None, orjson.loads(_chunk("x", None, "STOP")[6:]))
    assert not stream.completed


def test_error_body_is_googles_format() -> None:
    body = orjson.loads(PROVIDER.error_body(UnknownModel("no such model"), "rid"))
    error = body["error"]
    assert (error["code"], error["status"], error["message"]) == (
        400,
        "INVALID_ARGUMENT",
        "no such model",
    )
    assert error["details"][0]["reason"] == "model_not_found"


def test_the_guardrails_read_gemini_prompts() -> None:
    from gateway_extproc.guardrails import texts

    body = {"contents": [{"parts": [{"text": "my key sk-abc"}]}]}
    slots = list(texts.text_slots(Api.GEMINI_STREAM, body))
    assert [c[k] for c, k in slots] == ["my key sk-abc"]  # type: ignore[index]
