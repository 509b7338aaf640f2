"""Structural caps on raw JSON: exact counts against a reference walk, at every window size."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_extproc.errors import BadRequest, PayloadTooLarge
from gateway_extproc.request import jsonshape
from gateway_extproc.request.jsonshape import check_shape, check_unique_keys, count_values

BIG = 10**9


def reference(value: Any) -> tuple[int, int]:
    """(values, depth) by walking the parsed value: the root, every element and member (an empty
    container counts one), and containers nested in containers."""
    if isinstance(value, list | dict):
        children = list(value.values()) if isinstance(value, dict) else value
        counts = [reference(c) for c in children]
        values = 1 + max(sum(v for v, _ in counts), 1)
        return values, 1 + max((d for _, d in counts), default=0)
    return 1, 0


def passes(raw: bytes, *, depth: int = BIG, values: int = BIG) -> bool:
    try:
        check_shape(raw, max_depth=depth, max_values=values)
    except (BadRequest, PayloadTooLarge):
        return False
    return True


def assert_exact(raw: bytes, values: int, depth: int) -> None:
    assert passes(raw, depth=depth, values=values)
    if depth > 0:
        assert not passes(raw, depth=depth - 1)
    assert not passes(raw, values=values - 1)


TRICKY_STRINGS = [
    "",
    "plain",
    'quote " inside',
    "backslash \\",
    'ends with backslash-quote \\"',
    "brackets [[[ {{{ ]]] }}} and , commas ,,,",
    "\\\\\\\\",
    'unicode é ✓ \u2028 and escapes \n\t\\u0000 "',
]

CASES: list[Any] = [
    {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
    [],
    {},
    [[]],
    [[], {}, [[{}]]],
    "just a string",
    42,
    *({"a": s, "b": [s, {"c": s}], s: s} for s in TRICKY_STRINGS),
]


@pytest.mark.parametrize("value", CASES)
@pytest.mark.parametrize("window", [1, 2, 3, 5, 8, 64, jsonshape.WINDOW])
def test_counts_are_exact_at_every_window_size(
    value: Any, window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jsonshape, "WINDOW", window)
    for raw in (json.dumps(value).encode(), json.dumps(value, ensure_ascii=False).encode()):
        values, depth = reference(value)
        assert_exact(raw, values, depth)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='ab"\\[]{},:é \n'),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(alphabet='k"\\[{,', max_size=4), children, max_size=5)
    ),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(value=json_values, window=st.integers(1, 40), indent=st.sampled_from([None, 1]))
def test_counts_match_the_reference_walk(value: Any, window: int, indent: int | None) -> None:
    saved = jsonshape.WINDOW
    jsonshape.WINDOW = window
    try:
        values, depth = reference(value)
        assert_exact(json.dumps(value, indent=indent).encode(), values, depth)
    finally:
        jsonshape.WINDOW = saved


def test_two_million_empty_lists_are_refused_naming_the_limit() -> None:
    raw = b'{"model": "gpt-4o", "messages": [' + b",".join([b"[]"] * 2_000_000) + b"]}"
    with pytest.raises(PayloadTooLarge) as exc:
        check_shape(raw, max_depth=128, max_values=200_000)
    assert exc.value.status == 413 and exc.value.code == "request_too_large"
    assert "limits.max_json_values" in exc.value.message and "200000" in exc.value.message


def test_deep_nesting_is_refused_naming_the_limit() -> None:
    raw = b'{"model": "gpt-4o", "x": ' + b"[" * 129 + b"]" * 129 + b"}"
    with pytest.raises(BadRequest) as exc:
        check_shape(raw, max_depth=128, max_values=200_000)
    assert exc.value.status == 400 and "limits.max_json_depth" in exc.value.message
    check_shape(raw, max_depth=130, max_values=200_000)


def test_many_strings_without_commas_stop_the_walk_early() -> None:
    raw = b"[" + b'""' * 1000 + b"]"  # malformed, but must not be walked string by string
    with pytest.raises(PayloadTooLarge):
        check_shape(raw, max_depth=8, max_values=100)


@pytest.mark.parametrize(
    "raw",
    [b"", b"]]]]]", b'"unterminated', b'["a\\', b"{not json", b'"a" "b" ]', b"\xff\xfe"],
)
def test_malformed_json_is_left_to_the_parser(raw: bytes) -> None:
    check_shape(raw, max_depth=2, max_values=100)


def test_large_strings_cost_no_values() -> None:
    """A base64 image is one value however long it is."""
    image = "data:image/png;base64," + "QUJD" * 2_000_000
    value = {"model": "m", "messages": [{"content": [{"image_url": {"url": image}}]}]}
    assert reference(value) == (8, 6)
    assert_exact(json.dumps(value).encode(), 8, 6)


# -- repeated keys: the gateway checks the request the provider reads --------------------------


def refused(raw: bytes) -> BadRequest | None:
    """What the request path makes of `raw` (a valid JSON object): the BadRequest for a repeated
    key, or None."""
    values = check_shape(raw, max_depth=BIG, max_values=BIG)
    try:
        check_unique_keys(raw, orjson.loads(raw), values)
    except BadRequest as exc:
        return exc
    return None


def first_repeat(raw: bytes) -> str | None:
    """The reference: the standard library hands over each object's members in order."""
    found: list[str] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        found.extend(k for i, k in enumerate(keys) if k in keys[:i])
        return dict(pairs)

    json.loads(raw, object_pairs_hook=hook)
    return found[0] if found else None


REPEATED = [
    # (body, the key named): at the root, in a message, in a content part, in a tool call's
    # object, in arrays of arrays, and keys that differ only in how they are escaped
    (b'{"model": "gpt-4o-mini", "model": "gpt-4o"}', "model"),
    (b'{"model": "m", "messages": [], "messages": [{"role": "user", "content": "x"}]}', "messages"),
    (
        b'{"model": "m", "max_completion_tokens": 1, "max_completion_tokens": 99}',
        "max_completion_tokens",
    ),
    (b'{"model": "m", "messages": [{"role": "user", "content": "a", "content": "b"}]}', "content"),
    (b'{"messages": [{"content": [{"type": "text", "text": "a", "text": "b"}]}]}', "text"),
    (b'{"model": "m", "tools": [[[{"x": {"y": {"z": 1, "z": 2}}}]]]}', "z"),
    (b'{"mo\\u0064el": "gpt-4o", "model": "gpt-4o-mini"}', "model"),
    (b'{"\\u006d\\u006f\\u0064\\u0065\\u006c": 1, "mod\\u0065l": 2}', "model"),
    (b'{"a\\/b": 1, "a/b": 2}', "a/b"),
    ('{"é": 1, "\\u00e9": 2}'.encode(), "é"),
    ('{"😀": 1, "\\ud83d\\ude00": 2}'.encode(), "😀"),
    (b'{"": 1, "": 2}', ""),
    (b'{"stream": false, "stream": true, "stream": false}', "stream"),
    (b'{"a": {}, "a": {}}', "a"),
    (b'{"a": [], "b": {"c": [{"d": 1}, {"d": 2, "e": 3, "d": 4}]}}', "d"),
]

UNIQUE = [
    b'{"model": "m", "messages": [{"content": "a"}, {"content": "b"}]}',  # siblings, not repeats
    b'{"model": "m", "Model": "M", "model ": "x"}',  # case and spaces make other keys
    b'{"a": {"a": {"a": 1}}}',  # nesting is not repetition
    b'{"k": "\\"k\\": 1, \\"k\\": 2"}',  # a repeat inside a string is text
    b'{"a": [{}, {}, [], [[]]], "b": {}}',
    '{"é": 1, "e\\u0301": 2}'.encode(),  # composed and decomposed: different code points
]


@pytest.mark.parametrize(("raw", "key"), REPEATED)
def test_a_repeated_key_at_any_depth_is_refused_naming_it(raw: bytes, key: str) -> None:
    assert first_repeat(raw) == key  # the table is right about its own bodies
    err = refused(raw)
    assert err is not None and err.status == 400 and err.code == "invalid_request"
    assert f"repeats the key `{json.dumps(key)[1:-1]}` in one JSON object" in err.message


@pytest.mark.parametrize("raw", UNIQUE)
def test_keys_repeated_only_across_objects_or_in_strings_pass(raw: bytes) -> None:
    assert first_repeat(raw) is None
    assert refused(raw) is None


def test_a_long_repeated_key_is_cut_in_the_message() -> None:
    key = "k" * 10_000
    raw = json.dumps({"model": "m"})[:-1].encode() + f', "{key}": 1, "{key}": 2}}'.encode()
    err = refused(raw)
    assert err is not None and len(err.message) < 400 and "`" + "k" * 64 + "`" in err.message


def test_the_count_of_a_parsed_value_is_check_shapes_count() -> None:
    for value in CASES:
        raw = json.dumps(value).encode()
        assert count_values(orjson.loads(raw)) == reference(value)[0]
        assert check_shape(raw, max_depth=BIG, max_values=BIG) == reference(value)[0]


_KEYS = st.sampled_from(["model", "messages", "a", "é", "😀", "", 'q"', "b\\"])


def _written(key: str, escapes: int) -> str:
    """`key` as JSON, character i escaped (`\\uXXXX`) when bit i of `escapes` is set."""
    out = []
    for i, ch in enumerate(key):
        if escapes >> i & 1:
            out.append(json.dumps(ch)[1:-1] if ord(ch) > 0x7F else f"\\u{ord(ch):04x}")
        else:
            out.append(json.dumps(ch, ensure_ascii=False)[1:-1])
    return '"' + "".join(out) + '"'


# A key from a small set (so keys repeat), each character written plainly or escaped.
_key = st.builds(_written, _KEYS, st.integers(0, 255))


def _object(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    members = st.lists(st.tuples(_key, children), max_size=5)
    return members.map(lambda ms: "{" + ", ".join(f"{k}: {v}" for k, v in ms) + "}")


_scalars = st.one_of(
    st.none().map(lambda _: "null"),
    st.integers().map(str),
    st.text(alphabet='ab"\\{}:,', max_size=6).map(json.dumps),
)
json_texts = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]") | _object(children)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(body=_object(json_texts))
def test_refused_exactly_when_the_reference_parser_sees_a_repeat(body: str) -> None:
    raw = body.encode()
    expected = first_repeat(raw)
    err = refused(raw)
    if expected is None:
        assert err is None
    else:
        assert err is not None and f"`{json.dumps(expected)[1:-1]}`" in err.message
