"""Secret detectors: provider and cloud keys, VCS and chat tokens, private keys, JWTs, generic
high-entropy assignments. Pure.

The patterns are this project's (README, "Guardrails": detect-secrets was measured and not
kept). Every pattern is linear-time: it starts with a literal the engine jumps to, the token
boundary is checked in code, quantifiers are possessive or their classes exclude what ends them,
and no repetition is nested ambiguously. Private key blocks are delimited by searching for the
END line, not by a lazy `.*?` (quadratic when BEGIN lines have no END); AWS secret keys are
looked for only in windows after "aws"; the generic assignment runs on the lower-cased text.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections import Counter
from collections.abc import Iterator

import orjson

from gateway_extproc.guardrails.categories import Category
from gateway_extproc.guardrails.prepared import Free, Prepared

Span = tuple[int, int]

# Each pattern starts with a literal, so the engine jumps between occurrences of it; the token
# boundary before the match is checked in code (`_BOUNDARY`). Possessive quantifiers (`{n,}+`)
# never backtrack.
_SIMPLE: dict[Category, tuple[re.Pattern[str], ...]] = {
    Category.ANTHROPIC_KEY: (re.compile(r"sk-ant-[a-z]{2,10}\d{0,3}-[A-Za-z0-9_\-]{20,}+"),),
    Category.OPENAI_KEY: (
        re.compile(r"sk-(?!ant-)(?:(?:proj|svcacct|admin)-)?[A-Za-z0-9_\-]{20,}+"),
    ),
    Category.AWS_ACCESS_KEY: (
        re.compile(r"A(?:KIA|SIA|BIA|CCA|3T[A-Z0-9])[A-Z0-9]{16}+(?![A-Za-z0-9])"),
    ),
    Category.GITHUB_TOKEN: (
        re.compile(r"gh[pousr]_[A-Za-z0-9]{36,251}+(?![A-Za-z0-9_])"),
        re.compile(r"github_pat_[A-Za-z0-9_]{22,244}+"),
    ),
    Category.GITLAB_TOKEN: (re.compile(r"gl(?:pat|dt|rt|ptt|ft)-[A-Za-z0-9_\-]{20,}+"),),
    Category.SLACK_TOKEN: (
        re.compile(r"xox[abposr]-[A-Za-z0-9\-]{10,}+"),
        re.compile(
            r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/\-]{10,}+"
        ),
    ),
}
_BOUNDARY = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")

_PRIVATE_BEGIN = re.compile(r"-----BEGIN ([A-Z0-9]{1,16} ){0,3}PRIVATE KEY(?: BLOCK)?-----")
_PRIVATE_END = re.compile(r"-----END ([A-Z0-9]{1,16} ){0,3}PRIVATE KEY(?: BLOCK)?-----")

_JWT = re.compile(r"eyJ[A-Za-z0-9_\-]{5,}+\.[A-Za-z0-9_\-]{5,}+\.[A-Za-z0-9_\-]*+")

# A 40-character AWS secret access key, kept only near the word "aws" (case-insensitive).
_AWS_SECRET = re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
AWS_CONTEXT_CHARS = 200  # the key starts at most this far after "aws" (any case)

# `key=...`, `"api_key": "..."`, `TOKEN: ...`: a keyword, up to 20 more name characters, an
# assignment, and a value of 12-256 characters that ends at whitespace, a quote or punctuation.
# Matched against the lower-cased text (IGNORECASE is ~10x slower); the value's span is then
# read from the original text.
_KEYWORDS = r"(?:api[_\-]?key|apikey|access[_\-]?key|secret|token|passwd|password|pwd|key|auth)"
_ASSIGNMENT_TAIL = (
    r"[a-z0-9_\-]{0,20}+[\"']?[ \t]{0,5}+[:=][ \t]{0,5}+[\"']?"
    r"([^\s\"'`,;()\[\]{}<>$=:]{12,256}+=*+)(?=[\s\"'`,;)\]}]|$)"
)
_ASSIGNMENT = re.compile(_KEYWORDS + _ASSIGNMENT_TAIL)
_ASSIGNMENT_ANY_CASE = re.compile(_KEYWORDS + _ASSIGNMENT_TAIL, re.IGNORECASE)
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
# Bits per character. Random base64 of 12+ characters scores ~3.5-5.5, words and slugs < 3.2;
# hex has only 16 symbols (random 32-hex ~3.6-3.9), so hex values get the lower threshold
# (detect-secrets' defaults are 4.5 for base64 and 3.0 for hex, for whole lines of code).
ENTROPY_THRESHOLD = 3.5
HEX_ENTROPY_THRESHOLD = 3.0
_HEX = re.compile(r"[0-9a-fA-F]+")
_PLACEHOLDER = re.compile(
    r"(?i)(?:x{4,}|\*{3,}|\.{3}|your[_\-]|example|changeme|placeholder|redacted|dummy|<|%s|\{\{)"
)


def shannon_entropy(value: str) -> float:
    counts = Counter(value)
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def _mixed(value: str) -> bool:
    """Upper case, lower case and digits: keys are random, prose and slugs are not."""
    return (
        any(c.isupper() for c in value)
        and any(c.islower() for c in value)
        and any(c.isdigit() for c in value)
    )


def find_simple(p: Prepared, category: Category, free: Free) -> Iterator[Span]:
    text = p.text
    for pattern in _SIMPLE[category]:
        for m in pattern.finditer(text):
            if m.start() > 0 and text[m.start() - 1] in _BOUNDARY:
                continue  # inside a longer word (task-..., xsk-...)
            value = m[0]
            if category is Category.OPENAI_KEY and not _mixed(value):
                continue  # sk-learn-style slugs
            if category is Category.AWS_ACCESS_KEY and value.endswith("EXAMPLE"):
                continue  # AWS's documentation key (AKIAIOSFODNN7EXAMPLE)
            yield m.span()


def find_private_keys(p: Prepared, free: Free) -> Iterator[Span]:
    """A BEGIN ... PRIVATE KEY line through its END line; without an END line, to the end of
    the text (a truncated key is still a key)."""
    text = p.text
    if "PRIVATE KEY" not in text:
        return
    pos = 0
    while True:
        begin = _PRIVATE_BEGIN.search(text, pos)
        if begin is None:
            return
        end = _PRIVATE_END.search(text, begin.end())
        if end is None:
            yield begin.start(), len(text)
            return
        yield begin.start(), end.end()
        pos = end.end()


def _b64url_json(segment: str) -> object:
    padded = segment + "=" * (-len(segment) % 4)
    try:
        return orjson.loads(base64.urlsafe_b64decode(padded))
    except (binascii.Error, ValueError):
        return None


def find_jwts(p: Prepared, free: Free) -> Iterator[Span]:
    text = p.text
    for m in _JWT.finditer(text):
        if (m.start() > 0 and text[m.start() - 1] in _BOUNDARY) or not free(*m.span()):
            continue
        header = _b64url_json(m[0].split(".", 1)[0])
        if isinstance(header, dict) and "alg" in header:
            yield m.span()


def _aws_windows(p: Prepared) -> Iterator[tuple[int, int]]:
    """Merged ranges from each "aws" to where a key starting in its context could end."""
    lower = p.lower
    hay = lower if lower is not None else p.text.lower()  # positions only approximate then
    reach = AWS_CONTEXT_CHARS + 3 + 40
    window: tuple[int, int] | None = None
    at = hay.find("aws")
    while at >= 0:
        if window is not None and at <= window[1]:
            window = (window[0], at + reach)
        else:
            if window is not None:
                yield window
            window = (at, at + reach)
        at = hay.find("aws", at + 3)
    if window is not None:
        yield window


def find_aws_secrets(p: Prepared, free: Free) -> Iterator[Span]:
    text, n = p.text, len(p.text)
    for start, end in _aws_windows(p):
        for m in _AWS_SECRET.finditer(text, start, min(n, end + 1)):
            if (m.end() > end and m.end() < n) or not free(*m.span()):
                continue  # (or cut by the window: its look-ahead did not see the next character)
            value = m[0]
            if not _mixed(value) or shannon_entropy(value) < ENTROPY_THRESHOLD:
                continue
            if "EXAMPLE" not in value:  # AWS's documentation key
                yield m.span()


def find_generic(p: Prepared, free: Free) -> Iterator[Span]:
    """The value of a secret-looking assignment whose value is random enough to be a key."""
    text = p.text
    hay, pattern = (p.lower, _ASSIGNMENT) if p.lower is not None else (text, _ASSIGNMENT_ANY_CASE)
    for m in pattern.finditer(hay):
        start = m.start()
        # The keyword starts a name or follows a separator (`api_key`, `x-auth-token`), never
        # ends a word (`monkey`, `sessiontoken`).
        if (start > 0 and hay[start - 1] in _NAME_CHARS) or not free(*m.span(1)):
            continue
        value = text[m.start(1) : m.end(1)]
        threshold = HEX_ENTROPY_THRESHOLD if _HEX.fullmatch(value) else ENTROPY_THRESHOLD
        if _PLACEHOLDER.search(value) or shannon_entropy(value) < threshold:
            continue
        if not any(c.isdigit() for c in value) and not _mixed(value + "0"):
            continue  # one-case words (correcthorsebatterystaple) are passphrases, not keys
        yield m.span(1)
