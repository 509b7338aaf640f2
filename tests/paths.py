"""Where the tests find their data: every path is relative to this checkout, resolved here once.

The recorded provider transcripts live beside the repository, in `../shared/fixtures/`, as in
every checkout the suite runs in. Their absence is a broken checkout, not a reason to skip:
`recorded_openai()` fails with a message that says what is missing and where it was looked for.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST_FIXTURES = REPO / "tests" / "fixtures"
STREAMS = TEST_FIXTURES / "streams"  # hand-written SSE bodies
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"
RECORDED_OPENAI = SHARED_FIXTURES / "recorded-openai"  # real OpenAI transcripts (go-vcr v2)


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
