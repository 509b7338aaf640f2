"""ResponseBody, the observer's view of a body: which encodings it reads, what it hands the
response cache, which bounds it reports, and the output it charges when usage is not read."""

from __future__ import annotations

import gzip

import pytest

from gateway_extproc.apis import Api
from gateway_extproc.audit import LimitReached
from gateway_extproc.response.body import ResponseBody

CAP = 256 * 1024


def body(*, stream: bool = False, encoding: str = "") -> ResponseBody:
    b = ResponseBody(CAP)
    b.start(Api.OPENAI_CHAT, stream=stream, encoding=encoding)
    return b


@pytest.mark.parametrize(
    ("encoding", "decoded", "unreadable"),
    [
        ("", False, None),
        ("identity", False, None),
        (" GZIP ", True, None),
        ("x-gzip", True, None),
        ("deflate", True, None),
        ("br", False, "br-encoded"),
        ("zstd", False, "zstd-encoded"),
    ],
)
def test_encodings(encoding: str, decoded: bool, unreadable: str | None) -> None:
    b = body(encoding=encoding)
    assert (b.inflater is not None, b.unreadable) == (decoded, unreadable)


def test_a_stream_s_decoded_bytes_go_to_the_cache_a_json_body_s_do_not() -> None:
    sse = b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
    assert body(stream=True).take(sse, False) == (sse,)
    assert body(stream=True, encoding="gzip").take(gzip.compress(sse), True) == (sse,)
    assert body().take(b'{"usage": {}}', True) == ()
    assert body(encoding="br").take(b"\x8b\x00", True) == ()


def test_bounds_reached_are_listed_once_the_bomb_first() -> None:
    b = body()
    b.take(b" " * (CAP + 1), False)
    b.take(b" " * 10, False)
    assert b.limits_reached == [LimitReached.RESPONSE_BODY_CAP]
    bomb = body(encoding="gzip")
    wire = gzip.compress(b" " * (8 << 20))  # 8 MiB at ~1,000:1: over the ratio past 1 MiB
    bomb.take(wire, True)
    assert bomb.limits_reached == [
        LimitReached.RESPONSE_INFLATE_RATIO,
        LimitReached.RESPONSE_BODY_CAP,
    ]
    assert bomb.unreadable is not None and bomb.take(b"more", True) == ()


@pytest.mark.parametrize(
    ("json_bytes", "chars", "max_tokens", "expected"),
    [
        (100, 40, None, 10),  # no bound reached: the characters of generated text / 4
        (100, 40, 5, 10),  # ... whatever the output limit (the provider may not cap)
        (CAP + 4000, 40, None, (CAP + 4000) // 4),  # over the cap: every byte seen / 4
        (CAP + 4000, 40, 50, 50),  # ... never above the request's own output limit
    ],
)
def test_the_output_charged_without_usage(
    json_bytes: int, chars: int, max_tokens: int | None, expected: int
) -> None:
    b = body()
    b.take(b" " * json_bytes, False)
    assert b.estimated_output(chars, max_tokens) == expected


def test_the_truncation_note_has_sizes_never_content() -> None:
    b = body()
    assert b.truncation_note(usage_read=True) is None
    b.take(b'{"choices": "secret words", ' + b" " * CAP, False)
    note = b.truncation_note(usage_read=False)
    assert note is not None and str(CAP + 28) in note and "secret" not in note
    assert "charged an upper bound" in note
