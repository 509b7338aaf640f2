"""A non-streamed response over the observer's cap is metered from its ends: the top-level
members found whole in its first and last bytes match what a full parse reads, at every cut,
for every API's real layout, and memory stays bounded whatever the body's size."""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_extproc.apis import Api
from gateway_extproc.providers.metering import usage_from_json
from gateway_extproc.response.json_body import (
    HEAD_BYTES,
    TAIL_BYTES,
    WANTED,
    JsonBody,
    top_level_members,
)

CAP = 256 * 1024
USAGE_OPENAI = {
    "prompt_tokens": 1200,
    "completion_tokens": 80,
    "total_tokens": 1280,
    "prompt_tokens_details": {"cached_tokens": 200},
    "completion_tokens_details": {"reasoning_tokens": 30},
}
# A string full of what a naive scanner would trip on: quotes, escapes, braces, a fake member.
TRICKY = 'he said \\"usage\\": {\\"prompt_tokens\\": 1} }], "x": {[ \\\\" , : é \u2028'


def chat(content: str, *, sorted_keys: bool = False) -> dict[str, Any]:
    """A chat completion in OpenAI's wire order (or sorted, as recorded transcripts are)."""
    doc = {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE_OPENAI,
        "service_tier": "default",
        "system_fingerprint": "fp_1",
    }
    return dict(sorted(doc.items())) if sorted_keys else doc


def embeddings(n: int, dims: int) -> dict[str, Any]:
    vector = [0.0123456 * j for j in range(dims)]
    data = [{"object": "embedding", "index": i, "embedding": vector} for i in range(n)]
    usage = {"prompt_tokens": 4096, "total_tokens": 4096}
    return {"object": "list", "data": data, "model": "text-embedding-3-large", "usage": usage}


def responses(text: str) -> dict[str, Any]:
    return {
        "id": "resp_1",
        "object": "response",
        "status": "incomplete",
        "incomplete_details": {"reason": "max_output_tokens"},
        "instructions": "Be brief.",
        "model": "gpt-4.1-2025-04-14",
        "output": [{"type": "message", "content": [{"type": "output_text", "text": text}]}],
        "tools": [{"type": "function", "parameters": {"properties": {"usage": {"type": "s"}}}}],
        "usage": {
            "input_tokens": 50,
            "input_tokens_details": {"cached_tokens": 10},
            "output_tokens": 900,
            "output_tokens_details": {"reasoning_tokens": 0},
        },
        "user": None,
        "metadata": {"usage": "not this one", "k": TRICKY},
    }


def anthropic(text: str) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "max_tokens",
        "stop_sequence": None,
        "usage": {"input_tokens": 30, "cache_read_input_tokens": 5, "output_tokens": 700},
    }


BIG = ("A long answer. " + TRICKY + " ") * 40_000  # ~2.4 MB of text
CASES = [
    pytest.param(Api.OPENAI_CHAT, chat(BIG), id="chat"),
    pytest.param(Api.OPENAI_CHAT, chat(BIG, sorted_keys=True), id="chat-sorted-keys"),
    pytest.param(Api.OPENAI_EMBEDDINGS, embeddings(64, 3072), id="embeddings"),
    pytest.param(Api.OPENAI_RESPONSES, responses(BIG), id="responses"),
    pytest.param(Api.ANTHROPIC_MESSAGES, anthropic(BIG), id="anthropic"),
]


def fed(raw: bytes, chunk: int, cap: int = CAP) -> JsonBody:
    body = JsonBody(cap)
    for i in range(0, len(raw), chunk):
        body.feed(raw[i : i + chunk])
    return body


@pytest.mark.parametrize("indent", [None, 2])
@pytest.mark.parametrize(("api", "doc"), CASES)
def test_a_truncated_body_is_metered_from_its_ends_as_a_full_parse(
    api: Api, doc: dict[str, Any], indent: int | None
) -> None:
    raw = json.dumps(doc, indent=indent, ensure_ascii=False).encode()
    full = usage_from_json(api, raw)
    assert full.usage is not None
    for chunk in (1000, 16384, 65536, 1 << 20):
        body = fed(raw, chunk)
        assert body.truncated and body.size == len(raw)
        assert body.kept <= HEAD_BYTES + 2 * TAIL_BYTES
        got = body.meter(api)
        assert (got.usage, got.served_model, got.response_id) == (
            full.usage,
            full.served_model,
            full.response_id,
        )
        assert got.output_bytes == len(raw)  # an upper bound, not the text


def test_finish_reasons_found_at_the_top_level_are_kept() -> None:
    got = fed(orjson.dumps(anthropic(BIG)), 65536).meter(Api.ANTHROPIC_MESSAGES)
    assert got.finish_reasons == ("max_tokens",)
    got = fed(orjson.dumps(responses(BIG)), 65536).meter(Api.OPENAI_RESPONSES)
    assert got.finish_reasons == ("max_output_tokens",)
    # Chat finish reasons live inside choices: not read from the ends.
    assert fed(orjson.dumps(chat(BIG)), 65536).meter(Api.OPENAI_CHAT).finish_reasons == ()


def test_a_body_within_the_cap_is_parsed_whole() -> None:
    raw = orjson.dumps(chat("short"))
    body = fed(raw, 7)
    assert not body.truncated and body.whole() == raw and body.kept == len(raw)
    assert body.meter(Api.OPENAI_CHAT) == usage_from_json(Api.OPENAI_CHAT, raw)


def test_a_cut_body_is_not_read_from_its_tail() -> None:
    """The last `}` of a body cut short may close a nested object holding a `usage` member."""
    doc = chat(BIG)
    doc["choices"][0]["message"]["usage"] = {"prompt_tokens": 1, "completion_tokens": 1}
    raw = orjson.dumps(doc)
    cut = raw[: raw.index(b'"usage"') + 60]
    cut = cut[: cut.rindex(b"}") + 1]
    body = fed(cut, 65536)
    assert top_level_members(cut[-TAIL_BYTES:], at_start=False)  # it would be misread
    got = body.meter(Api.OPENAI_CHAT, ended=False)
    assert got.usage is None and got.served_model == "gpt-4o-2024-08-06"


@pytest.mark.parametrize(
    "small",
    [chat(TRICKY), chat(TRICKY, sorted_keys=True), embeddings(2, 3), responses(TRICKY)],
    ids=["chat", "chat-sorted-keys", "embeddings", "responses"],
)
def test_every_cut_finds_only_true_members(small: dict[str, Any]) -> None:
    raw = json.dumps(small, indent=1, ensure_ascii=False).encode()
    truth = {k: v for k, v in small.items() if k in WANTED}
    for k in range(len(raw) + 1):
        head = top_level_members(raw[:k], at_start=True)
        tail = top_level_members(raw[k:], at_start=False)
        for found in (head, tail):
            assert found.items() <= truth.items(), k
    assert top_level_members(raw, at_start=True) == truth
    assert top_level_members(raw, at_start=False) == truth


# Keys include the wanted names (at any depth), values include strings built to confuse.
_keys = st.sampled_from([*sorted(WANTED), "choices", "data", "x", 'q"uote', "back\\slash", ""])
_strings = st.text(alphabet=st.sampled_from(list('ab"\\{}[]:, \n\u00e9\u2028')), max_size=12)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _strings
)
_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=8), st.data(), st.sampled_from([None, 0, 2]))
def test_members_from_any_cut_are_exactly_the_parse_s(
    doc: dict[str, Any], data: st.DataObject, indent: int | None
) -> None:
    raw = json.dumps(doc, indent=indent, ensure_ascii=data.draw(st.booleans())).encode()
    truth = {k: v for k, v in doc.items() if k in WANTED}
    assert top_level_members(raw, at_start=True) == truth
    assert top_level_members(raw, at_start=False) == truth
    k = data.draw(st.integers(0, len(raw)))
    for found in (
        top_level_members(raw[:k], at_start=True),
        top_level_members(raw[k:], at_start=False),
    ):
        assert found.items() <= truth.items()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_garbage_never_raises(piece: bytes, at_start: bool) -> None:
    top_level_members(piece, at_start=at_start)
    top_level_members(b"{" + piece + b"}", at_start=at_start)


def test_a_tail_starting_in_a_run_of_backslashes_is_not_guessed() -> None:
    # Whether the quote after the run is escaped depends on bytes the tail does not have.
    assert top_level_members(b'\\\\", "model": "m"}', at_start=False) == {"model": "m"}
    assert top_level_members(b'\\", "model": "m"}', at_start=False) == {"model": "m"}
    assert top_level_members(b'\\"model": "m"}', at_start=False) == {}


def test_memory_stays_under_the_cap_whatever_the_size() -> None:
    piece = b'{"object":"list","data":[' + b"[0.0123456789,-0.0123456789]," * 2000
    tracemalloc.start()
    try:
        body = JsonBody(CAP)
        body.feed(piece)
        for _ in range(1000):  # ~60 MB
            body.feed(piece[26:])
        body.feed(b'[]],"model":"m","usage":{"prompt_tokens":3,"total_tokens":3}}')
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert body.size > 50_000_000 and body.kept <= HEAD_BYTES + 2 * TAIL_BYTES
    assert peak < CAP + 2 * len(piece) + HEAD_BYTES + 2 * TAIL_BYTES
    got = body.meter(Api.OPENAI_EMBEDDINGS)
    assert got.served_model == "m" and got.usage is not None and got.usage.input_tokens == 3


def test_the_cap_must_hold_both_ends() -> None:
    with pytest.raises(ValueError, match="at least"):
        JsonBody(HEAD_BYTES)


def test_a_chunk_far_over_the_cap_is_not_copied_whole() -> None:
    """Envoy may hand the observer tens of MB in one message (as much as it read at once): only
    its ends are copied."""
    raw = orjson.dumps(chat(BIG))
    first, rest = raw[:1000], raw[1000:]
    tracemalloc.start()
    try:
        body = JsonBody(CAP)
        body.feed(first)
        body.feed(rest)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(raw) > 2_000_000 and peak < 4 * (HEAD_BYTES + TAIL_BYTES)
    assert body.meter(Api.OPENAI_CHAT).usage == usage_from_json(Api.OPENAI_CHAT, raw).usage
