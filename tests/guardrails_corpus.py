"""The labelled guardrail corpus (tests/fixtures/guardrails/corpus.yaml) and precision/recall
over it, for any detector: the gateway's (tests/unit/test_guardrails_corpus.py) and the library
candidates it was compared with (bench/guardrails_candidates.py)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable

import yaml

from tests.paths import TEST_FIXTURES

CORPUS = TEST_FIXTURES / "guardrails" / "corpus.yaml"
ALLOWED_EMAIL_DOMAINS = frozenset({"example.com"})

# text -> (category, matched text) pairs
Detector = Callable[[str], Iterable[tuple[str, str]]]


@dataclasses.dataclass(frozen=True)
class Case:
    text: str
    expect: Counter[tuple[str, str]]


def load_corpus() -> list[Case]:
    doc = yaml.safe_load(CORPUS.read_text())
    cases = []
    for item in doc["cases"]:
        expect: Counter[tuple[str, str]] = Counter()
        for category, values in (item.get("expect") or {}).items():
            expect.update((category, str(v)) for v in values)
        cases.append(Case(item["text"], expect))
    return cases


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
        found = Counter(detector(case.text))
        for category, value in found | case.expect:
            if category not in scores:
                continue
            hit = min(found[(category, value)], case.expect[(category, value)])
            scores[category].tp += hit
            scores[category].fp += found[(category, value)] - hit
            scores[category].fn += case.expect[(category, value)] - hit
    return scores


def table(scores: dict[str, Score], title: str = "category") -> str:
    lines = [f"| {title} | TP | FP | FN | precision | recall |", "|---|---|---|---|---|---|"]
    for name, s in scores.items():
        lines.append(f"| {name} | {s.tp} | {s.fp} | {s.fn} | {s.precision:.2f} | {s.recall:.2f} |")
    return "\n".join(lines)
