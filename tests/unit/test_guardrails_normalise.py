"""The text the guardrail detectors read (NFKC per character, invisible characters dropped) and
the map back to the text as written, which redaction replaces."""

from __future__ import annotations

import sys
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_extproc.budgets.model import Match
from gateway_extproc.guardrails import Category, GuardAction, GuardrailConfig
from gateway_extproc.guardrails.engine import finding_action
from gateway_extproc.guardrails.normalise import DROPPED, fold
from gateway_extproc.guardrails.scan import redact, scan

ZWSP, SOFT_HYPHEN, WORD_JOINER, BOM = "\u200b", "\u00ad", "\u2060", "\ufeff"
KEY = "sk-proj-IhKtJ0RlgLKOmxgJTeKdNnFRIBXuDL7DxtpYlSXpfKtHF4vUCsMeh"
DROPPED_SET = frozenset(cp for lo, hi in DROPPED for cp in range(lo, hi + 1))


def reference(ch: str) -> str:
    """One character as the detectors read it: dropped if invisible, else its NFKC form."""
    if ord(ch) in DROPPED_SET:
        return ""
    return "".join(c for c in unicodedata.normalize("NFKC", ch) if ord(c) not in DROPPED_SET)


def test_every_format_character_is_dropped() -> None:
    missing = [
        f"U+{cp:04X}"
        for cp in range(sys.maxunicode + 1)
        if unicodedata.category(chr(cp)) == "Cf" and cp not in DROPPED_SET
    ]
    assert missing == []


def test_every_code_point_folds_like_nfkc_of_it_alone() -> None:
    """The tables cover all of Unicode (as this Python knows it), not only the planes they
    read: one string of every code point, a no-op separator between them."""
    chars = [chr(cp) for cp in range(0x80, sys.maxunicode + 1) if not 0xD800 <= cp < 0xE000]
    folded = fold("\x00".join(chars)).text.split("\x00")
    assert len(folded) == len(chars)
    wrong = [f"U+{ord(c):04X}" for c, f in zip(chars, folded, strict=True) if f != reference(c)]
    assert wrong == []


@pytest.mark.parametrize(
    ("text", "folded"),
    [
        ("plain ASCII", "plain ASCII"),
        (f"sk-{ZWSP}proj", "sk-proj"),
        (f"gh{SOFT_HYPHEN}p_{WORD_JOINER}x{BOM}", "ghp_x"),
        ("alice\uff20corp\uff0eio", "alice@corp.io"),  # full-width @ and .
        ("\uff14\uff11\uff11\uff11", "4111"),  # full-width digits
        ("\U0001d42c\U0001d424-", "sk-"),  # mathematical bold
        ("\ufb01nance", "finance"),  # a ligature folds to two characters
        ("\u2474\u00bd", "(1)1\u20442"),  # parenthesised digit, vulgar fraction
        ("a\u00a0b\u3000c", "a b c"),  # no-break and ideographic spaces
        ("e\u0301 \u00e9 \u4e2d\u6587", "e\u0301 \u00e9 \u4e2d\u6587"),  # left as they are
        ("\U0001f468\u200d\U0001f469 \u2764\ufe0f", "\U0001f468\U0001f469 \u2764"),  # emoji joiners
    ],
)
def test_fold(text: str, folded: str) -> None:
    assert fold(text).text == folded


def test_text_with_nothing_to_fold_is_the_same_object() -> None:
    for text in ("plain", "\u4e2d\u6587 \u00e9\u00e8 \U0001f600"):
        assert fold(text).text is text


@pytest.mark.parametrize(
    ("text", "span", "original"),
    [
        # zero-width characters inside a span are kept in it, at its edges left out
        (f"x {ZWSP}sk-{ZWSP}proj{ZWSP} y", (2, 9), f"sk-{ZWSP}proj"),
        (f"{BOM}{BOM}abc", (0, 3), "abc"),
        # characters folding to one keep their place
        ("mail a\uff20b.io!", (5, 11), "a\uff20b.io"),
        # a span inside a character folding to several is widened to it
        ("x\u2474y", (2, 3), "\u2474"),
        ("x\ufb01nance", (1, 8), "\ufb01nance"),
        ("con\ufb01g", (0, 6), "con\ufb01g"),
    ],
)
def test_spans_map_back_to_the_text_as_written(
    text: str, span: tuple[int, int], original: str
) -> None:
    folded = fold(text)
    start, end = folded.original(*span)
    assert text[start:end] == original


_PIECES = st.sampled_from(
    (
        *("a", "b", "1", " ", "@", "-", ZWSP, SOFT_HYPHEN, BOM, "\uff20", "\uff11", "\ufb01"),
        *("\u2474", "\u00bd", "\u00e9", "e\u0301", "\u4e2d", "\U0001f600", "\U0001d42c"),
        *("\u00a0", "\ufe0f"),
    )
)


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(_PIECES, max_size=30), data=st.data())
def test_every_folded_span_maps_to_an_original_span_that_folds_over_it(
    pieces: list[str], data: st.DataObject
) -> None:
    text = "".join(pieces)
    folded = fold(text)
    assert folded.text == "".join(map(reference, text))
    n = len(folded.text)
    start = data.draw(st.integers(0, n))
    end = data.draw(st.integers(start, n))
    a, b = folded.original(start, end)
    assert 0 <= a <= b <= len(text)
    prefix_a, prefix_b = len(fold(text[:a]).text), len(fold(text[:b]).text)
    assert prefix_a <= start and prefix_b >= end  # covers the span
    if all(len(reference(c)) <= 1 for c in text):  # no character folds to several: exact
        assert prefix_a == start and prefix_b == end
        if start < end:  # and as tight as can be: one character less would not cover it
            assert len(fold(text[: a + 1]).text) > start
            assert len(fold(text[: b - 1]).text) < end


REDACT_ALL = GuardrailConfig(
    "all", Match(), dict.fromkeys(Category, GuardAction.REDACT), frozenset({"example.com"})
)


def test_an_obfuscated_key_is_found_and_its_original_span_redacted() -> None:
    text = f"key: sk-{ZWSP}proj-{KEY[8:]}{ZWSP} and mail nora\uff20fabrikam.net"
    findings = scan(text, set(Category))
    assert [(f.category, text[f.start : f.end], f.value) for f in findings] == [
        (Category.OPENAI_KEY, f"sk-{ZWSP}proj-{KEY[8:]}", KEY),
        (Category.EMAIL, "nora\uff20fabrikam.net", "nora@fabrikam.net"),
    ]
    assert redact(text, findings) == (f"key: [REDACTED:openai_key]{ZWSP} and mail [REDACTED:email]")


def test_allow_lists_compare_the_folded_value() -> None:
    text = "ops\uff20mail.example\uff0ecom and 4111\u00a01111\u00a01111\u00a01111"
    rule = GuardrailConfig(
        "r",
        Match(),
        {Category.EMAIL: GuardAction.BLOCK, Category.PAYMENT_CARD: GuardAction.BLOCK},
        frozenset({"example.com"}),
        frozenset({"4111 1111 1111 1111"}),
    )
    findings = scan(text, {Category.EMAIL, Category.PAYMENT_CARD})
    assert len(findings) == 2
    assert [finding_action(f, text, [rule]) for f in findings] == [None, None]


def test_findings_widened_to_one_character_never_overlap() -> None:
    """`℀` folds to `a/c`: one address ends inside it (`x@y.coa`), the next starts inside it
    (`c@z.io`); both would widen to it, so the later one keeps only what follows it."""
    text = "x@y.co\u2100@z.io"
    assert fold(text).text == "x@y.coa/c@z.io"
    findings = scan(text, {Category.EMAIL})
    assert [(text[f.start : f.end], f.value) for f in findings] == [
        ("x@y.co\u2100", "x@y.coa"),
        ("@z.io", "c@z.io"),
    ]
    assert redact(text, findings) == "[REDACTED:email][REDACTED:email]"
