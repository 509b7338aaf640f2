"""Precision and recall of every guardrail category on the labelled corpus
(tests/fixtures/guardrails/corpus.yaml: texts, obfuscated ones among them) and the labelled
request bodies (tests/fixtures/guardrails/requests.yaml: every string the model reads in each),
against the thresholds docs/configuration.md documents.

Run with `-s` to see the table. The corpus was written while the detectors were tuned, so it is
a regression floor for the near-misses it names, not an independent benchmark."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from gateway_extproc.budgets.model import Match
from gateway_extproc.guardrails import Category, GuardAction, GuardrailConfig
from gateway_extproc.guardrails.engine import finding_action
from gateway_extproc.guardrails.scan import scan
from gateway_extproc.guardrails.texts import text_slots
from tests.guardrails_corpus import (
    ALLOWED_EMAIL_DOMAINS,
    RequestCase,
    evaluate,
    load_corpus,
    load_requests,
    table,
    tally,
)

# docs/configuration.md "Guardrails": every category must keep at least these on the corpus.
MIN_PRECISION = 0.95
MIN_RECALL = 0.90

RULE = GuardrailConfig(
    "corpus", Match(), dict.fromkeys(Category, GuardAction.MONITOR), ALLOWED_EMAIL_DOMAINS
)


def gateway(text: str) -> Iterator[tuple[str, str]]:
    for f in scan(text, set(Category)):
        if finding_action(f, text, [RULE]) is not None:
            yield f.category.value, text[f.start : f.end]


def in_request(case: RequestCase) -> Counter[tuple[str, str]]:
    """The gateway's findings in every string of the body the model reads."""
    found: Counter[tuple[str, str]] = Counter()
    for container, key in text_slots(case.api, case.body):
        found.update(gateway(container[key]))
    return found


def test_every_category_has_positives_and_near_misses() -> None:
    cases = load_corpus()
    for category in Category:
        positives = sum(
            n for (c, _), n in (x for case in cases for x in case.expect.items()) if c == category
        )
        assert positives >= 1, f"no positive for {category}"
    assert sum(1 for case in cases if not case.expect) >= 40  # near-misses


def test_precision_and_recall_per_category() -> None:
    scores = evaluate(gateway, load_corpus(), [c.value for c in Category])
    for case in load_requests():
        tally(scores, in_request(case), case.expect)
    print("\n" + table(scores))
    for category, s in scores.items():
        assert s.precision >= MIN_PRECISION, (category, s)
        assert s.recall >= MIN_RECALL, (category, s)


def test_each_near_miss_is_quiet_and_each_positive_exact() -> None:
    """Per case, so a regression names the text it broke on."""
    for case in load_corpus():
        found = sorted(gateway(case.text))
        assert found == sorted(case.expect.elements()), case.text


def test_each_request_finds_what_the_model_reads_and_nothing_else() -> None:
    """Per request, so a regression names the shape it broke on."""
    for case in load_requests():
        assert in_request(case) == case.expect, case.name
