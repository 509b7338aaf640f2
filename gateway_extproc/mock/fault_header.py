"""`x-mock-fault`: make the mock fail for some target models and answer for the others. Pure.

    x-mock-fault: <selector>=<fault>[,<selector>=<fault>...]

`<selector>` is the model the mock sees in the request it receives (the body's `model`, or the
model in the path: Gemini, Vertex, Bedrock, an Azure deployment), `key:<credential>` for the
requests that present that key (`authorization: Bearer`, `x-api-key`, `api-key` or
`x-goog-api-key`: one key of a gateway's key pool), or `*` for any model. The first
rule whose selector matches wins; no header, or no match, is a normal answer. A gateway that
retries a failed request to its next target rewrites the model, so `gpt-4o=500` fails the
first attempt and lets the retry to `gpt-4o-mini` through.

`<fault>` is one of

    500           a 500 in the provider's error format
    429           a 429 in the provider's error format, `retry-after: 1`
    429@S         the same with `retry-after: S` (seconds, 0-86400)
    reset         the connection is reset (TCP RST) before any response header
    stall@MS      nothing for MS milliseconds (0-3600000) before the response headers, then the
                  normal answer (a client or gateway timeout shorter than MS sees only the stall)
    cut@BYTES     the response headers, the first BYTES bytes of the body, then the connection
                  is dropped (no terminating chunk; a JSON body falls short of its Content-Length)

Kinds are case-insensitive, selectors are matched exactly (model ids are case-sensitive).
A malformed header is an error, like any bad `x-mock-*` header (the mock answers 400 naming
every problem): a typo silently ignored would turn a fallback test into a normal answer.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Sequence

FAULT_HEADER = "x-mock-fault"
ANY_MODEL = "*"
KEY_SELECTOR = "key:"  # `key:<credential>`: the requests presenting that key
DEFAULT_RETRY_AFTER_S = 1
MAX_RETRY_AFTER_S = 86_400
MAX_STALL_MS = 3_600_000
MAX_CUT_BYTES = 1 << 30
_SELECTOR = re.compile(r"[^\s,=]+")
_AMOUNT = re.compile(r"[0-9]+")


class Kind(enum.StrEnum):
    SERVER_ERROR = "500"
    RATE_LIMITED = "429"
    RESET = "reset"
    STALL = "stall"
    CUT = "cut"


# The bound on each kind's `@` amount; None: the kind takes no amount.
_BOUNDS: dict[Kind, int | None] = {
    Kind.SERVER_ERROR: None,
    Kind.RATE_LIMITED: MAX_RETRY_AFTER_S,
    Kind.RESET: None,
    Kind.STALL: MAX_STALL_MS,
    Kind.CUT: MAX_CUT_BYTES,
}
_REQUIRED = frozenset({Kind.STALL, Kind.CUT})  # 429 defaults to a 1 s retry-after


@dataclasses.dataclass(frozen=True, slots=True)
class Fault:
    """One failure. `amount`: retry-after seconds (429), milliseconds (stall), bytes (cut)."""

    kind: Kind
    amount: int = 0

    @property
    def label(self) -> str:
        """The fault as written in the header (`429@3`, `reset`): what the mock counts."""
        return self.kind.value if _BOUNDS[self.kind] is None else f"{self.kind}@{self.amount}"


@dataclasses.dataclass(frozen=True, slots=True)
class FaultRule:
    selector: str  # a model id, `key:<credential>`, or `*`
    fault: Fault


def parse_fault_header(value: str) -> tuple[tuple[FaultRule, ...], list[str]]:
    """The rules of an `x-mock-fault` value, and every problem found (rules with problems are
    left out; the caller refuses the request when there is any)."""
    rules: list[FaultRule] = []
    problems: list[str] = []
    for index, entry in enumerate(value.split(",")):
        where = f"{FAULT_HEADER}[{index}]"
        selector, equals, text = (part.strip() for part in entry.partition("="))
        if not equals or not _SELECTOR.fullmatch(selector):
            problems.append(f"{where}: {entry.strip()!r} must be <model or *>=<fault>")
            continue
        fault = _parse_fault(text)
        if isinstance(fault, str):
            problems.append(f"{where}: {fault}")
            continue
        rules.append(FaultRule(selector, fault))
    return tuple(rules), problems


def _parse_fault(text: str) -> Fault | str:
    """The fault `text` names, or why it names none."""
    name, at, amount = text.lower().partition("@")
    try:
        kind = Kind(name)
    except ValueError:
        return f"{text!r} must be 500, 429[@seconds], reset, stall@ms or cut@bytes"
    bound = _BOUNDS[kind]
    if not at:
        if kind in _REQUIRED:
            return f"{text!r} needs an amount: {kind}@N"
        return Fault(kind, DEFAULT_RETRY_AFTER_S if kind is Kind.RATE_LIMITED else 0)
    if bound is None:
        return f"{text!r}: {kind} takes no @ amount"
    if not _AMOUNT.fullmatch(amount) or int(amount) > bound:
        return f"{text!r}: the amount after @ must be an integer from 0 to {bound}"
    return Fault(kind, int(amount))


def select_fault(
    rules: Sequence[FaultRule], model: str | None, keys: Sequence[str] = ()
) -> Fault | None:
    """The fault of the first rule that matches `model` (`*` matches any, even none) or one of
    the `keys` the request presents (`key:<credential>`)."""
    for rule in rules:
        if rule.selector == ANY_MODEL or rule.selector == model:
            return rule.fault
        if rule.selector.startswith(KEY_SELECTOR) and rule.selector[len(KEY_SELECTOR) :] in keys:
            return rule.fault
    return None
