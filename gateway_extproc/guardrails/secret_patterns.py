"""Secret detectors: provider and cloud keys, VCS and chat tokens, private keys, JWTs, generic
high-entropy assignments. Pure.

The patterns are this project's (README, "Guardrails": detect-secrets was measured and not
kept). Every pattern is linear-time: a look-behind so a match starts only at a token boundary,
character classes that exclude the separator that ends them, no nested ambiguous repetition.
Private key blocks are found by searching for the END line with `str.find`, not by a lazy
`.*?` (which is quadratic when BEGIN lines have no END).
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

Span = tuple[int, int]

_SIMPLE: tuple[tuple[Category, re.Pattern[str]], ...] = (
    (
        Category.ANTHROPIC_KEY,
        re.compile(r"(?<![\w\-])sk-ant-[a-z]{2,10}\d{0,3}-[A-Za-z0-9_\-]{20,}"),
    ),
    (
        Category.OPENAI_KEY,
        re.compile(r"(?<![\w\-])sk-(?!ant-)(?:(?:proj|svcacct|admin)-)?[A-Za-z0-9_\-]{20,}"),
    ),
    (
        Category.AWS_ACCESS_KEY,
        re.compile(
            r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}(?![A-Za-z0-9])"
        ),
    ),
    (
        Category.GITHUB_TOKEN,
        re.compile(
            r"(?<![\w])(?:(?:ghp|gho|ghs|ghu|ghr)_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,244})"
            r"(?![A-Za-z0-9_])"
        ),
    ),
    (
        Category.GITLAB_TOKEN,
        re.compile(r"(?<![\w\-])(?:glpat|gldt|glrt|glptt|glft)-[A-Za-z0-9_\-]{20,}"),
    ),
    (
        Category.SLACK_TOKEN,
        re.compile(
            r"(?<![\w\-])xox[abposr]-[A-Za-z0-9\-]{10,}"
            r"|https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/\-]{10,}"
        ),
    ),
)

_PRIVATE_BEGIN = re.compile(r"-----BEGIN ([A-Z0-9]{1,16} ){0,3}PRIVATE KEY(?: BLOCK)?-----")
_PRIVATE_END = re.compile(r"-----END ([A-Z0-9]{1,16} ){0,3}PRIVATE KEY(?: BLOCK)?-----")

_JWT = re.compile(r"(?<![\w\-.])eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*")

# A 40-character AWS secret access key, kept only near the word "aws" (case-insensitive).
_AWS_SECRET = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
_AWS_CONTEXT = re.compile(r"aws", re.IGNORECASE)
AWS_CONTEXT_CHARS = 200

# `key=...`, `"api_key": "..."`, `TOKEN: ...`: a keyword, up to 20 more name characters, an
# assignment, and a value of 12-256 characters that ends at whitespace, a quote or punctuation.
_ASSIGNMENT = re.compile(
    r"(?i)(?<![A-Za-z0-9])(?:[a-z0-9]{1,20}[_\-.])?"
    r"(?:api[_\-]?key|apikey|access[_\-]?key|secret|token|passwd|password|pwd|key|auth)"
    r"[a-z0-9_\-]{0,20}[\"']?[ \t]{0,5}[:=][ \t]{0,5}[\"']?"
    r"([^\s\"'`,;()\[\]{}<>$]{12,256})(?=[\s\"'`,;)\]}]|$)"
)
# bits per character; random base64 of 12+ characters is ~3.5-5.5, words and slugs < 3.2
ENTROPY_THRESHOLD = 3.5
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


def find_simple(text: str, category: Category) -> Iterator[Span]:
    for cat, pattern in _SIMPLE:
        if cat is not category:
            continue
        for m in pattern.finditer(text):
            value = m[0]
            if cat is Category.OPENAI_KEY and not _mixed(value):
                continue  # sk-learn-style slugs
            if cat is Category.AWS_ACCESS_KEY and value.endswith("EXAMPLE"):
                continue  # AWS's documentation key (AKIAIOSFODNN7EXAMPLE)
            yield m.span()


def find_private_keys(text: str) -> Iterator[Span]:
    """A BEGIN ... PRIVATE KEY line through its END line; without an END line, to the end of
    the text (a truncated key is still a key)."""
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


def find_jwts(text: str) -> Iterator[Span]:
    for m in _JWT.finditer(text):
        header = _b64url_json(m[0].split(".", 1)[0])
        if isinstance(header, dict) and "alg" in header:
            yield m.span()


def find_aws_secrets(text: str) -> Iterator[Span]:
    for m in _AWS_SECRET.finditer(text):
        value = m[0]
        if not _mixed(value) or shannon_entropy(value) < ENTROPY_THRESHOLD or "EXAMPLE" in value:
            continue
        window = text[max(0, m.start() - AWS_CONTEXT_CHARS) : m.start()]
        if _AWS_CONTEXT.search(window):
            yield m.span()


def find_generic(text: str) -> Iterator[Span]:
    """The value of a secret-looking assignment whose value is random enough to be a key."""
    for m in _ASSIGNMENT.finditer(text):
        value = m[1]
        if _PLACEHOLDER.search(value) or shannon_entropy(value) < ENTROPY_THRESHOLD:
            continue
        if not any(c.isdigit() for c in value) and not _mixed(value + "0"):
            continue  # one-case words (correcthorsebatterystaple) are passphrases, not keys
        yield m.span(1)
