"""Scan one text for the categories asked for; redact findings. Pure.

The detectors read the text folded (`normalise.fold`: NFKC per character, invisible characters
dropped), and each finding is mapped back to the span of the text as written, which redaction
replaces; the finding's `value` is the folded match (what the allow-lists compare).

Findings of different detectors can overlap (a JWT after `token=` is also a generic secret; a
phone-like run of digits inside an IBAN): the more specific one wins, in `_ORDER`, and a
finding that overlaps one already kept is dropped, so the spans returned never overlap.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Iterable, Iterator

from gateway_extproc.guardrails import pii
from gateway_extproc.guardrails import secret_patterns as sp
from gateway_extproc.guardrails.categories import Category
from gateway_extproc.guardrails.deadline import NEVER, Deadline
from gateway_extproc.guardrails.normalise import fold
from gateway_extproc.guardrails.prepared import Free, Prepared

Span = tuple[int, int]


@dataclasses.dataclass(frozen=True, slots=True)
class Finding:
    start: int  # the span in the text as written
    end: int
    category: Category
    value: str = dataclasses.field(default="", repr=False)  # the match, folded


Detector = Callable[[Prepared, Free], Iterator[Span]]


def _simple(category: Category) -> Detector:
    return lambda p, free: sp.find_simple(p, category, free)


# Most specific first: a span kept for an earlier category is never re-reported by a later one.
_ORDER: tuple[tuple[Category, Detector], ...] = (
    (Category.PRIVATE_KEY, sp.find_private_keys),
    (Category.ANTHROPIC_KEY, _simple(Category.ANTHROPIC_KEY)),
    (Category.OPENAI_KEY, _simple(Category.OPENAI_KEY)),
    (Category.GITHUB_TOKEN, _simple(Category.GITHUB_TOKEN)),
    (Category.GITLAB_TOKEN, _simple(Category.GITLAB_TOKEN)),
    (Category.SLACK_TOKEN, _simple(Category.SLACK_TOKEN)),
    (Category.AWS_ACCESS_KEY, _simple(Category.AWS_ACCESS_KEY)),
    (Category.JWT, sp.find_jwts),
    (Category.AWS_SECRET_KEY, sp.find_aws_secrets),
    (Category.GENERIC_SECRET, sp.find_generic),
    (Category.EMAIL, pii.find_emails),
    (Category.IBAN, pii.find_ibans),
    (Category.PAYMENT_CARD, pii.find_cards),
    (Category.US_SSN, pii.find_ssns),
    (Category.PHONE, pii.find_phones),
)


def scan(text: str, categories: Iterable[Category], deadline: Deadline = NEVER) -> list[Finding]:
    """Every finding of the given categories in `text`, ordered by position, never overlapping.
    Raises ScanTimeout past `deadline` (checked per detector and per candidate)."""
    folded = fold(text)
    found = _scan(folded.text, frozenset(categories), deadline)
    if folded.text is text:
        return found
    # Back to the text as written. Two findings that touch one character folding to several
    # (`⑴` -> `(1)`) can both widen to it: the later one keeps what is left, if anything.
    out: list[Finding] = []
    for f in found:
        start, end = folded.original(f.start, f.end)
        if out and start < out[-1].end:
            start = out[-1].end
        if start < end:
            out.append(Finding(start, end, f.category, f.value))
    return out


def _scan(text: str, wanted: frozenset[Category], deadline: Deadline) -> list[Finding]:
    prepared = Prepared(text, deadline)
    starts: list[int] = []  # kept spans, sorted by start; they never overlap
    kept: list[Finding] = []

    def free(start: int, end: int) -> bool:
        deadline.check()  # detectors ask before they validate a candidate
        i = bisect.bisect_left(starts, start)
        if i < len(kept) and kept[i].start < end:
            return False  # overlaps the next kept span
        return not (i > 0 and kept[i - 1].end > start)  # or the previous one

    for category, find in _ORDER:
        if category not in wanted:
            continue
        deadline.check_now()
        for start, end in find(prepared, free):
            if not free(start, end):
                continue
            i = bisect.bisect_left(starts, start)
            starts.insert(i, start)
            kept.insert(i, Finding(start, end, category, text[start:end]))
    return kept


def redact(text: str, findings: Iterable[Finding]) -> str:
    """`text` with each finding replaced by `[REDACTED:<category>]` (findings must not overlap)."""
    out: list[str] = []
    pos = 0
    for f in sorted(findings, key=lambda f: f.start):
        out.append(text[pos : f.start])
        out.append(f"[REDACTED:{f.category.value}]")
        pos = f.end
    out.append(text[pos:])
    return "".join(out)
