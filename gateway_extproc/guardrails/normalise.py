"""The text the detectors read: NFKC, without invisible characters, with a map back to the text
the client wrote. Pure.

Detectors look for ASCII shapes (`sk-`, `@`, runs of digits). A key with a zero-width space
inside (`sk-\\u200bproj-…`), an address with a full-width at sign (U+FF20), a card number in
full-width digits read the same to a person and to the model, not to a pattern. So detection runs
on the text folded one character at a time: a compatibility character to its NFKC form (U+FF20
→ `@`, U+FF14 → `4`, `ﬁ` → `fi`, no-break space → space), and a format character (Unicode
category Cf: zero-width space and joiners, soft hyphen, word joiner, byte-order mark,
bidirectional controls, tags) or another default-ignorable one (variation selectors, Hangul
fillers, the combining grapheme joiner) dropped. A finding's span is mapped back, and redaction
replaces the original span.

Per character, not NFKC of the whole text: composing across characters only builds accented
letters, which no detector looks for, and per character every original character maps to its
own piece of the folded text. The map back is exact except inside a character that folds to
several (`⑴` → `(1)`) or a run of them: a span starting or ending inside one is widened to it.

Cost: ASCII text, nothing (`str.isascii`); other text with nothing to fold, one regex search;
else one translate per run of folded characters. The tables (~5,000 characters, read from the
running Python's `unicodedata`) are built once per process: `prepare()` builds them when the
guardrails configuration is read, so no request waits for it.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import re
import unicodedata

# Format (Cf) and other default-ignorable code points (Unicode's DerivedCoreProperties.txt,
# reserved ones included): invisible, so dropped. tests/unit/test_guardrails_normalise.py checks
# that every Cf character of the running Python's Unicode is here.
DROPPED = (
    (0x00AD, 0x00AD),  # soft hyphen
    (0x034F, 0x034F),  # combining grapheme joiner
    (0x0600, 0x0605),  # Arabic number signs
    (0x061C, 0x061C),  # Arabic letter mark
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x115F, 0x1160),  # Hangul fillers
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),  # Mongolian variation selectors and vowel separator
    (0x200B, 0x200F),  # zero-width space, non-joiner, joiner; LRM, RLM
    (0x202A, 0x202E),  # bidirectional embeddings and overrides
    (0x2060, 0x206F),  # word joiner, invisible operators, bidirectional isolates
    (0x3164, 0x3164),  # Hangul filler
    (0xFE00, 0xFE0F),  # variation selectors
    (0xFEFF, 0xFEFF),  # zero-width no-break space (byte-order mark)
    (0xFFA0, 0xFFA0),  # half-width Hangul filler
    (0xFFF0, 0xFFFB),  # interlinear annotation
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),  # Egyptian hieroglyph format controls
    (0x1BCA0, 0x1BCA3),  # shorthand format controls
    (0x1D173, 0x1D17A),  # musical symbol beams and phrases
    (0xE0000, 0xE0FFF),  # tags, variation selectors supplement
)
# Where NFKC changes a character: the Basic and Supplementary Multilingual Planes and the CJK
# compatibility ideographs (the unit test checks every other code point).
_FOLDABLE = ((0x80, 0xD800), (0xE000, 0x20000), (0x2F800, 0x2FA20))


@dataclasses.dataclass(frozen=True, slots=True)
class _Tables:
    fold: dict[int, str]  # code point -> what it folds to, for every character that changes
    anything: re.Pattern[str]  # one character that changes
    # a run of characters that fold to one character each (group 1), or to none or several
    # (group 2): only the second kind moves offsets
    runs: re.Pattern[str]


def _char_class(code_points: list[int]) -> str:
    ranges: list[list[int]] = []
    for cp in sorted(code_points):
        if ranges and cp == ranges[-1][1] + 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    parts = (f"\\U{lo:08x}" if lo == hi else f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in ranges)
    return "[" + "".join(parts) + "]"


@functools.cache
def _tables() -> _Tables:
    is_normalized, normalize = unicodedata.is_normalized, unicodedata.normalize
    fold: dict[int, str] = {}
    for lo, hi in _FOLDABLE:
        for ch in map(chr, range(lo, hi)):
            if not is_normalized("NFKC", ch):
                fold[ord(ch)] = normalize("NFKC", ch)
    dropped = {cp: "" for lo, hi in DROPPED for cp in range(lo, hi + 1)}
    fold = {cp: value.translate(dropped) for cp, value in fold.items()} | dropped
    one = [cp for cp, value in fold.items() if len(value) == 1]
    other = [cp for cp, value in fold.items() if len(value) != 1]
    return _Tables(
        fold,
        re.compile(_char_class(list(fold))),
        re.compile(f"({_char_class(one)}+)|({_char_class(other)}+)"),
    )


def prepare() -> None:
    """Build the tables now (~20-50 ms), not on the first request that needs them."""
    _tables()


@dataclasses.dataclass(frozen=True, slots=True)
class Folded:
    """`text` folded, and where its runs of resizing characters came from: folded
    `starts[i]:ends[i]` is original `origin_starts[i]:origin_ends[i]`; between runs, offsets
    shift by the same amount on both sides."""

    text: str
    starts: tuple[int, ...] = ()
    ends: tuple[int, ...] = ()
    origin_starts: tuple[int, ...] = ()
    origin_ends: tuple[int, ...] = ()

    def original(self, start: int, end: int) -> tuple[int, int]:
        """The span of the original text that folds to `text[start:end]` (widened to whole runs
        of characters folding to several when it starts or ends inside one)."""
        if not self.starts:
            return start, end
        i = bisect.bisect_right(self.starts, start) - 1
        if i >= 0:
            start = (
                self.origin_starts[i]
                if start < self.ends[i]
                else self.origin_ends[i] + start - self.ends[i]
            )
        j = bisect.bisect_left(self.starts, end) - 1  # the last run that starts before `end`
        if j >= 0:
            end = self.origin_ends[j] + max(0, end - self.ends[j])
        return start, max(start, end)  # an empty span at dropped characters stays empty


def fold(text: str) -> Folded:
    """`text` as the detectors read it (the same object when nothing folds)."""
    if text.isascii():
        return Folded(text)
    tables = _tables()
    first = tables.anything.search(text)
    if first is None:
        return Folded(text)
    table = tables.fold
    pieces: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    origin_starts: list[int] = []
    origin_ends: list[int] = []
    pos = length = 0
    for run in tables.runs.finditer(text, first.start()):
        start, end = run.span()
        pieces.append(text[pos:start])
        length += start - pos
        folded = run[0].translate(table)
        pieces.append(folded)
        if run.lastindex == 2:
            starts.append(length)
            ends.append(length + len(folded))
            origin_starts.append(start)
            origin_ends.append(end)
        length += len(folded)
        pos = end
    pieces.append(text[pos:])
    return Folded(
        "".join(pieces), tuple(starts), tuple(ends), tuple(origin_starts), tuple(origin_ends)
    )
