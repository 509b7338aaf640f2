"""What the observer keeps of a non-streamed response, within a memory cap. Pure.

A JSON response is kept whole up to `cap` bytes and parsed at its end, as always. Beyond the cap
(a 2,048-input embeddings batch is ~100 MB of JSON) only its first `HEAD_BYTES` and a rolling
last `TAIL_BYTES` are kept: memory stays under the cap whatever the upstream sends. The cost is
still read exactly, because every API the gateway meters puts what the price needs in top-level
members at the ends of the object - `usage` last or nearly (after `choices`, `data`, `output` or
`content`, followed at most by a few short members such as `service_tier`, `user` and
`metadata`), `id` and `model` first (OpenAI and Anthropic's wire order; a recorded transcript
with sorted keys has them near the end, which the tail finds as well). `top_level_members`
reads the members that lie whole in either end without parsing the middle.

What a truncated body cannot give: the generated characters (`output_chars` becomes the body's
size, an upper bound for an estimate when usage is missing), chat finish reasons (inside
`choices`), and the answer itself (the response cache does not store it).
"""

from __future__ import annotations

import dataclasses
import re

import orjson

from gateway_extproc.apis import Api
from gateway_extproc.metering import meter_object, usage_from_json
from gateway_extproc.metering_common import JsonMeterResult

HEAD_BYTES = 64 * 1024
TAIL_BYTES = 64 * 1024
# The members a truncated body is metered from (see `meter_object`); others are never parsed.
WANTED = frozenset(
    {"id", "model", "usage", "status", "incomplete_details", "stop_reason", "service_tier"}
)

_TOKEN = re.compile(rb'["{}\[\],:]')
_SPACE = b" \t\r\n"
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_OPENERS, _CLOSERS = frozenset(b"{["), frozenset(b"}]")


class JsonBody:
    """A non-streamed response body as it arrives: whole up to `cap` bytes, then its ends."""

    __slots__ = ("_head", "_tail", "_whole", "cap", "size")

    def __init__(self, cap: int) -> None:
        if cap < HEAD_BYTES + TAIL_BYTES:
            raise ValueError(f"cap must be at least {HEAD_BYTES + TAIL_BYTES} bytes")
        self.cap = cap
        self.size = 0  # every byte seen, kept or not
        self._whole: bytearray | None = bytearray()
        self._head = b""
        self._tail = bytearray()

    def feed(self, data: bytes) -> None:
        self.size += len(data)
        whole = self._whole
        if whole is not None:
            if len(whole) + len(data) <= self.cap:
                whole += data
                return
            # From now on only the ends are kept (a large chunk is not copied whole first).
            self._head = bytes(whole[:HEAD_BYTES]) + data[: max(HEAD_BYTES - len(whole), 0)]
            self._tail = bytearray(whole[-TAIL_BYTES:]) if len(data) < TAIL_BYTES else bytearray()
            self._whole = None
        tail = self._tail
        if len(data) >= TAIL_BYTES:
            self._tail = bytearray(data[-TAIL_BYTES:])
            return
        tail += data
        if len(tail) > 2 * TAIL_BYTES:  # trimmed in steps: amortised O(1) per byte
            del tail[: len(tail) - TAIL_BYTES]

    @property
    def truncated(self) -> bool:
        return self._whole is None

    @property
    def kept(self) -> int:
        """Bytes held in memory now."""
        return len(self._whole) if self._whole is not None else len(self._head) + len(self._tail)

    def whole(self) -> bytearray | None:
        """The body (not a copy), when it was kept whole."""
        return self._whole

    def meter(self, api: Api, *, ended: bool = True) -> JsonMeterResult:
        """What the body says about its cost. Never raises. A truncated body is read from its
        ends: from its last bytes only if it `ended` (a cut body's last `}` may close a nested
        object), and its `output_chars` is its size, an upper bound."""
        if self._whole is not None:
            return usage_from_json(api, bytes(self._whole))
        members = top_level_members(self._head, at_start=True)
        if ended:
            members |= top_level_members(bytes(self._tail), at_start=False)
        result = meter_object(api, members)
        return dataclasses.replace(result, output_chars=self.size)


def top_level_members(
    piece: bytes, *, at_start: bool, wanted: frozenset[str] = WANTED
) -> dict[str, object]:
    """The `wanted` members of a JSON object that lie whole in `piece`: the object's first bytes
    (`at_start`) or its last ones. Never raises: a piece that is not the end of an object, or a
    member that does not parse, yields nothing for it. Later members win, as in a parse."""
    try:
        spans = _forward(piece) if at_start else _backward(piece)
    except IndexError:  # a malformed piece ran off its end: what was found so far stands
        spans = []
    found: dict[str, object] = {}
    for key_span, value_span in spans:
        try:
            key = orjson.loads(piece[key_span[0] : key_span[1]])
            if isinstance(key, str) and key in wanted:
                found[key] = orjson.loads(piece[value_span[0] : value_span[1]])
        except orjson.JSONDecodeError:
            continue
    return found


Span = tuple[int, int]


def _escaped(piece: bytes, pos: int) -> bool | None:
    """Whether the quote at `pos` is escaped (an odd run of backslashes before it); None when
    that run reaches the start of the piece (what precedes it is unknown)."""
    run = 0
    i = pos - 1
    while i >= 0 and piece[i] == _BACKSLASH:
        run += 1
        i -= 1
    if i < 0 and run:
        return None
    return run % 2 == 1


def _string_end(piece: bytes, start: int) -> int:
    """The index after the string opened at `start`; -1 when it does not close in the piece."""
    pos = start
    while True:
        pos = piece.find(b'"', pos + 1)
        if pos < 0:
            return -1
        if not _escaped(piece, pos):
            return pos + 1


def _forward(piece: bytes) -> list[tuple[Span, Span]]:
    """Members from the start of the document: its state is known at every byte."""
    start = len(piece) - len(piece.lstrip(_SPACE))
    if start >= len(piece) or piece[start] != ord("{"):
        return []
    members: list[tuple[Span, Span]] = []
    depth = 1
    last_string: Span | None = None
    key: Span | None = None
    value_start = 0
    pos = start + 1
    while True:
        match = _TOKEN.search(piece, pos)
        if match is None:
            return members  # the piece ends inside the object: the open member is dropped
        pos = match.start()
        c = piece[pos]
        if c == _QUOTE:
            end = _string_end(piece, pos)
            if end < 0:
                return members
            last_string = (pos, end)
            pos = end
            continue
        pos += 1
        if c in _OPENERS:
            depth += 1
        elif c in _CLOSERS:
            depth -= 1
            if depth == 0:
                if key is not None:
                    members.append((key, (value_start, pos - 1)))
                return members
        elif depth == 1 and c == ord(":"):
            key, value_start = last_string, pos
        elif depth == 1 and c == ord(",") and key is not None:
            members.append((key, (value_start, pos - 1)))
            key = None


def _backward(piece: bytes) -> list[tuple[Span, Span]]:
    """Members from the end of the document, walking back: a quote closes a string when an
    even run of backslashes precedes it, so strings are skipped exactly from the end; the walk
    stops where the piece starts inside a string or a member."""
    body = piece.rstrip(_SPACE)
    if not body or body[-1] != ord("}"):
        return []
    tokens = [m.start() for m in _TOKEN.finditer(body, 0, len(body) - 1)]
    members: list[tuple[Span, Span]] = []
    depth = 1
    boundary = len(body) - 1  # the `,` or `}` after the member being read
    colon = -1
    k = len(tokens) - 1
    while k >= 0:
        pos = tokens[k]
        c = body[pos]
        k -= 1
        if c == _QUOTE:
            opening = _string_start(body, pos)
            if opening is None:
                break  # the piece starts inside this string
            if depth == 1 and colon >= 0:
                members.append(((opening, pos + 1), (colon + 1, boundary)))
                colon = -1
            while k >= 0 and tokens[k] >= opening:
                k -= 1
        elif c in _CLOSERS:
            depth += 1
        elif c in _OPENERS:
            depth -= 1
            if depth == 0:
                break  # the object's opening brace: every member was read
        elif depth == 1 and c == ord(":"):
            colon = pos
        elif depth == 1 and c == ord(","):
            boundary, colon = pos, -1
    members.reverse()
    return members


def _string_start(piece: bytes, closing: int) -> int | None:
    """The opening quote of the string whose closing quote is at `closing`; None when it is not
    in the piece, or when the quote at `closing` is not a string's end after all (escaped)."""
    if _escaped(piece, closing) is not False:
        return None
    pos = closing
    while True:
        pos = piece.rfind(b'"', 0, pos)
        if pos < 0:
            return None
        escaped = _escaped(piece, pos)
        if escaped is None:
            return None
        if not escaped:
            return pos
