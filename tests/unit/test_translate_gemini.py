"""Chat completions <-> Gemini, the pure mapping (translate/chat_to_gemini.py,
gemini_to_chat.py, gemini_stream.py); streams split at every byte."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway_extproc.errors import Untranslatable
from gateway_extproc.translate.chat_to_gemini import gemini_request, upstream_path, with_overrides
from gateway_extproc.translate.gemini_stream import GeminiToChatStream
from gateway_extproc.translate.gemini_to_chat import chat_completion, chat_error

PNG = "data:image/png;base64,AAAA"


def test_request_maps_every_supported_field() -> None:
    body = {
        "model": "gemini-2.5-flash",
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "developer", "content": [{"type": "text", "text": "No lists."}]},
            {"role": "user", "content": [{"type": "text", "text": "Look"},
                                          {"type": "image_url", "image_url": {"url": PNG}}]},
            {"role": "user", "content": "up"},
            {"role": "assistant", "content": "ok", "tool_calls": [
                {"id": "c1", "type": "function",
                 "function": {"name": "lookup", "arguments": '{"q": 1}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "found"},
        ],
        "tools": [{"type": "function", "function": {"name": "lookup", "description": "d",
                                                    "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "lookup"}},
        "max_completion_tokens": 50, "stop": "END", "temperature": 1.5, "top_p": 0.9,
        "stream": True, "stream_options": {"include_usage": True}, "user": "u",
    }  # fmt: skip
    out = gemini_request(body)
    assert out == {
        "contents": [
            {"role": "user", "parts": [{"text": "Look"},
                                       {"inlineData": {"mimeType": "image/png", "data": "AAAA"}},
                                       {"text": "up"}]},
            {"role": "model", "parts": [{"text": "ok"},
                                        {"functionCall": {"name": "lookup", "args": {"q": 1}}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "lookup",
                                                             "response": {"output": "found"}}}]},
        ],
        "systemInstruction": {"parts": [{"text": "Be terse."}, {"text": "No lists."}]},
        "generationConfig": {"maxOutputTokens": 50, "stopSequences": ["END"],
                             "temperature": 1.5, "topP": 0.9},
        "tools": [{"functionDeclarations": [{"name": "lookup", "description": "d",
                                             "parametersJsonSchema": {"type": "object"}}]}],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY",
                                                 "allowedFunctionNames": ["lookup"]}},
    }  # fmt: skip


def test_overrides_and_path() -> None:
    body = gemini_request({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    sent = orjson.loads(with_overrides(body, model="gemini-2.5-pro", max_tokens=77))
    assert sent["generationConfig"] == {"maxOutputTokens": 77} and "model" not in sent
    kept = gemini_request(
        {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    )
    assert orjson.loads(with_overrides(kept, model="g", max_tokens=77))["generationConfig"] == {
        "maxOutputTokens": 5
    }
    assert upstream_path("g-1", False) == "/v1beta/models/g-1:generateContent"
    assert upstream_path("g-1", True) == "/v1beta/models/g-1:streamGenerateContent?alt=sse"


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"n": 2}, "`n` other than 1"),
        ({"seed": 1}, "`seed`"),
        ({"logprobs": True}, "`logprobs`"),
        ({"frequency_penalty": 0.5}, "`frequency_penalty`"),
        ({"response_format": {"type": "json_object"}}, "`response_format`"),
        ({"parallel_tool_calls": False}, "`parallel_tool_calls: false`"),
        ({"temperature": 2.5}, "between 0 and 2"),
        ({"stop": ["a", "b", "c", "d", "e", "f"]}, "up to 5"),
        ({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}, "data URL"),
        ({"messages": [{"role": "user", "content": "q"},
                       {"role": "tool", "tool_call_id": "zz", "content": "r"}]}, "no earlier"),
        ({"tools": [{"type": "function", "function": {"name": "f", "strict": True}}]}, "strict"),
    ],
)  # fmt: skip
def test_refused(extra: dict[str, Any], fragment: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(Untranslatable) as err:
        gemini_request(body)
    assert fragment in err.value.message


USAGE = {"promptTokenCount": 100, "cachedContentTokenCount": 40, "candidatesTokenCount": 8,
         "thoughtsTokenCount": 5, "toolUsePromptTokenCount": 2}  # fmt: skip
WANT_USAGE = {
    "prompt_tokens": 102, "completion_tokens": 13, "total_tokens": 115,
    "prompt_tokens_details": {"cached_tokens": 40},
    "completion_tokens_details": {"reasoning_tokens": 5},
}  # fmt: skip


@pytest.mark.parametrize(
    ("reason", "call", "want"),
    [("STOP", False, "stop"), ("STOP", True, "tool_calls"), ("MAX_TOKENS", False, "length"),
     ("SAFETY", False, "content_filter"), ("RECITATION", False, "content_filter"),
     ("OTHER", False, "stop")],
)  # fmt: skip
def test_json_answer(reason: str, call: bool, want: str) -> None:
    parts: list[dict[str, Any]] = [{"text": "hm", "thought": True}, {"text": "Hi"}]
    if call:
        parts.append({"functionCall": {"name": "f", "args": {"a": 1}}})
    candidate = {"content": {"parts": parts}, "finishReason": reason}
    doc = {"candidates": [candidate], "usageMetadata": USAGE}
    doc |= {"modelVersion": "gemini-2.5-flash", "responseId": "r1"}
    out = orjson.loads(chat_completion(orjson.dumps(doc), created=7))
    assert out["id"] == "chatcmpl-r1" and out["model"] == "gemini-2.5-flash"
    choice = out["choices"][0]
    assert choice["finish_reason"] == want and choice["message"]["content"] == "Hi"
    if call:
        assert choice["message"]["tool_calls"] == [{"id": "call_0", "type": "function",
            "function": {"name": "f", "arguments": '{"a":1}'}}]  # fmt: skip
    assert out["usage"] == WANT_USAGE


def test_blocked_prompt_and_garbage() -> None:
    doc = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 3}}
    out = orjson.loads(chat_completion(orjson.dumps(doc), created=0))
    assert out["choices"][0]["finish_reason"] == "content_filter"
    assert out["choices"][0]["message"]["content"] == ""
    assert orjson.loads(chat_completion(b"[1]", created=0))["error"]["type"] == "server_error"


def test_error() -> None:
    raw = orjson.dumps({"error": {"code": 429, "message": "slow", "status": "RESOURCE_EXHAUSTED"}})
    assert orjson.loads(chat_error(raw, 429)) == {"error": {
        "message": "slow", "type": "rate_limit_error", "param": None,
        "code": "RESOURCE_EXHAUSTED"}}  # fmt: skip
    assert orjson.loads(chat_error(b"<html>", 502))["error"]["type"] == "api_error"


def _event(doc: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(doc) + b"\r\n\r\n"


STREAM = (
    _event({"candidates": [{"content": {"parts": [{"text": "H\u00e9"}]}}],
            "usageMetadata": {"promptTokenCount": 100}, "modelVersion": "g", "responseId": "r"})
    + _event({"candidates": [{"content": {"parts": [
        {"text": "llo"}, {"functionCall": {"name": "f", "args": {"a": 1}}}]},
        "finishReason": "STOP"}], "usageMetadata": USAGE})
)  # fmt: skip


def _run(data: bytes, cut: int | None, include_usage: bool) -> list[Any]:
    s = GeminiToChatStream(created=1, include_usage=include_usage)
    pieces = [data] if cut is None else [data[:cut], data[cut:]]
    out = b"".join(s.feed(p) for p in pieces) + s.flush()
    events = [e for e in out.decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    return [e[6:] if e == "data: [DONE]" else orjson.loads(e[6:]) for e in events]


@pytest.mark.parametrize("cut", [None, *range(1, len(STREAM))])
def test_stream_split_anywhere(cut: int | None) -> None:
    events = _run(STREAM, cut, include_usage=True)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["id"] == "chatcmpl-r" and c["model"] == "g" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "H\u00e9llo"
    calls = [
        tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls", [])
    ]
    assert calls == [{"index": 0, "id": "call_0", "type": "function",
                      "function": {"name": "f", "arguments": '{"a":1}'}}]  # fmt: skip
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == WANT_USAGE


def test_stream_without_usage_cut_short_and_error() -> None:
    events = _run(STREAM, None, include_usage=False)
    assert events[-1] == "[DONE]" and not any("usage" in e for e in events[:-1])
    cut = _run(STREAM[: STREAM.index(b"\r\n\r\n") + 4], None, include_usage=True)
    assert "[DONE]" not in cut and all(c["choices"][0]["finish_reason"] is None for c in cut)
    err = _run(_event({"error": {"code": 503, "message": "busy", "status": "UNAVAILABLE"}}),
               None, include_usage=True)  # fmt: skip
    assert err == [{"error": {"message": "busy", "type": "server_error", "param": None,
                              "code": "UNAVAILABLE"}}]  # fmt: skip
