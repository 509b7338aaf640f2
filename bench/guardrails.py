"""Guardrail scan time on a 1 MB prompt: pure CPU, no processes (part of `make bench`; alone:
`python -m bench.guardrails`). The whole request-path call (`Guardrails.check`: find the texts,
fold them, scan for every category, redact into a copy of the body) on a chat request whose one
message is a million characters of clean prose, of text dense with findings, of non-ASCII
prose (with nothing to fold, and with full-width punctuation to fold), and of inputs built to
make a backtracking regex go quadratic or the folding map grow. Each figure is the median of
`RUNS` runs, in ms."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import orjson

from gateway_extproc.apis import Api
from gateway_extproc.budgets.model import Match
from gateway_extproc.catalog.models import Catalog
from gateway_extproc.guardrails import Category, GuardAction, GuardrailConfig, Guardrails
from gateway_extproc.identity.model import ANONYMOUS
from gateway_extproc.providers.inbound import parse_request

SIZE = 1_000_000
RUNS = 3

_PROSE = (
    "The quarterly report covers revenue, churn and the migration of the billing service to "
    "the new cluster; version 2.4.1 shipped on 2024-03-15 and latency fell by 12.5 percent. "
)
_DENSE = (
    "mail jane.roe@fabrikam.net call +1 415 555 2671 card 4111 1111 1111 1111 "
    "iban DE89 3704 0044 0532 0130 00 ssn 536-22-1234 key sk-u8jzPde0IgxLd6GncfBAepfJBd0Kh8oO"
    "OL8dKLzdocJ2isAj aws AKIA6I8J76B2LAJLJ4H9 password=Zx8!kQ2@pL9#mN4v\n"
)
# Non-ASCII prose: accents, dashes and emoji (nothing to fold); Chinese with full-width commas
# and colons (folded to ASCII ones, one character for one).
_ACCENTED = "Café crème, naïve façade — déjà vu 😀; Größe 12 cm, Ærø, señor Ñandú. "
_CJK = "数据中心的迁移已经完成\uff0c延迟下降了百分之十二\uff1a账单服务运行在新集群上。"
_ADVERSARIAL: dict[str, str] = {
    "adversarial: letters, no separators": "a",
    "adversarial: digits, no separators": "7",
    "adversarial: '1 ' repeated": "1 ",
    "adversarial: 'a@' repeated": "a@",
    "adversarial: BEGIN without END": "-----BEGIN RSA PRIVATE KEY-----\n",
    "adversarial: 'eyJ' segments": "eyJhbGciOi.",
    "adversarial: 'token=' repeated": "token=",
    "adversarial: zero-width space after each letter": "a\u200b",
    "adversarial: 'a' and a full-width at sign": "a\uff20",
    "adversarial: 'a' and a ligature (folds to two)": "a\ufb01",
}


def _fill(unit: str) -> str:
    return (unit * (SIZE // len(unit) + 1))[:SIZE]


def texts() -> dict[str, str]:
    return {
        "clean prose": _fill(_PROSE),
        "dense with findings": _fill(_DENSE),
        "accented prose and emoji (nothing to fold)": _fill(_ACCENTED),
        "Chinese prose, full-width punctuation": _fill(_CJK),
        **{name: _fill(unit) for name, unit in _ADVERSARIAL.items()},
    }


def _timed(fn: Callable[[], object]) -> float:
    samples = []
    for _ in range(RUNS):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def measure() -> dict[str, object]:
    """{name: {ms, findings}} for each 1 MB text, every category on redact."""
    rules = Guardrails(
        (GuardrailConfig("bench", Match(), dict.fromkeys(Category, GuardAction.REDACT)),)
    )
    identity = ANONYMOUS
    entry = Catalog.load([]).lookup("gpt-4o-mini")
    assert entry is not None
    out: dict[str, object] = {}
    for name, text in texts().items():
        raw = orjson.dumps(
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
        )
        request = parse_request(Api.OPENAI_CHAT, raw)
        result = rules.check(identity, entry, request)
        assert result is not None
        ms = _timed(lambda r=request: rules.check(identity, entry, r))  # type: ignore[misc]
        out[name] = {"ms": round(ms, 1), "findings": sum(result.counts.values())}
    return {"bytes": SIZE, "runs": RUNS, "texts": out}


def render(result: dict[str, object]) -> str:
    texts_ = result["texts"]
    assert isinstance(texts_, dict)
    lines = [f"Guardrails: scan + redact of a {result['bytes']:,}-character prompt (median ms)"]
    for name, r in texts_.items():
        lines.append(f"  {name:<50} {r['ms']:>8.1f} ms  {r['findings']:>7,} findings")
    return "\n".join(lines)


def main() -> int:
    print(render(measure()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
