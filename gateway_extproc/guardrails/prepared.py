"""One text being scanned, with what several detectors share computed once, lazily. Pure."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from gateway_extproc.guardrails.deadline import NEVER, Deadline

# Whether a candidate span overlaps no finding kept so far: detectors ask before validating.
Free = Callable[[int, int], bool]

# Runs of digits with single separators between them ("+1 (415) 555-2671", "4111 1111 1111
# 1111", "2024-03-15"): every phone number, card number and SSN lies inside one. Finding the
# runs once and applying each detector inside them is ~5x faster than one pass per detector.
# The possessive `*+` never backtracks: linear.
_DIGIT_RUN = re.compile(r"[+(]?\d(?:[()]?[ .\-/]?[()]?\d)*+")


class Prepared:
    __slots__ = ("__dict__", "deadline", "text")

    def __init__(self, text: str, deadline: Deadline = NEVER) -> None:
        self.text = text
        self.deadline = deadline  # for detector loops that may run long between candidates

    @functools.cached_property
    def lower(self) -> str | None:
        """The text lower-cased, or None when that changes its length (some non-ASCII letters
        do): a span found in it is then not a span of the text."""
        lower = self.text.lower()
        return lower if len(lower) == len(self.text) else None

    @functools.cached_property
    def digit_runs(self) -> list[tuple[int, int]]:
        return [m.span() for m in _DIGIT_RUN.finditer(self.text)]
