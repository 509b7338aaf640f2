"""The labelled guardrail corpus (tests/fixtures/guardrails/corpus.yaml) and precision/recall
over it, for any detector: the gateway's (tests/unit/test_guardrails_corpus.py) and the library
candidates it was compared with (bench/guardrails_candidates.py); and the labelled request
bodies (tests/fixtures/guardrails/requests.yaml): where each API keeps text the model reads."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import yaml

from gateway_extproc.apis import Api
from tests.paths import TEST_FIXTURES

CORPUS = TEST_FIXTURES / "guardrails" / "corpus.yaml"
REQUESTS = TEST_FIXTURES / "guardrails" / "requests.yaml"
ALLOWED_EMAIL_DOMAINS = frozenset({"example.com"})

# text -> (category, matched text) pairs
Detector = Callable[[str], Iterable[tuple[str, str]]]


@dataclasses.dataclass(frozen=True)
class Case:
    text: str
    expect: Counter[tuple[str, str]]


@dataclasses.dataclass(frozen=True)
class RequestCase:
    name: str
    api: Api
    body: dict[str, Any]
    expect: Counter[tuple[str, str]]
    kept: tuple[str, ...]  # planted where the model reads no string: never found, never changed


def _expected(item: dict[str, Any]) -> Counter[tuple[str, str]]:
    expect: Counter[tuple[str, str]] = Counter()
    for category, values in (item.get("expect") or {}).items():
        expect.update((category, str(v)) for v in values)
    return expect


def load_corpus() -> list[Case]:
    doc = yaml.safe_load(CORPUS.read_text())
    return [Case(item["text"], _expected(item)) for item in doc["cases"]]


def load_requests() -> list[RequestCase]:
    doc = yaml.safe_load(REQUESTS.read_text())
    return [
        RequestCase(
            item["name"],
            Api[item["api"].upper()],
            item["body"],
            _expected(item),
            tuple(item.get("kept", ())),
        )
        for item in doc["cases"]
    ]


@dataclasses.dataclass
class Score:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0


def evaluate(detector: Detector, cases: list[Case], categories: Iterable[str]) -> dict[str, Score]:
    """A finding is a true positive when its category and exact text are expected."""
    scores = {c: Score() for c in categories}
    for case in cases:
        tally(scores, Counter(detector(case.text)), case.expect)
    return scores


def tally(
    scores: dict[str, Score],
    found: Counter[tuple[str, str]],
    expect: Counter[tuple[str, str]],
) -> None:
    """Add one case's findings to the per-category scores."""
    for category, value in found | expect:
        if category not in scores:
            continue
        hit = min(found[(category, value)], expect[(category, value)])
        scores[category].tp += hit
        scores[category].fp += found[(category, value)] - hit
        scores[category].fn += expect[(category, value)] - hit


def table(scores: dict[str, Score], title: str = "category") -> str:
    lines = [f"| {title} | TP | FP | FN | precision | recall |", "|---|---|---|---|---|---|"]
    for name, s in scores.items():
        lines.append(f"| {name} | {s.tp} | {s.fp} | {s.fn} | {s.precision:.2f} | {s.recall:.2f} |")
    return "\n".join(lines)
