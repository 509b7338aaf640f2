"""The client metadata header: every rule, each violation a 400 naming the rule."""

from __future__ import annotations

import json

import pytest

from gateway_extproc.errors import BadRequest
from gateway_extproc.identity.metadata import (
    MAX_BYTES,
    MAX_KEYS,
    MAX_VALUE_CHARS,
    parse_metadata,
)


def rejected(value: str, *, header: str = "x-gateway-metadata") -> str:
    with pytest.raises(BadRequest) as info:
        parse_metadata(value, header=header)
    assert (info.value.status, info.value.code) == (400, "invalid_request")
    return info.value.message


@pytest.mark.parametrize("value", [None, "", "   "])
def test_absent_or_blank_is_no_metadata(value: str | None) -> None:
    assert parse_metadata(value) == {}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('{"app":"docs-bot","ticket":"OPS-12"}', {"app": "docs-bot", "ticket": "OPS-12"}),
        ("{}", {}),
        (' { "a" : "" } ', {"a": ""}),
        ('{"a.b-c_d9": "x"}', {"a.b-c_d9": "x"}),
        ('{"team": "d\\u00e9j\\u00e0 vu \\ud83d\\ude42"}', {"team": "déjà vu 🙂"}),
        ('{"team": "déjà vu"}', {"team": "déjà vu"}),
        ('{"q": "quote \\" and backslash \\\\"}', {"q": 'quote " and backslash \\'}),
    ],
)
def test_valid(value: str, expected: dict[str, str]) -> None:
    parsed = parse_metadata(value)
    assert parsed == expected
    assert list(parsed) == list(expected)  # the client's order


def _padded(size: int) -> tuple[str, dict[str, str]]:
    """A valid header of exactly `size` bytes, and what it parses to."""
    doc = {"a": "x" * 250, "b": "x" * 250, "c": "x" * 250, "d": ""}
    doc["d"] = "x" * (size - len(json.dumps(doc)))
    return json.dumps(doc), doc


def test_size_limit_in_bytes() -> None:
    assert MAX_BYTES == 1024
    exact, doc = _padded(1024)
    assert len(exact.encode()) == 1024
    assert parse_metadata(exact) == doc
    too_big, _ = _padded(1025)
    assert rejected(too_big) == "x-gateway-metadata: must be at most 1024 bytes (got 1025)"
    # bytes, not characters: 600 two-byte characters are 1200 bytes
    value = json.dumps({"a": "é" * 200, "b": "é" * 200, "c": "é" * 200}, ensure_ascii=False)
    assert len(value) < 1024 < len(value.encode())
    assert rejected(value).startswith("x-gateway-metadata: must be at most 1024 bytes")


@pytest.mark.parametrize(
    "value",
    ["not json", "[1, 2]", '"docs-bot"', "null", "42", '{"a": "x"', '{"a": "x"} {}', "{'a': 'x'}"],
)
def test_must_be_a_json_object(value: str) -> None:
    assert (
        rejected(value) == 'x-gateway-metadata: must be a JSON object such as {"app": "docs-bot"}'
    )


def test_deep_nesting_is_a_bad_request_not_a_crash() -> None:
    assert rejected("[" * MAX_BYTES).endswith(
        "must be a JSON object such as {" + '"app": "docs-bot"}'
    )


def test_nan_is_not_json() -> None:
    assert "must be a JSON object" in rejected('{"a": NaN}')


def test_duplicate_keys() -> None:
    assert rejected('{"app": "a", "app": "b"}') == (
        "x-gateway-metadata: key 'app' appears more than once"
    )


def test_key_count() -> None:
    assert MAX_KEYS == 16
    sixteen = {f"k{i}": "v" for i in range(16)}
    assert parse_metadata(json.dumps(sixteen)) == sixteen
    assert rejected(json.dumps({**sixteen, "k16": "v"})) == (
        "x-gateway-metadata: must have at most 16 keys (got 17)"
    )


@pytest.mark.parametrize("key", ["a", "a" * 64, "app", "x9", "cost_center", "a.b", "a-b", "a_"])
def test_good_keys(key: str) -> None:
    assert parse_metadata(json.dumps({key: "v"})) == {key: "v"}


@pytest.mark.parametrize(
    "key", ["", "App", "1app", "_app", ".a", "a" * 65, "a b", "a/b", "é", "a:b", "a\n"]
)
def test_bad_keys(key: str) -> None:
    message = rejected(json.dumps({key: "v"}))
    assert message.startswith("x-gateway-metadata: key ")
    assert message.endswith(
        "must be 1-64 characters of a-z, 0-9, '_', '.', '-', starting with a letter"
    )


def test_bad_key_is_shortened_in_the_message() -> None:
    assert "'" + "A" * 40 + "...'" in rejected(json.dumps({"A" * 100: "v"}))


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("42", "number 42"),
        ("4.5", "number 4.5"),
        ("true", "boolean true"),
        ("null", "null null"),
        ('["a"]', 'array ["a"]'),
        ('{"b": "c"}', 'object {"b": "c"}'),
        ("[" + "1, " * 30 + "1]", "array [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, ..."),
    ],
)
def test_values_must_be_strings(value: str, shown: str) -> None:
    got = rejected(f'{{"app": {value}}}')
    assert got == f"x-gateway-metadata: app must be a string (got {shown})"


def test_value_length_in_characters() -> None:
    assert MAX_VALUE_CHARS == 256
    assert parse_metadata(json.dumps({"a": "x" * 256})) == {"a": "x" * 256}
    assert parse_metadata(json.dumps({"a": "é" * 256}, ensure_ascii=False)) == {"a": "é" * 256}
    assert rejected(json.dumps({"a": "x" * 257})) == (
        "x-gateway-metadata: a must be at most 256 characters (got 257)"
    )


@pytest.mark.parametrize(
    ("char", "code"),
    [
        ("\n", "000A"),
        ("\t", "0009"),
        ("\x00", "0000"),
        ("\x1b", "001B"),
        ("\x7f", "007F"),
        ("\x85", "0085"),  # C1 control
        ("\u200b", "200B"),  # zero-width space (Cf)
        ("\u202e", "202E"),  # right-to-left override (Cf)
        ("\u2028", "2028"),  # line separator
        ("\ud800", "D800"),  # a lone surrogate, only reachable through a JSON escape
    ],
)
def test_no_control_characters(char: str, code: str) -> None:
    value = json.dumps({"app": f"docs{char}bot"})  # ensure_ascii: escapes reach the parser
    assert rejected(value) == (
        "x-gateway-metadata: app must not contain control or formatting characters "
        f"(found U+{code})"
    )


def test_raw_control_character_in_the_header_text() -> None:
    assert "must not contain control" in rejected('{"app": "a\x7fb"}')
    assert "must be a JSON object" in rejected('{"app": "a\nb"}')  # JSON forbids raw newlines


def test_message_names_the_configured_header() -> None:
    assert rejected("[]", header="x-acme-tags").startswith("x-acme-tags: must be a JSON object")
