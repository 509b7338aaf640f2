"""Where the tests find their data: every path is relative to this checkout, resolved here once.

The recorded provider transcripts live beside the repository, in `../shared/fixtures/`, as in
every checkout the suite runs in. Their absence is a broken checkout, not a reason to skip:
`recorded_openai()` fails with a message that says what is missing and where it was looked for.

The documentation's examples are found by their markers, not by the page that holds them:
`doc_example("budgets-example")` is the fenced block between `<!-- budgets-example:start -->` and
`<!-- budgets-example:end -->` in README.md or any page of docs/, so a section can move between
pages and the test that loads its example still checks it.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST_FIXTURES = REPO / "tests" / "fixtures"
STREAMS = TEST_FIXTURES / "streams"  # hand-written SSE bodies
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"
RECORDED_OPENAI = SHARED_FIXTURES / "recorded-openai"  # real OpenAI transcripts (go-vcr v2)
DOCS = REPO / "docs"


class MissingTestData(AssertionError):
    """Data the suite needs is not where the checkout should have it."""


def recorded_openai() -> Path:
    """The recorded OpenAI transcripts' directory; raises MissingTestData if it holds none."""
    if not any(RECORDED_OPENAI.glob("*.yaml")):
        raise MissingTestData(
            f"the recorded OpenAI transcripts are missing: no *.yaml cassette in "
            f"{RECORDED_OPENAI} (the `shared/fixtures/recorded-openai` tree must be checked out "
            f"beside this repository, at {REPO.parent / 'shared'})"
        )
    return RECORDED_OPENAI


def doc_pages() -> list[Path]:
    """The documentation: the README and every page of docs/."""
    return [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def doc_text() -> str:
    """Every documentation page's text, whitespace collapsed (a sentence may wrap anywhere)."""
    return " ".join(" ".join(page.read_text().split()) for page in doc_pages())


def doc_example(name: str) -> str:
    """The fenced block marked `<!-- NAME:start -->` ... `<!-- NAME:end -->` in the documentation.

    Exactly one page must hold it once: a missing or repeated marker is a broken page, named here.
    """
    block = re.compile(
        rf"<!-- {re.escape(name)}:start -->\s*```[a-z]*\n(.*?)```\s*<!-- {re.escape(name)}:end -->",
        re.S,
    )
    found = [
        (page, match.group(1)) for page in doc_pages() for match in block.finditer(page.read_text())
    ]
    if len(found) != 1:
        where = ", ".join(str(page.relative_to(REPO)) for page, _ in found) or "no page"
        raise MissingTestData(
            f"the documentation example {name!r} must be marked exactly once "
            f"(<!-- {name}:start --> and :end around one fenced block); found in: {where}"
        )
    return found[0][1]
