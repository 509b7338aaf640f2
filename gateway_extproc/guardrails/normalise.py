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
else one `str.translate` (~50-100 ms per million characters here). The map back is built only
when a finding needs it: one regex pass, and Python work per run of characters folding to none
or several. The tables (~9,000 code points, from the running Python's `unicodedata`) are built
once per process: `prepare()` builds them when the guardrails configuration is read, so no
request waits for them.
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


# Any character outside the Basic Multilingual Plane (emoji, mathematical letters, tags). A class
# listing just the astral characters that fold is a list of ranges the regex engine walks one by
# one for every character of the text (~150 ms per million characters here); one range is cheap,
# and whether an astral character moves offsets is looked up per character.
_ASTRAL = (0x10000, 0x10FFFF)


@dataclasses.dataclass(frozen=True, slots=True)
class _Tables:
    fold: dict[int, str]  # code point -> what it folds to, for every character that changes
    anything: re.Pattern[str]  # a BMP character that folds, or any astral character
    # a run of BMP characters that fold to none or several characters each, and of astral
    # characters: characters folding to one leave offsets where they were
    resized: re.Pattern[str]


def _char_class(code_points: list[int], extra: tuple[int, int]) -> str:
    """A regex class of `code_points` and the range `extra` (which sorts after them)."""
    ranges: list[list[int]] = []
    for cp in sorted(code_points):
        if ranges and cp == ranges[-1][1] + 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    ranges.append(list(extra))
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
    bmp = [cp for cp in fold if cp <= 0xFFFF]
    resizing = [cp for cp in bmp if len(fold[cp]) != 1]
    return _Tables(
        fold,
        re.compile(_char_class(bmp, _ASTRAL)),
        re.compile(_char_class(resizing, _ASTRAL) + "+"),
    )


def prepare() -> None:
    """Build the tables now (~15-20 ms of CPU here), not on the first request that needs them."""
    _tables()


class Folded:
    """`text` folded from `written`, with the map back built on first use (a text without
    findings never needs it). The map: folded `starts[i]:ends[i]` came from written
    `origin_starts[i]:origin_ends[i]`, a run of characters folding to none or several; between
    runs, offsets differ by the same amount on both sides."""

    __slots__ = ("_runs", "_start", "text", "written")

    def __init__(self, text: str, written: str | None = None, start: int = 0) -> None:
        self.text = text
        self.written = text if written is None else written
        self._start = start  # no character before this one folds
        self._runs: tuple[list[int], list[int], list[int], list[int]] | None = None

    def original(self, start: int, end: int) -> tuple[int, int]:
        """The span of the written text that folds to `text[start:end]` (widened to whole runs
        of characters folding to several when it starts or ends inside one)."""
        if self.written is self.text:
            return start, end
        if self._runs is None:
            self._runs = _runs(self.written, self._start)
        starts, ends, origin_starts, origin_ends = self._runs
        if not starts:
            return start, end
        i = bisect.bisect_right(starts, start) - 1
        if i >= 0:
            start = origin_starts[i] if start < ends[i] else origin_ends[i] + start - ends[i]
        j = bisect.bisect_left(starts, end) - 1  # the last run that starts before `end`
        if j >= 0:
            end = origin_ends[j] + max(0, end - ends[j])
        return start, max(start, end)  # an empty span at dropped characters stays empty


def fold(text: str) -> Folded:
    """`text` as the detectors read it (`Folded.text` is `text` itself when nothing folds)."""
    if text.isascii():
        return Folded(text)
    tables = _tables()
    first = tables.anything.search(text)
    if first is None:
        return Folded(text)
    folded = text.translate(tables.fold)  # one C-level pass
    if folded == text:  # only astral characters that do not fold (emoji)
        return Folded(text)
    return Folded(folded, text, first.start())


def _runs(text: str, begin: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """Where `text`'s characters folding to none or several are, and what they fold to."""
    tables = _tables()
    table = tables.fold
    starts: list[int] = []
    ends: list[int] = []
    origin_starts: list[int] = []
    origin_ends: list[int] = []
    shift = 0  # folded offset minus written offset, after the runs seen so far
    for run in tables.resized.finditer(text, begin):
        chars = run[0]
        start = run.start()
        if max(chars) <= "\uffff":  # BMP characters that fold to none or several: one run
            length = len(chars.translate(table))
            starts.append(start + shift)
            ends.append(start + shift + length)
            origin_starts.append(start)
            origin_ends.append(start + len(chars))
            shift += length - len(chars)
            continue
        for i, char in enumerate(chars, start):  # astral among them: most (emoji) do not fold
            value = table.get(ord(char))
            if value is None or len(value) == 1:
                continue
            if origin_ends and origin_ends[-1] == i:  # right after the last run: extend it
                origin_ends[-1] = i + 1
                ends[-1] += len(value)
            else:
                starts.append(i + shift)
                ends.append(i + shift + len(value))
                origin_starts.append(i)
                origin_ends.append(i + 1)
            shift += len(value) - 1
    return starts, ends, origin_starts, origin_ends
