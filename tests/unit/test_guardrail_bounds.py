"""The guardrails' scan within a time bound: it stops at its deadline whatever the prompt, and
what that means for the request depends on the guardrails that apply (refused 413 when one
blocks or redacts, forwarded when they only monitor), through the processor and its audit."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway_extproc.config.gateway import GatewayConfig, load_document, merge, parse_config
from gateway_extproc.errors import ConfigError
from gateway_extproc.guardrails import Category, GuardAction, Guardrails
from gateway_extproc.guardrails.deadline import Deadline, ScanTimeout
from gateway_extproc.guardrails.scan import scan
from gateway_extproc.identity.model import ANONYMOUS
from tests.unit.test_guardrails import SECRET_TEXT, chat, entry, rule
from tests.unit.test_processor import (
    CHAT_PATH,
    Gateway,
    _gateway,
    forward,
    handle,
    req_body,
    req_headers,
    resp_body,
    resp_headers,
)

DENSE = (
    "mail jane.roe@fabrikam.net call +1 415 555 2671 card 4111 1111 1111 1111 "
    "iban DE89 3704 0044 0532 0130 00 ssn 536-22-1234 key sk-u8jzPde0IgxLd6GncfBAepfJBd0Kh8oO"
    "OL8dKLzdocJ2isAj aws AKIA6I8J76B2LAJLJ4H9 password=Zx8!kQ2@pL9#mN4v\n"
)


class Ticks:
    """A clock that moves one second each time it is read: the deadline passes at its first
    check after `grace` reads."""

    def __init__(self, grace: int = 0) -> None:
        self.now = 0.0
        self.grace = grace

    def __call__(self) -> float:
        if self.grace > 0:
            self.grace -= 1
            return self.now
        self.now += 1.0
        return self.now


def fill(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


# (rule actions, refused when the scan is cut short)
OUTCOMES = [
    ({"email": "block"}, True),
    ({"email": "redact"}, True),
    ({"email": "monitor", "openai_key": "block"}, True),
    ({"email": "monitor", "openai_key": "monitor"}, False),
]


@pytest.mark.parametrize(("actions", "refused"), OUTCOMES)
def test_a_scan_cut_short_refuses_unless_every_guardrail_only_monitors(
    actions: dict[str, str], refused: bool
) -> None:
    rules = Guardrails((rule("g", **actions),))
    result = rules.check(ANONYMOUS, entry(), chat(SECRET_TEXT), Deadline(Ticks(), 0.5))
    assert result is not None and result.incomplete
    assert result.refuse_unscanned is refused
    assert result.body is None  # nothing is redacted from a partial scan
    assert not result.blocked  # nothing was found before the deadline


def test_findings_before_the_deadline_still_count() -> None:
    rules = Guardrails((rule("g", email="block", openai_key="block"),))
    one_slot = Ticks(grace=10**9)
    rules.check(ANONYMOUS, entry(), chat(SECRET_TEXT), Deadline(one_slot, 0.5))
    reads = 10**9 - one_slot.grace  # what scanning one message takes, the deadline's own read in
    # Two messages: the deadline passes as the second one's scan starts.
    two = chat(SECRET_TEXT, SECRET_TEXT)
    result = rules.check(ANONYMOUS, entry(), two, Deadline(Ticks(grace=reads), 0.5))
    assert result is not None and result.incomplete and result.refuse_unscanned
    assert result.counts == {Category.OPENAI_KEY: 1, Category.EMAIL: 2}  # the first message's
    assert set(result.blocked) == {Category.OPENAI_KEY, Category.EMAIL}


def test_without_a_deadline_nothing_changes() -> None:
    rules = Guardrails((rule("g", email="redact"),))
    result = rules.check(ANONYMOUS, entry(), chat(SECRET_TEXT))
    assert result is not None and not result.incomplete and result.body is not None
    assert result.actions == {Category.EMAIL: GuardAction.REDACT}


@pytest.mark.parametrize(
    "unit",
    [DENSE, "a@", "1 ", "7", "-----BEGIN RSA PRIVATE KEY-----\n", "eyJhbGciOi.", "token="],
    ids=["dense", "a@", "1 ", "digits", "BEGIN", "eyJ", "token="],
)
def test_the_deadline_holds_on_pathological_text(unit: str) -> None:
    """4 MB (dense with findings: ~2 s to scan whole) stop soon after a 100 ms deadline: it is
    checked per detector, per candidate and per `@`; what runs between two checks is at most one
    regex pass over the text (~60 ms per MB here). The deadline and the bound are on this
    thread's CPU time: the property is the work done after the deadline, and a wall clock also
    counts the time other processes on a busy machine held the core (0.80 s once, under load)."""
    text = fill(unit, 4_000_000)
    started = time.thread_time()
    with pytest.raises(ScanTimeout):
        scan(text, set(Category), Deadline(time.thread_time, 0.1))
    assert time.thread_time() - started < 0.8


# -- through the processor ------------------------------------------------------------------------


def config(actions: dict[str, str], **limits: int) -> GatewayConfig:
    doc = {
        "identity": {"allow_anonymous": True},
        "metering": {"mode": "synchronous"},
        "guardrails": [{"name": "g", "categories": actions}],
        "limits": limits,
    }
    return parse_config(merge(load_document(None), doc), {})


@pytest.fixture
def strict(tmp_path: Path) -> Iterator[Gateway]:
    gw = _gateway(tmp_path, config({"secrets": "block", "email": "redact"}), {})
    for g in gw:
        object.__setattr__(g.ctx, "monotonic", Ticks(grace=2))
        yield g


@pytest.fixture
def watching(tmp_path: Path) -> Iterator[Gateway]:
    gw = _gateway(tmp_path, config({"secrets": "monitor", "email": "monitor"}), {})
    for g in gw:
        object.__setattr__(g.ctx, "monotonic", Ticks(grace=2))
        yield g


BODY = {"model": "gpt-test", "messages": [{"role": "user", "content": SECRET_TEXT}]}


def test_a_prompt_the_scan_cannot_finish_is_refused_413(strict: Gateway) -> None:
    p = strict.processor()
    handle(p, req_headers(CHAT_PATH))
    reply = handle(p, req_body(BODY))
    assert reply.WhichOneof("response") == "immediate_response"
    assert reply.immediate_response.status.code == 413
    error = json.loads(reply.immediate_response.body)["error"]
    assert error["code"] == "request_too_large"
    assert "limits.guardrail_scan_timeout_ms (1000 ms)" in error["message"]
    assert "sk-" not in error["message"]
    record = strict.record()
    assert record["status"] == 413 and record["limits_reached"] == ["guardrail_scan_timeout"]
    assert record["guardrails"]["rules"] == ["g"]


def test_monitor_only_guardrails_forward_it_and_the_audit_says_so(watching: Gateway) -> None:
    p = watching.processor()
    forward(p, CHAT_PATH, BODY)
    handle(p, resp_headers())
    usage = {"prompt_tokens": 10, "completion_tokens": 2}
    handle(p, resp_body(json.dumps({"model": "gpt-test", "usage": usage}).encode(), end=True))
    record = watching.record()
    assert record["status"] == 200 and record["limits_reached"] == ["guardrail_scan_timeout"]


def test_the_scan_timeout_is_configured_below_the_message_timeout() -> None:
    assert config({"email": "block"}).limits.guardrail_scan_timeout_ms == 1000
    short = config({"email": "block"}, ext_proc_message_timeout_ms=1500)
    assert short.limits.guardrail_scan_timeout_ms == 750  # half, when that is shorter
    assert (
        config({"email": "block"}, guardrail_scan_timeout_ms=200).limits.guardrail_scan_timeout_ms
        == 200
    )
    with pytest.raises(ConfigError, match=r"limits\.guardrail_scan_timeout_ms: must be below"):
        config({"email": "block"}, guardrail_scan_timeout_ms=5000)


def test_check_reads_the_clock_every_16th_time_and_check_now_always() -> None:
    reads: list[int] = []

    def clock() -> float:
        reads.append(1)
        return 0.0

    deadline = Deadline(clock, 1.0)
    for _ in range(33):
        deadline.check()
    assert len(reads) == 1 + 3  # construction, then checks 1, 17 and 33
    deadline.check_now()
    assert len(reads) == 5
