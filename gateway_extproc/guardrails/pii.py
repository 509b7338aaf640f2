"""PII detectors: e-mail addresses, phone numbers, payment cards, IBANs, US SSNs. Pure.

Each detector is a linear-time candidate pattern (bounded quantifiers, a token-boundary check,
no nested ambiguous repetition) followed by a validator. Phone, card and SSN patterns run only
inside the digit runs `Prepared` finds once; e-mail addresses are found from each "@".
The validators come from maintained libraries where they do the job (README, "Guardrails"):
`phonenumbers` (Google's libphonenumber metadata) decides whether a candidate is a real phone
number, `python-stdnum` checks cards (Luhn), IBANs (country lengths and mod-97) and SSNs
(invalid areas, groups, serials and the numbers the SSA retired). The candidate patterns are
this project's: phonenumbers' own matcher took ~760 ms per MB of prose, the whole scan ~50 ms.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import luhn
from stdnum.us import ssn as stdnum_ssn

from gateway_extproc.guardrails.prepared import Free, Prepared

Span = tuple[int, int]

# Found from each "@" (a literal search): the domain by an anchored match after it, the local
# part (1-64 characters, starting with a letter or digit) by walking back from it.
_LOCAL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")
_DOMAIN = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.){1,8}[A-Za-z]{2,24}(?![A-Za-z0-9\-])"
)

# Applied inside the digit runs (prepared.py). A phone number as people write it: an optional
# +CC, then 2-6 groups of digits separated by one space, dot or dash, an area code in
# parentheses allowed; validation is phonenumbers'.
PHONE = re.compile(
    r"(?<![\w+.\-/])"
    r"(?:\+\d{1,3}[ .\-]?)?"
    r"(?:\(\d{1,5}\)[ .\-]?)?"
    r"\d{1,6}(?:[ .\-]\d{1,6}){1,5}"
    r"(?![\w]|[.\-/]\d)"
)
PHONE_COMPACT = re.compile(r"(?<![\w+.\-/])\+\d{8,15}(?![\w]|[.\-/]\d)")  # +14155552671

CARD = re.compile(r"(?<![\d\-])\d(?:[ \-]?\d){12,18}(?![\d])")
# Issuer prefixes (IIN ranges) of the networks in use; a Luhn-valid number outside them is far
# more likely an order or tracking number than a card.
_CARD_PREFIX = re.compile(
    r"4|5[1-5]|2(?:22[1-9]|2[3-9]\d|[3-6]\d\d|7[01]\d|720)|3[47]|3(?:0[0-5]|[68])|6(?:011|5|4[4-9])"
    r"|35(?:2[89]|[3-8]\d)|62"
)

# The look-behind follows the first letter, so the engine skips to capitals quickly.
IBAN = re.compile(
    r"[A-Z](?<![A-Za-z0-9][A-Z])[A-Z]\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])"
)

SSN = re.compile(r"(?<![\d\-])\d{3}([\- ])\d{2}\1\d{4}(?![\d\-])")

PHONE_REGION = "US"  # how numbers written without +CC are read


def find_emails(p: Prepared, free: Free) -> Iterator[Span]:
    text = p.text
    at = text.find("@")
    while at > 0:
        p.deadline.check()  # `a@a@a@...` is millions of candidates that never reach free()
        domain = _DOMAIN.match(text, at + 1)  # anchored, cheap: checked first
        if domain is not None:
            start = at
            while start > 0 and at - start <= 64 and text[start - 1] in _LOCAL_CHARS:
                start -= 1
            local_ok = 0 < at - start <= 64 and text[start].isalnum()
            bounded = start == 0 or text[start - 1] not in _LOCAL_CHARS  # else too long
            if local_ok and bounded and free(start, domain.end()):
                yield start, domain.end()
        at = text.find("@", at + 1)


def domain_allowed(domain: str, allowed: frozenset[str]) -> bool:
    """The domain or any parent of it is allowed (`example.com` allows `mail.example.com`)."""
    parts = domain.split(".")
    return any(".".join(parts[i:]) in allowed for i in range(len(parts) - 1))


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def phone_valid(candidate: str) -> bool:
    digits = _digits(candidate)
    if not 7 <= len(digits) <= 15:
        return False
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}|\d{1,3}(?:\.\d{1,3}){3}", candidate):
        return False  # an ISO date or a dotted quad, whatever the digits say
    try:
        number = phonenumbers.parse(candidate, None if candidate[0] == "+" else PHONE_REGION)
    except phonenumbers.NumberParseException:
        return False
    return bool(phonenumbers.is_valid_number(number))


def _in_runs(
    p: Prepared, pattern: re.Pattern[str], free: Free, shortest: int
) -> Iterator[re.Match[str]]:
    """Matches of `pattern` inside the digit runs of at least `shortest` characters (its
    look-arounds see the text around them) that no earlier finding covers."""
    text, n = p.text, len(p.text)
    for start, end in p.digit_runs:
        if end - start < shortest:
            continue
        for m in pattern.finditer(text, start, min(n, end + 2)):
            if m.end() <= end and free(m.start(), m.end()):
                yield m


def find_phones(p: Prepared, free: Free) -> Iterator[Span]:
    for pattern in (PHONE, PHONE_COMPACT):
        for m in _in_runs(p, pattern, free, 7):
            if phone_valid(m[0]):
                yield m.span()


def card_valid(candidate: str) -> bool:
    digits = _digits(candidate)
    seps = {c for c in candidate if not c.isdigit()}
    if len(seps) > 1 or not 13 <= len(digits) <= 19 or len(set(digits)) == 1:
        return False
    return _CARD_PREFIX.match(digits) is not None and luhn.is_valid(digits)


def find_cards(p: Prepared, free: Free) -> Iterator[Span]:
    for m in _in_runs(p, CARD, free, 13):
        if card_valid(m[0]):
            yield m.span()


def find_ibans(p: Prepared, free: Free) -> Iterator[Span]:
    for m in IBAN.finditer(p.text):
        if free(m.start(), m.end()) and stdnum_iban.is_valid(m[0]):
            yield m.span()


def find_ssns(p: Prepared, free: Free) -> Iterator[Span]:
    for m in _in_runs(p, SSN, free, 11):
        if stdnum_ssn.is_valid(m[0].replace(" ", "-")):
            yield m.span()
