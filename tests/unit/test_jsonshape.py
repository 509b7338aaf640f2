"""Structural caps on raw JSON: exact counts against a reference walk, at every window size."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_extproc import jsonshape
from gateway_extproc.errors import BadRequest, PayloadTooLarge
from gateway_extproc.jsonshape import check_shape

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
