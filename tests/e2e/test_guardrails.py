"""Guardrails through real Envoy, the sidecar, redis-server and the mock provider, driven by the
official SDKs: redaction checked by what the provider received, a block never reaching it,
monitor only audited, and no detected value in any file the stack writes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from gateway_extproc.stack import Stack
from tests.e2e.conftest import start_stack
from tests.e2e.harness import AuditLog, MockLog

pytestmark = pytest.mark.e2e

ENG_KEY = "guard-eng-client-key"  # static tokens: group eng (guarded), group ops (monitored)
OPS_KEY = "guard-ops-client-key"
# Made-up values, each planted in requests and searched for in every file the stack wrote.
EMAIL = "jane.roe.7f3c@fabrikam.net"
CARD = "4111 1111 1111 1111"
OPENAI_KEY = "sk-proj-Ab3dEf6hIj9kLmN0pQr2StU5vWx8yZguardE2E"
AWS_KEY = "AKIA6I8J76B2LAJLJ4H9"
PHONE = "+1 415 555 2671"
ALLOWED = "docs@example.com"
# Obfuscated: a zero-width space inside a key, a full-width at sign in an address.
HIDDEN_KEY_TAIL = "Zq9Lm2Xv8Nw4Rt6Yp1Ks3Hd5Gf7Jb0CguardHidden"
HIDDEN_KEY = f"sk-\u200bproj-{HIDDEN_KEY_TAIL}"
WIDE_EMAIL = "ana.lima.5e1d\uff20fabrikam.net"
PLANTED = (EMAIL, CARD, OPENAI_KEY, AWS_KEY, PHONE, HIDDEN_KEY_TAIL, "ana.lima.5e1d")


def _sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


CONFIG = f"""
sidecar: {{workers: 1}}
identity:
  static_tokens:
    eng-bot: {{sha256: "{_sha(ENG_KEY)}", groups: [eng]}}
    ops-bot: {{sha256: "{_sha(OPS_KEY)}", groups: [ops]}}
guardrails:
  - name: eng-guard
    match: {{groups: [eng]}}
    categories: {{secrets: block, email: redact, payment_card: redact, phone: monitor}}
    allow: {{email_domains: [example.com]}}
  - name: ops-watch
    match: {{groups: [ops]}}
    categories: {{pii: monitor, secrets: monitor}}
"""


class Guarded:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.audit = AuditLog(stack.run_dir / "audit.jsonl")
        assert stack.mock_url is not None
        self.mock = MockLog(stack.mock_url.removesuffix("/v1"))

    def openai(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.stack.gateway_url + "/v1", api_key=key, max_retries=0)

    def anthropic(self, key: str) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.stack.gateway_url, api_key=key, max_retries=0)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    tmp_path = tmp_path_factory.mktemp("guardrails")
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG)
    stack = start_stack(tmp_path / "run", config_path=config)
    yield Guarded(stack)
    stack.stop()


def _no_values(record: dict[str, Any]) -> None:
    text = json.dumps(record)
    for value in PLANTED:
        assert value not in text


def test_openai_chat_is_redacted_before_the_provider(gw: Guarded) -> None:
    prompt = f"Bill {EMAIL} ({ALLOWED}) on card {CARD}; call {PHONE}."
    with gw.openai(ENG_KEY) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[
                {"role": "system", "content": f"Escalations go to {EMAIL}."},
                {"role": "user", "content": [{"type": "text", "text": prompt}]},
            ],
        )
    assert raw.parse().choices[0].message.content
    sent = gw.mock.last()["body"]
    assert sent["messages"][0]["content"] == "Escalations go to [REDACTED:email]."
    assert sent["messages"][1]["content"][0]["text"] == (
        f"Bill [REDACTED:email] ({ALLOWED}) on card [REDACTED:payment_card]; call {PHONE}."
    )
    record = gw.audit.wait_for(raw.headers["x-gateway-request-id"])
    assert record["status"] == 200
    assert record["guardrails"] == {
        "rules": ["eng-guard"],
        "action": "redact",
        "categories": {
            "email": {"count": 2, "action": "redact"},
            "payment_card": {"count": 1, "action": "redact"},
            "phone": {"count": 1, "action": "monitor"},
        },
    }
    _no_values(record)


def test_streamed_responses_api_is_redacted(gw: Guarded) -> None:
    with gw.openai(ENG_KEY) as client:
        stream = client.responses.create(
            model="gpt-4o-mini",
            instructions=f"Reply to {EMAIL}.",
            input=[{"role": "user", "content": [{"type": "input_text", "text": f"card {CARD}"}]}],
            stream=True,
        )
        kinds = [event.type for event in stream]
    assert "response.completed" in kinds
    sent = gw.mock.last()["body"]
    assert sent["instructions"] == "Reply to [REDACTED:email]."
    assert sent["input"][0]["content"][0]["text"] == "card [REDACTED:payment_card]"
    assert sent["stream"] is True


def test_anthropic_system_and_tool_results_are_redacted(gw: Guarded) -> None:
    with gw.anthropic(ENG_KEY) as client:
        raw = client.messages.with_raw_response.create(
            model="claude-haiku-4-5",
            max_tokens=50,
            system=f"Customer: {EMAIL}",
            messages=[
                {"role": "user", "content": "Look the customer up."},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "toolu_1", "name": "crm", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": f"card {CARD}"}
                    ],
                },
            ],
        )
    assert raw.parse().content
    sent = gw.mock.last()["body"]
    assert sent["system"] == "Customer: [REDACTED:email]"
    assert sent["messages"][2]["content"][0]["content"] == "card [REDACTED:payment_card]"
    record = gw.audit.wait_for(raw.headers["x-gateway-request-id"])
    assert record["guardrails"]["action"] == "redact"


def test_a_blocked_secret_never_reaches_the_provider(gw: Guarded) -> None:
    gw.mock.clear()
    with gw.openai(ENG_KEY) as client, pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"why does {OPENAI_KEY} get a 401? {EMAIL}"}],
        )
    assert err.value.status_code == 400
    assert err.value.code == "guardrail_blocked"
    message = err.value.message
    assert "openai_key" in message and OPENAI_KEY not in message and EMAIL not in message
    request_id = err.value.response.headers["x-gateway-request-id"]
    record = gw.audit.wait_for(request_id)
    assert gw.mock.received() == []  # the audit line is written after the refusal
    assert record["status"] == 400 and record["error_code"] == "guardrail_blocked"
    assert record["provider"] is None
    assert record["guardrails"]["action"] == "block"
    assert record["guardrails"]["categories"]["openai_key"] == {"count": 1, "action": "block"}
    _no_values(record)


def test_a_blocked_anthropic_request_gets_an_anthropic_error(gw: Guarded) -> None:
    gw.mock.clear()
    with gw.anthropic(ENG_KEY) as client, pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=50,
            messages=[{"role": "user", "content": f"deploy with {AWS_KEY}"}],
        )
    assert err.value.status_code == 400
    body = err.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "aws_access_key" in body["error"]["message"] and AWS_KEY not in str(body)
    gw.audit.wait_for(err.value.response.headers["x-gateway-request-id"])
    assert gw.mock.received() == []


def test_monitor_sends_the_prompt_unchanged_and_audits_counts(gw: Guarded) -> None:
    prompt = f"{EMAIL} {EMAIL} {PHONE} {OPENAI_KEY}"
    with gw.openai(OPS_KEY) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
        )
    assert raw.http_response.status_code == 200
    assert gw.mock.last()["body"]["messages"][0]["content"] == prompt
    record = gw.audit.wait_for(raw.headers["x-gateway-request-id"])
    assert record["guardrails"] == {
        "rules": ["ops-watch"],
        "action": "monitor",
        "categories": {
            "email": {"count": 2, "action": "monitor"},
            "openai_key": {"count": 1, "action": "monitor"},
            "phone": {"count": 1, "action": "monitor"},
        },
    }
    _no_values(record)


def test_a_large_prompt_is_scanned_and_redacted(gw: Guarded) -> None:
    """Over the 64 KiB line, the scan runs in the body-parsing thread."""
    filler = "lorem ipsum dolor sit amet " * 20_000  # ~540 KB
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": f"{filler} {EMAIL}"}],
    }
    r = httpx.post(
        gw.stack.gateway_url + "/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {ENG_KEY}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert gw.mock.last()["body"]["messages"][0]["content"].endswith(" [REDACTED:email]")


def test_anthropic_documents_search_results_and_nested_tool_results_are_redacted(
    gw: Guarded,
) -> None:
    with gw.anthropic(ENG_KEY) as client:
        raw = client.messages.with_raw_response.create(
            model="claude-haiku-4-5",
            max_tokens=50,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "document",
                            "source": {"type": "text", "media_type": "text/plain", "data": EMAIL},
                            "title": f"Card {CARD}",
                            "context": f"from {EMAIL}",
                        },
                        {
                            "type": "document",
                            "source": {
                                "type": "content",
                                "content": [{"type": "text", "text": EMAIL}],
                            },
                        },
                        {
                            "type": "search_result",
                            "source": "crm",
                            "title": "Customer",
                            "content": [{"type": "text", "text": f"mail {EMAIL}"}],
                        },
                        {"type": "text", "text": "Summarise."},
                    ],
                },
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "toolu_1", "name": "crm", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_1",
                            "content": [
                                {
                                    "type": "document",
                                    "source": {
                                        "type": "text",
                                        "media_type": "text/plain",
                                        "data": f"owner {EMAIL}",
                                    },
                                },
                                {
                                    "type": "search_result",
                                    "source": "crm",
                                    "title": EMAIL,
                                    "content": [{"type": "text", "text": CARD}],
                                },
                            ],
                        }
                    ],
                },
            ],
        )
    assert raw.parse().content
    sent = gw.mock.last()["body"]
    first, _, tool = sent["messages"]
    assert first["content"][0]["source"]["data"] == "[REDACTED:email]"
    assert first["content"][0]["title"] == "Card [REDACTED:payment_card]"
    assert first["content"][0]["context"] == "from [REDACTED:email]"
    assert first["content"][1]["source"]["content"][0]["text"] == "[REDACTED:email]"
    assert first["content"][2]["content"][0]["text"] == "mail [REDACTED:email]"
    nested = tool["content"][0]["content"]
    assert nested[0]["source"]["data"] == "owner [REDACTED:email]"
    assert nested[1]["title"] == "[REDACTED:email]"
    assert nested[1]["content"][0]["text"] == "[REDACTED:payment_card]"
    record = gw.audit.wait_for(raw.headers["x-gateway-request-id"])
    assert record["guardrails"]["categories"] == {
        "email": {"count": 6, "action": "redact"},
        "payment_card": {"count": 2, "action": "redact"},
    }


def test_chat_prediction_and_refusals_are_redacted(gw: Guarded) -> None:
    with gw.openai(ENG_KEY) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[
                {"role": "user", "content": "Rewrite the note."},
                {"role": "assistant", "content": None, "refusal": f"Not for {EMAIL}."},
                {"role": "user", "content": "Please."},
            ],
            prediction={"type": "content", "content": f"Card {CARD} belongs to {EMAIL}."},
        )
    assert raw.parse().choices
    sent = gw.mock.last()["body"]
    assert sent["messages"][1]["refusal"] == "Not for [REDACTED:email]."
    assert sent["prediction"]["content"] == (
        "Card [REDACTED:payment_card] belongs to [REDACTED:email]."
    )


def test_a_secret_in_a_completions_suffix_is_blocked(gw: Guarded) -> None:
    gw.mock.clear()
    with gw.openai(ENG_KEY) as client, pytest.raises(openai.BadRequestError) as err:
        client.completions.create(
            model="gpt-3.5-turbo-instruct", prompt="def f():\n", suffix=f"# {OPENAI_KEY}"
        )
    assert err.value.code == "guardrail_blocked" and "openai_key" in err.value.message
    gw.audit.wait_for(err.value.response.headers["x-gateway-request-id"])
    assert gw.mock.received() == []


def test_responses_prompt_variables_are_redacted(gw: Guarded) -> None:
    with gw.openai(ENG_KEY) as client:
        raw = client.responses.with_raw_response.create(
            model="gpt-4o-mini",
            prompt={
                "id": "pmpt_1",
                "variables": {
                    "customer": EMAIL,
                    "card": {"type": "input_text", "text": f"card {CARD}"},
                },
            },
            input="Write the letter.",
        )
    assert raw.parse().output
    variables = gw.mock.last()["body"]["prompt"]["variables"]
    assert variables == {
        "customer": "[REDACTED:email]",
        "card": {"type": "input_text", "text": "card [REDACTED:payment_card]"},
    }


def test_a_key_hidden_by_a_zero_width_space_is_blocked(gw: Guarded) -> None:
    gw.mock.clear()
    with gw.openai(ENG_KEY) as client, pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"why does {HIDDEN_KEY} get a 401?"}],
        )
    assert err.value.code == "guardrail_blocked" and "openai_key" in err.value.message
    record = gw.audit.wait_for(err.value.response.headers["x-gateway-request-id"])
    assert gw.mock.received() == []
    assert record["guardrails"]["categories"]["openai_key"] == {"count": 1, "action": "block"}


def test_a_full_width_at_sign_is_redacted_where_it_was_written(gw: Guarded) -> None:
    with gw.anthropic(ENG_KEY) as client:
        raw = client.messages.with_raw_response.create(
            model="claude-haiku-4-5",
            max_tokens=50,
            messages=[{"role": "user", "content": f"Write to \u200b{WIDE_EMAIL}, please."}],
        )
    assert raw.parse().content
    # The span as written is replaced; the zero-width space before it is not part of it.
    assert gw.mock.last()["body"]["messages"][0]["content"] == (
        "Write to \u200b[REDACTED:email], please."
    )


def test_a_part_whose_type_is_not_a_string_is_scanned_not_a_crash(gw: Guarded) -> None:
    """A list as a part's `type` made the guardrails raise (a 500); the provider judges it."""
    r = httpx.post(
        gw.stack.gateway_url + "/v1/chat/completions",
        json={
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": [{"type": ["text"], "text": EMAIL}]}],
        },
        headers={"authorization": f"Bearer {ENG_KEY}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert gw.mock.last()["body"]["messages"][0]["content"][0]["text"] == "[REDACTED:email]"


def test_no_planted_value_in_any_file_the_stack_wrote(gw: Guarded) -> None:
    """Blocked, redacted and monitored values alike (this test sends one of each itself, so it
    holds when run alone as well as after the others)."""
    prompt = f"{EMAIL} {CARD} {PHONE}"
    request_ids = []
    for key, content in ((ENG_KEY, prompt), (ENG_KEY, f"{prompt} {OPENAI_KEY}"), (OPS_KEY, prompt)):
        r = httpx.post(
            gw.stack.gateway_url + "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]},
            headers={"authorization": f"Bearer {key}"},
            timeout=30,
        )
        request_ids.append(r.headers["x-gateway-request-id"])
    actions = [gw.audit.wait_for(rid)["guardrails"]["action"] for rid in request_ids]
    assert actions == ["redact", "block", "monitor"]
    written = {p: p.read_bytes() for p in gw.stack.run_dir.rglob("*") if p.is_file()}
    assert gw.stack.run_dir / "audit.jsonl" in written
    for path, content in written.items():
        for value in (*PLANTED, ENG_KEY, OPS_KEY):
            assert value.encode() not in content, f"{value!r} leaked into {Path(path).name}"
