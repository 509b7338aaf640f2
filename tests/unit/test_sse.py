"""SSEDecoder: WHATWG event-stream interpretation, fed in chunks split at every possible byte."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_extproc.providers.sse import SSEDecoder, SSEError, SSEEvent


def decode(*chunks: bytes, max_line_bytes: int = 1 << 20) -> list[SSEEvent]:
    decoder = SSEDecoder(max_line_bytes)
    events: list[SSEEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    return events + decoder.flush()


def ev(data: str, event: str | None = None, id: str | None = None) -> SSEEvent:
    return SSEEvent(event=event, data=data, id=id)


# (name, stream, events). Every stream ends its last event properly unless the name says "flush".
CASES: list[tuple[str, bytes, list[SSEEvent]]] = [
    ("lf", b"data: a\n\ndata: b\n\n", [ev("a"), ev("b")]),
    ("crlf", b"data: a\r\n\r\ndata: b\r\n\r\n", [ev("a"), ev("b")]),
    ("cr", b"data: a\r\rdata: b\r\r", [ev("a"), ev("b")]),
    ("mixed endings", b"data: a\r\ndata: b\rdata: c\n\r\n", [ev("a\nb\nc")]),
    ("crlf is one terminator", b"data: a\r\ndata: b\r\n\r\n", [ev("a\nb")]),
    ("lf cr is two", b"data: a\n\rdata: b\n\n", [ev("a"), ev("b")]),
    ("multi-line data", b"data: x\ndata: y\ndata:\ndata: z\n\n", [ev("x\ny\n\nz")]),
    ("event and id", b"event: delta\nid: 7\ndata: {}\n\n", [ev("{}", "delta", "7")]),
    (
        "id persists",
        b"id: 1\ndata: a\n\ndata: b\n\nid\ndata: c\n\n",
        [ev("a", id="1"), ev("b", id="1"), ev("c")],
    ),
    ("id with nul ignored", b"id: 1\n\nid: 2\x003\ndata: a\n\n", [ev("a", id="1")]),
    ("event type resets", b"event: x\ndata: a\n\ndata: b\n\n", [ev("a", "x"), ev("b")]),
    ("event type of dropped event resets", b"event: ping\n\ndata: a\n\n", [ev("a")]),
    ("comments", b": hi\n:\ndata: a\n: between\n\n:keep-alive\n\n", [ev("a")]),
    ("no space after colon", b"data:a\n\n", [ev("a")]),
    ("only one space stripped", b"data:  a \n\n", [ev(" a ")]),
    ("colon in value", b'data: {"a": "b:c"}\n\n', [ev('{"a": "b:c"}')]),
    ("field without colon", b"data\ndata\n\n", [ev("\n")]),
    ("event without colon", b"event: x\nevent\ndata: a\n\n", [ev("a")]),
    ("empty data dispatched", b"data:\n\n", [ev("")]),
    ("no data not dispatched", b"event: ping\nid: 4\n\n\n\n", []),
    ("unknown fields and retry ignored", b"retry: 10\nfoo: bar\nData: no\ndata: a\n\n", [ev("a")]),
    ("bom stripped", b"\xef\xbb\xbfdata: a\n\n", [ev("a")]),
    ("only the first bom", b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\ndata: b\n\n", [ev("b")]),
    ("bom later is data", b"data: a\n\xef\xbb\xbfdata: b\n\n", [ev("a")]),
    ("utf-8", "data: héllo 😀 世界\n\n".encode(), [ev("héllo 😀 世界")]),
    ("invalid utf-8 replaced", b"data: a\xffb\xe2\x82\n\n", [ev("a\ufffdb\ufffd")]),
    ("space-only lines are not blank", b"data: a\n \ndata: b\n\n", [ev("a\nb")]),
    ("flush: unterminated event", b"data: a\n\ndata: b", [ev("a"), ev("b")]),
    ("flush: missing blank line", b"data: a\ndata: b\n", [ev("a\nb")]),
    ("flush: trailing cr", b"data: a\r", [ev("a")]),
    ("flush: comment only", b": hi", []),
    ("empty stream", b"", []),
]


@pytest.mark.parametrize(("stream", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_whole_stream(stream: bytes, expected: list[SSEEvent]) -> None:
    assert decode(stream) == expected


@pytest.mark.parametrize(("stream", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_split_point(stream: bytes, expected: list[SSEEvent]) -> None:
    for i in range(len(stream) + 1):
        assert decode(stream[:i], stream[i:]) == expected, i


@pytest.mark.parametrize(("stream", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_pair_of_split_points(stream: bytes, expected: list[SSEEvent]) -> None:
    for i, j in itertools.combinations_with_replacement(range(len(stream) + 1), 2):
        assert decode(stream[:i], stream[i:j], stream[j:]) == expected, (i, j)


@pytest.mark.parametrize(("stream", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_byte_at_a_time(stream: bytes, expected: list[SSEEvent]) -> None:
    assert decode(*(stream[i : i + 1] for i in range(len(stream)))) == expected


LONG_STREAM = (
    "\ufeff: a long stream of assorted events\n"
    "event: message_start\r\n"
    'data: {"type":"message_start","model":"claude-4"}\r\n'
    "\r\n"
    "id: 41\n"
    'data: {"delta":"Grüße aus Köln 🌧️ 雨"}\n'
    "\n"
    "data: first line\rdata: second line\r\r"
    ": ping\n"
    "event: ping\n"
    "\n"
    "data:no-space\n"
    "data\n"
    "\n"
    "retry: 3000\n"
    "id: 42\r\n"
    "data: [DONE]\n"
    "\n"
).encode()
LONG_EXPECTED = [
    ev('{"type":"message_start","model":"claude-4"}', "message_start"),
    ev('{"delta":"Grüße aus Köln 🌧️ 雨"}', id="41"),
    ev("first line\nsecond line", id="41"),
    ev("no-space\n", id="41"),
    ev("[DONE]", id="42"),
]


def test_long_stream_every_split_point() -> None:
    assert decode(LONG_STREAM) == LONG_EXPECTED
    for i in range(len(LONG_STREAM) + 1):
        assert decode(LONG_STREAM[:i], LONG_STREAM[i:]) == LONG_EXPECTED, i


def test_long_stream_in_small_chunks() -> None:
    for size in (1, 2, 3, 5, 7, 64):
        chunks = [LONG_STREAM[i : i + size] for i in range(0, len(LONG_STREAM), size)]
        assert decode(*chunks) == LONG_EXPECTED, size


def test_many_events_in_one_chunk() -> None:
    stream = b"".join(b"data: %d\n\n" % i for i in range(1000))
    assert decode(stream) == [ev(str(i)) for i in range(1000)]


def test_cr_at_chunk_end_then_lf_is_one_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\ndata: b\r") == []  # the LF completes the CRLF: no blank line
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\r\n") == [ev("a\nb")]
    assert decoder.flush() == []


def test_lone_cr_at_chunk_end_still_ends_the_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\r") == [ev("a")]  # CR CR: line end then blank line
    assert decoder.feed(b"\n") == []  # the CRLF of the blank line: not another blank line


def test_lf_after_cr_only_skipped_once() -> None:
    assert decode(b"data: a\r", b"\n", b"\n") == [ev("a")]
    assert decode(b"data: a\r", b"", b"\n\n") == [ev("a")]


def test_multibyte_character_split_everywhere() -> None:
    text = "data: €𝄞ü\n\n"
    raw = text.encode()
    for i in range(len(raw) + 1):
        for j in range(i, len(raw) + 1):
            assert decode(raw[:i], raw[i:j], raw[j:]) == [ev("€𝄞ü")]


def test_events_are_returned_as_soon_as_complete() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b"\ndata: b\n\ndata: c") == [ev("a"), ev("b")]
    assert decoder.flush() == [ev("c")]


def test_flush_resets_for_a_new_stream() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"id: 1\nevent: x\ndata: a") == []
    assert decoder.flush() == [ev("a", "x", "1")]
    assert decoder.feed(b"\xef\xbb\xbfdata: b\n\n") == [ev("b")]
    assert decoder.flush() == []


def test_long_line_fed_in_pieces() -> None:
    payload = "é" * 100_000
    raw = f"data: {payload}\n\n".encode()
    chunks = [raw[i : i + 97] for i in range(0, len(raw), 97)]
    assert decode(*chunks) == [ev(payload)]


class TestLineLimit:
    def test_line_at_the_limit_is_fine(self) -> None:
        assert decode(b"data: " + b"x" * 10 + b"\n\n", max_line_bytes=16) == [ev("x" * 10)]

    def test_unfinished_line_over_the_limit_raises_and_event_is_dropped(self) -> None:
        decoder = SSEDecoder(max_line_bytes=16)
        assert decoder.feed(b"data: ok\n\nevent: big\ndata: 0123") == [ev("ok")]
        with pytest.raises(SSEError, match="longer than 16 bytes") as info:
            decoder.feed(b"456789abcdef")
        assert info.value.events == []
        assert decoder.feed(b"more and more bytes of the same line") == []  # raises only once
        assert decoder.feed(b"\ndata: rest\n\ndata: next\n\n") == [ev("next")]
        assert decoder.flush() == []

    def test_events_before_the_overflow_travel_with_the_error(self) -> None:
        decoder = SSEDecoder(max_line_bytes=16)
        with pytest.raises(SSEError) as info:
            decoder.feed(b"data: a\n\ndata: b\n\ndata: " + b"x" * 20)
        assert info.value.events == [ev("a"), ev("b")]
        assert decoder.flush() == []

    def test_complete_line_over_the_limit_in_one_chunk(self) -> None:
        decoder = SSEDecoder(max_line_bytes=16)
        with pytest.raises(SSEError) as info:
            decoder.feed(b"data: a\n\ndata: " + b"x" * 20 + b"\ndata: y\n\ndata: c\n\n")
        assert info.value.events == [ev("a"), ev("c")]

    def test_limit_counts_bytes_across_chunks(self) -> None:
        decoder = SSEDecoder(max_line_bytes=16)
        for _ in range(16):
            assert decoder.feed(b"a") == []
        with pytest.raises(SSEError):
            decoder.feed(b"b")

    def test_limit_must_be_positive(self) -> None:
        with pytest.raises(ValueError, match="positive"):
            SSEDecoder(max_line_bytes=0)


# --- Property: any event list, serialised any valid way and split anywhere, decodes back. ---

_line_text = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"), max_size=12
)
# (event type, id, data lines, with a comment line): one event as a server might write it
_event = st.tuples(
    st.none() | _line_text.filter(bool),
    st.none() | _line_text.filter(lambda s: bool(s) and "\0" not in s),
    st.lists(_line_text, min_size=1, max_size=3),
    st.booleans(),
)


@st.composite
def _streams(draw: st.DrawFn) -> tuple[bytes, list[SSEEvent], list[int]]:
    newline = st.sampled_from(["\n", "\r\n", "\r"])
    out = ["\ufeff" if draw(st.booleans()) else ""]
    expected: list[SSEEvent] = []
    last_id: str | None = None
    for event, id_, data, comment in draw(st.lists(_event, max_size=6)):
        lines = [":" + draw(_line_text)] if comment else []
        if event is not None:
            lines.append("event: " + event)
        if id_ is not None:
            lines.append("id: " + id_)
            last_id = id_
        lines += ["data: " + d for d in data]
        previous = ""
        for line in lines:
            previous = draw(newline)
            out.append(line + previous)
        # A blank line right after a lone CR must not start with LF: that would be one CRLF.
        out.append(draw(st.sampled_from(["\r", "\r\n"]) if previous == "\r" else newline))
        expected.append(SSEEvent(event, "\n".join(data), last_id))
    raw = "".join(out).encode()
    cuts = sorted(draw(st.lists(st.integers(0, len(raw)), max_size=8)))
    return raw, expected, cuts


@settings(max_examples=300, deadline=None)
@given(_streams())
def test_random_streams_split_anywhere(case: tuple[bytes, list[SSEEvent], list[int]]) -> None:
    raw, expected, cuts = case
    chunks = [raw[i:j] for i, j in itertools.pairwise([0, *cuts, len(raw)])]
    assert decode(raw) == expected
    assert decode(*chunks) == expected


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=6))
def test_arbitrary_bytes_never_raise_and_split_does_not_matter(raw: bytes, cuts: list[int]) -> None:
    points = sorted(min(c, len(raw)) for c in cuts)
    chunks = [raw[i:j] for i, j in itertools.pairwise([0, *points, len(raw)])]
    assert decode(*chunks) == decode(raw)
