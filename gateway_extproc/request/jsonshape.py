"""Structural checks on a JSON request body: caps on the raw bytes before it is parsed, and no
key repeated in an object after. Pure.

Parsing cost grows with the number of JSON values, not with bytes: 6 MB of `[],` is two million
lists, and orjson builds them in one call that holds the GIL (~0.3-1.5 s here, most of it in the
garbage collector), so a thread alone cannot keep the event loop free. This pass rejects such a
body before anything is built. It looks at structure only outside strings, and every C-level call
it makes covers at most `WINDOW` bytes, so run in a thread it lets the event loop in between.

The count it makes is exact, which also finds repeated keys: orjson keeps the last of a repeated
key (`{"model": "a", "model": "b"}` parses as `{"model": "b"}`), other parsers keep the first, so
the gateway would check one request while a provider or proxy might read another. A parsed body
holding fewer values than its bytes did lost a member to a repeated key (`check_unique_keys`).
"""

from __future__ import annotations

import itertools
import json
import operator
import re
from collections.abc import Iterator
from typing import Any

from gateway_extproc.errors import BadRequest, PayloadTooLarge

# Bytes one C-level call (regex, count, translate) covers at most: ~1-6 ms of GIL here.
WINDOW = 256 * 1024
# The body of a JSON string after its opening quote: stops at the closing quote (or the window's
# end; an escape is never split, since `\\.` needs both bytes inside the window).
_STRING_BODY = re.compile(rb'[^"\\]*+(?:\\.[^"\\]*+)*+')
# A string closed in the window (group 1), or one still open at its end (group 2, kept).
# Possessive (*+): a string that does not close in the window fails the first alternative after
# one scan instead of backtracking through it character by character.
_STRINGS = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+(")|("[^"\\]*+(?:\\.[^"\\]*+)*+\\?\Z)')
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_STEP = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")


def check_shape(raw: bytes, *, max_depth: int, max_values: int) -> int:
    """Raise PayloadTooLarge (413) when `raw` holds more than `max_values` JSON values, BadRequest
    (400) when it nests deeper than `max_depth`; else return the number of values. Counts are
    exact for valid JSON: values are the root, every array element and every object member (an
    empty array or object counts one); depth is arrays and objects inside each other. Malformed
    JSON is left to the parser (the count returned is then meaningless).
    """
    values = 1
    depth = 0
    for piece in _outside_strings(raw, max_strings=2 * max_values + 2):
        if piece is None:  # more strings than max_values values can hold: not worth reading on
            raise _too_many(max_values)
        values += piece.count(b",") + piece.count(b"[") + piece.count(b"{")
        if values > max_values:
            raise _too_many(max_values)
        # Depth after each bracket: 2 per opener, 0 per closer, minus one per bracket, all in
        # C-level iterators. Openers were counted as values, so this is bounded by max_values.
        steps = piece.translate(_STEP, _NOT_BRACKETS)
        closers = steps.count(0)
        if closers > depth + len(steps) - closers:  # an unmatched closer: the parser says where
            return values
        if steps:
            if (
                depth + max(map(operator.sub, itertools.accumulate(steps), itertools.count(1)))
                > max_depth
            ):
                raise _too_deep(max_depth)
            depth += len(steps) - 2 * closers
    return values


def check_unique_keys(raw: bytes, parsed: Any, values: int) -> None:
    """Raise BadRequest (400) when an object in `raw` repeats a key, at any depth. `parsed` is
    `raw` parsed, `values` its count by `check_shape`. Keys are compared decoded, as parsers
    compare them: `"mo\\u0064el"` repeats `"model"`. Linear in the containers parsed; the bytes
    are read again only to name the key of a body that is refused."""
    if count_values(parsed) != values:
        raise _repeated(raw)


def count_values(parsed: Any) -> int:
    """`check_shape`'s count, on a parsed value: the root, plus each array's elements and each
    object's members, an empty array or object counting one. Iterative (no recursion limit)."""
    if not isinstance(parsed, dict | list):
        return 1
    values = 1
    stack: list[Any] = [parsed]
    push, pop = stack.append, stack.pop
    while stack:
        item = pop()
        values += len(item) or 1
        for child in item.values() if type(item) is dict else item:
            if type(child) is dict or type(child) is list:
                push(child)
    return values


class _Repeated(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _Repeated(key)
        seen[key] = value
    return seen


def repeated_key(raw: bytes) -> str | None:
    """The first key an object in `raw` repeats (decoded), or None (the reference check: the
    standard library's parser hands each object's members over in order, repeats included)."""
    try:
        json.loads(raw, object_pairs_hook=_no_repeats)
    except _Repeated as found:
        return found.key
    except (ValueError, RecursionError):  # not JSON a parser would read
        return None
    return None


def _repeated(raw: bytes) -> BadRequest:
    key = repeated_key(raw)
    shown = "a key" if key is None else f"the key `{json.dumps(key[:64])[1:-1]}`"
    return BadRequest(
        f"request body repeats {shown} in one JSON object: parsers disagree on which value "
        f"counts, so the gateway could check one while the provider reads the other; "
        f"send each key once"
    )


def _outside_strings(raw: bytes, *, max_strings: int) -> Iterator[bytes | None]:
    """The body's bytes outside JSON strings, one piece per window of at most WINDOW bytes;
    None once more than `max_strings` strings were seen. One regex call per window removes the
    strings that close inside it; a string still open at the window's end is kept verbatim by
    the same call, so its opening quote is found and the walk resumes after its closing quote."""
    n = len(raw)
    pos = strings = 0
    while pos < n:
        end = min(n, pos + WINDOW)
        piece, count = _STRINGS.subn(rb"\2", raw[pos:end])
        strings += count
        if strings > max_strings:
            yield None
            return
        quote = piece.find(b'"')
        if quote < 0:
            yield piece
            pos = end
            continue
        yield piece[:quote]
        open_string = end - (len(piece) - quote)
        pos = _string_end(raw, open_string + 1, n)


def _string_end(raw: bytes, pos: int, n: int) -> int:
    """The index after the string's closing quote (or `n` when the string never closes)."""
    while True:
        end = min(n, pos + WINDOW)
        # Fast path (base64 images, plain text): no backslash before the next quote - memchr.
        quote = raw.find(b'"', pos, end)
        if raw.find(b"\\", pos, end if quote < 0 else quote) < 0:
            if quote >= 0:
                return quote + 1
            if end >= n:
                return n
            pos = end
            continue
        match = _STRING_BODY.match(raw, pos, end)
        assert match is not None  # the pattern matches the empty string
        stop = match.end()
        if stop < n and raw[stop] == ord('"'):
            return stop + 1
        if stop >= n:
            return n
        # The window ended inside the string, possibly just before an escape: carry on from
        # there (a one-byte window cannot hold the escape: step over it whole).
        pos = stop if stop > pos else pos + 2


def _too_many(max_values: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"request body has more than {max_values} JSON values "
        f"(limits.max_json_values): send fewer array elements or object members"
    )


def _too_deep(max_depth: int) -> BadRequest:
    return BadRequest(
        f"request body nests JSON arrays and objects deeper than {max_depth} levels "
        f"(limits.max_json_depth)"
    )
