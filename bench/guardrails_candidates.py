"""The library candidates the guardrail detectors were measured against (docs/configuration.md,
"Guardrails").

Not part of `make bench` or the test suite: the candidates that were not kept are not project
dependencies. To reproduce: `.venv/bin/pip install detect-secrets` (phonenumbers and
python-stdnum are dependencies already), then `PYTHONPATH=. .venv/bin/python -m
bench.guardrails_candidates`. Prints precision/recall on the labelled corpus
(tests/fixtures/guardrails/corpus.yaml), exact (the matched text is the labelled one, which is
what redaction needs) and lenient (it overlaps it), and the time on the 1 MB texts of
bench/guardrails.py."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

import phonenumbers

from bench.guardrails import texts
from gateway_extproc.guardrails import Category, pii
from tests.guardrails_corpus import Case, Score, load_corpus
from tests.unit.test_guardrails_corpus import gateway

Detector = Callable[[str], Iterable[tuple[str, str]]]


def detect_secrets_detector() -> Detector:
    from detect_secrets.core.potential_secret import PotentialSecret  # noqa: F401
    from detect_secrets.plugins.aws import AWSKeyDetector
    from detect_secrets.plugins.github_token import GitHubTokenDetector
    from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
    from detect_secrets.plugins.high_entropy_strings import (
        Base64HighEntropyString,
        HexHighEntropyString,
    )
    from detect_secrets.plugins.jwt import JwtTokenDetector
    from detect_secrets.plugins.keyword import KeywordDetector
    from detect_secrets.plugins.openai import OpenAIDetector
    from detect_secrets.plugins.private_key import PrivateKeyDetector
    from detect_secrets.plugins.slack import SlackDetector

    plugins: list[tuple[str, object]] = [
        ("openai_key", OpenAIDetector()),
        ("aws", AWSKeyDetector()),
        ("github_token", GitHubTokenDetector()),
        ("gitlab_token", GitLabTokenDetector()),
        ("slack_token", SlackDetector()),
        ("private_key", PrivateKeyDetector()),
        ("jwt", JwtTokenDetector()),
        ("generic_secret", KeywordDetector()),
        ("generic_secret", Base64HighEntropyString()),
        ("generic_secret", HexHighEntropyString()),
    ]

    def detect(text: str) -> Iterator[tuple[str, str]]:
        seen: set[tuple[str, str]] = set()
        for number, line in enumerate(text.splitlines(), 1):
            for category, plugin in plugins:
                for secret in plugin.analyze_line(  # type: ignore[attr-defined]
                    filename="prompt.txt", line=line, line_number=number
                ):
                    value = secret.secret_value or ""
                    if category == "aws":
                        category = (
                            "aws_access_key" if value[:4] in ("AKIA", "ASIA") else "aws_secret_key"
                        )
                    if (category, value) not in seen:
                        seen.add((category, value))
                        yield category, value

    return detect


def phonenumbers_matcher(text: str) -> Iterator[tuple[str, str]]:
    for m in phonenumbers.PhoneNumberMatcher(text, pii.PHONE_REGION):
        yield "phone", m.raw_string


_UNVALIDATED = {
    "payment_card": pii.CARD,
    "iban": pii.IBAN,
    "us_ssn": pii.SSN,
    "phone": pii.PHONE,
}


def regex_only(text: str) -> Iterator[tuple[str, str]]:
    """The gateway's candidate patterns without the library validators (what they add)."""
    for category, pattern in _UNVALIDATED.items():
        for m in pattern.finditer(text):
            yield category, m[0]


def score(
    detector: Detector, cases: list[Case], categories: list[str], lenient: bool
) -> dict[str, Score]:
    scores = {c: Score() for c in categories}
    for case in cases:
        found: Counter[tuple[str, str]] = Counter()
        for category, value in detector(case.text):
            if lenient:  # count an overlapping finding as the labelled one
                for c, e in case.expect:
                    if c == category and (value in e or e in value):
                        value = e
            found[(category, value)] += 1
        for key in found | case.expect:
            if key[0] not in scores:
                continue
            hit = min(found[key], case.expect[key])
            scores[key[0]].tp += hit
            scores[key[0]].fp += found[key] - hit
            scores[key[0]].fn += case.expect[key] - hit
    return scores


def timed(detector: Detector) -> dict[str, float]:
    out = {}
    for name in ("clean prose", "dense with findings"):
        text = texts()[name]
        start = time.perf_counter()
        for _ in detector(text):
            pass
        out[name] = (time.perf_counter() - start) * 1000
    return out


def main() -> None:
    cases = load_corpus()
    secrets = sorted(c.value for c in Category if c not in pii_categories())
    candidates: list[tuple[str, Detector, list[str]]] = [
        ("gateway (shipped)", gateway, [c.value for c in Category]),
        ("detect-secrets 1.5 plugins", detect_secrets_detector(), secrets),
        ("phonenumbers PhoneNumberMatcher", phonenumbers_matcher, ["phone"]),
        ("gateway patterns without validators", regex_only, list(_UNVALIDATED)),
    ]
    for name, detector, categories in candidates:
        exact = score(detector, cases, categories, lenient=False)
        lenient = score(detector, cases, categories, lenient=True)
        print(f"\n{name}")
        print("| category | exact P | exact R | lenient P | lenient R |")
        print("|---|---|---|---|---|")
        for c in categories:
            e, le = exact[c], lenient[c]
            cells = (e.precision, e.recall, le.precision, le.recall)
            print(f"| {c} | " + " | ".join(f"{x:.2f}" for x in cells) + " |")
        t = timed(detector)
        print("1 MB: " + ", ".join(f"{k} {v:.0f} ms" for k, v in t.items()))


def pii_categories() -> frozenset[Category]:
    from gateway_extproc.guardrails.categories import PII

    return PII


if __name__ == "__main__":
    main()
