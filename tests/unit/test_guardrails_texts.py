"""Where each API keeps the text the model reads: every such string is scanned and redacted in
the body sent upstream, and nothing else is touched (images, files, audio, ids, parameters)."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import orjson
import pytest

from gateway_extproc.apis import Api
from gateway_extproc.budgets.model import Match
from gateway_extproc.catalog.models import Catalog
from gateway_extproc.guardrails import Category, GuardAction, GuardrailConfig, Guardrails
from gateway_extproc.guardrails.texts import text_slots
from gateway_extproc.identity.model import ANONYMOUS
from gateway_extproc.providers.inbound import parse_request, upstream_body, with_body
from tests.guardrails_corpus import ALLOWED_EMAIL_DOMAINS, RequestCase, load_requests

MAIL = "alice@corp.io"  # one e-mail address per text the model reads
R = "[REDACTED:email]"
# A data URL, an id and a file name that each carry an address: never scanned, never changed.
IMAGE = "data:image/png;base64,YWxpY2VAY29ycC5pbw==" + MAIL
REDACT_EMAIL = Guardrails((GuardrailConfig("pii", Match(), {Category.EMAIL: GuardAction.REDACT}),))

SHAPES: dict[str, tuple[Api, str, dict[str, Any], int]] = {
    "chat": (
        Api.OPENAI_CHAT,
        "gpt-4o-mini",
        {
            "messages": [
                {"role": "system", "content": f"system {MAIL}"},
                {
                    "role": "user",
                    "name": MAIL,
                    "content": [
                        {"type": "text", "text": f"part {MAIL}"},
                        {"type": "image_url", "image_url": {"url": IMAGE}},
                        {"type": "input_audio", "input_audio": {"data": IMAGE, "format": "wav"}},
                        {"type": "file", "file": {"file_data": IMAGE, "filename": MAIL}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": MAIL,
                            "type": "function",
                            "function": {"name": "send", "arguments": f'{{"to": "{MAIL}"}}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": MAIL, "content": f"sent to {MAIL}"},
            ],
            "user": MAIL,
            "metadata": {"owner": MAIL},
        },
        4,
    ),
    "responses": (
        Api.OPENAI_RESPONSES,
        "gpt-4o-mini",
        {
            "instructions": f"instructions {MAIL}",
            "input": [
                {"role": "user", "content": f"plain {MAIL}"},
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": f"input_text {MAIL}"},
                        {"type": "input_image", "image_url": IMAGE},
                        {"type": "input_file", "file_data": IMAGE, "filename": MAIL},
                    ],
                },
                {"role": "assistant", "content": [{"type": "output_text", "text": f"out {MAIL}"}]},
                {"type": "function_call", "call_id": MAIL, "name": "f", "arguments": f'"{MAIL}"'},
                {"type": "function_call_output", "call_id": MAIL, "output": f"result {MAIL}"},
            ],
        },
        6,
    ),
    "responses string input": (
        Api.OPENAI_RESPONSES,
        "gpt-4o-mini",
        {"input": f"hi {MAIL}"},
        1,
    ),
    "completions": (
        Api.OPENAI_COMPLETIONS,
        "gpt-3.5-turbo-instruct",
        {"prompt": [f"one {MAIL}", f"two {MAIL}"], "suffix": "x"},
        2,
    ),
    "embeddings": (
        Api.OPENAI_EMBEDDINGS,
        "text-embedding-3-small",
        {"input": f"embed {MAIL}"},
        1,
    ),
    "anthropic": (
        Api.ANTHROPIC_MESSAGES,
        "claude-haiku-4-5",
        {
            "max_tokens": 100,
            "system": [{"type": "text", "text": f"system {MAIL}"}],
            "metadata": {"user_id": MAIL},
            "messages": [
                {"role": "user", "content": f"plain {MAIL}"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": f"block {MAIL}"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": IMAGE},
                        },
                        {
                            "type": "document",
                            "source": {
                                "type": "base64",
                                "media_type": "application/pdf",
                                "data": IMAGE,
                            },
                        },
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "send",
                            "input": {"to": MAIL, "n": 1},
                        }
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_1",
                            "content": [
                                {"type": "text", "text": f"result {MAIL}"},
                                {"type": "image", "source": {"type": "url", "url": IMAGE}},
                            ],
                        },
                        {"type": "tool_result", "tool_use_id": "toolu_2", "content": f"ok {MAIL}"},
                    ],
                },
            ],
        },
        6,
    ),
    "anthropic string system": (
        Api.ANTHROPIC_MESSAGES,
        "claude-haiku-4-5",
        {
            "max_tokens": 10,
            "system": f"sys {MAIL}",
            "messages": [{"role": "user", "content": "hi"}],
        },
        1,
    ),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_text_is_redacted_and_nothing_else_changes(shape: str) -> None:
    api, model, fields, texts = SHAPES[shape]
    body = {"model": model, **fields}
    request = parse_request(api, orjson.dumps(body))
    original = copy.deepcopy(request.body)
    entry = Catalog.load([]).lookup(model)
    assert entry is not None
    result = REDACT_EMAIL.check(ANONYMOUS, entry, request)
    assert result is not None and result.body is not None
    assert result.counts == {Category.EMAIL: texts}
    assert request.body == original  # the parsed client body is never modified

    sent = upstream_body(request, served_model=model, redacted=result.body)
    assert sent is not None
    upstream = orjson.loads(sent)
    # Each text the model reads now carries the marker instead of the address...
    read = [c[k] for c, k in text_slots(api, upstream)]
    assert sum(R in t for t in read) == texts
    assert not any(MAIL in t for t in read)
    # ...and everything else is byte for byte the client's (images, files, ids, metadata).
    untouched = orjson.dumps(upstream).count(MAIL.encode())
    assert untouched == orjson.dumps(body).count(MAIL.encode()) - texts
    assert orjson.dumps(upstream).count(IMAGE.encode()) == orjson.dumps(body).count(IMAGE.encode())
    for c, k in text_slots(api, upstream):
        c[k] = c[k].replace(R, MAIL)
    assert upstream == body


def test_no_redaction_sends_the_clients_bytes() -> None:
    request = parse_request(
        Api.OPENAI_CHAT,
        orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
    )
    entry = Catalog.load([]).lookup("gpt-4o-mini")
    assert entry is not None
    result = REDACT_EMAIL.check(ANONYMOUS, entry, request)
    assert result is not None and result.body is None
    assert upstream_body(request, served_model="gpt-4o-mini", redacted=None) is None


def test_redaction_combines_with_the_other_upstream_rewrites() -> None:
    request = parse_request(
        Api.OPENAI_CHAT,
        orjson.dumps(
            {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": MAIL}]}
        ),
    )
    entry = Catalog.load([]).lookup("gpt-4o")
    assert entry is not None
    result = REDACT_EMAIL.check(ANONYMOUS, entry, request)
    assert result is not None
    sent = upstream_body(
        request,
        served_model="gpt-4o-mini",
        output_cap=("max_completion_tokens", 99),
        redacted=result.body,
    )
    assert sent is not None
    assert orjson.loads(sent) == {
        "model": "gpt-4o-mini",
        "stream": True,
        "messages": [{"role": "user", "content": R}],
        "max_completion_tokens": 99,
        "stream_options": {"include_usage": True},
    }


REDACT_ALL = Guardrails(
    (
        GuardrailConfig(
            "all", Match(), dict.fromkeys(Category, GuardAction.REDACT), ALLOWED_EMAIL_DOMAINS
        ),
    )
)


@pytest.mark.parametrize("case", load_requests(), ids=lambda c: c.name)
def test_every_labelled_value_is_redacted_and_nothing_else_changes(case: RequestCase) -> None:
    """tests/fixtures/guardrails/requests.yaml: documents, search results, tool results,
    predictions, refusals, suffixes, prompt variables, obfuscated values."""
    request = parse_request(case.api, orjson.dumps(case.body))
    entry = Catalog.load([]).lookup(case.body["model"])
    assert entry is not None
    result = REDACT_ALL.check(ANONYMOUS, entry, request)
    assert result is not None and result.body is not None
    assert {c.value: n for c, n in result.counts.items()} == dict(
        Counter(c for c, _ in case.expect.elements())
    )
    sent = upstream_body(request, served_model=request.model, redacted=result.body)
    assert sent is not None
    upstream = orjson.loads(sent)
    for _, value in case.expect:
        assert value.encode() not in sent, value
    for value in case.kept:  # media, ids, signed thinking: byte for byte the client's
        assert sent.count(value.encode()) == orjson.dumps(case.body).count(value.encode())
    # Only the strings the model reads changed: put them back and the bodies are equal.
    pairs = zip(text_slots(case.api, upstream), text_slots(case.api, case.body), strict=True)
    for (changed, key), (original, same_key) in pairs:
        changed[key] = original[same_key]
    assert upstream == case.body


def test_token_ids_are_not_text_and_unknown_parts_are_read() -> None:
    completions = {"model": "m", "prompt": [[1, 2, 3], [4]], "suffix": MAIL}
    assert [c[k] for c, k in text_slots(Api.OPENAI_COMPLETIONS, completions)] == [MAIL]
    chat = {
        "model": "m",
        "messages": [
            {"role": "user", "content": [{"type": "refusal", "refusal": MAIL}]},
            {"role": "user", "content": [{"type": "future_part", "caption": MAIL, "id": "x"}]},
        ],
    }
    assert [c[k] for c, k in text_slots(Api.OPENAI_CHAT, chat)] == [MAIL, MAIL]


@pytest.mark.parametrize("kind", [["text"], {"a": 1}, 7, None])
def test_a_malformed_part_type_is_read_not_a_crash(kind: object) -> None:
    """A `type` that is not a string (unhashable, even) is the provider's to refuse."""
    part = {"type": kind, "text": MAIL}
    for api, body in (
        (Api.OPENAI_CHAT, {"messages": [{"role": "user", "content": [part]}]}),
        (Api.OPENAI_RESPONSES, {"input": [{"role": "user", "content": [part]}]}),
        (Api.ANTHROPIC_MESSAGES, {"messages": [{"role": "user", "content": [part]}]}),
    ):
        assert [c[k] for c, k in text_slots(api, body)] == [MAIL]


def test_the_worst_case_is_computed_on_the_redacted_body() -> None:
    """`[REDACTED:email]` (16 bytes) is longer than `a@b.io` (6): the bound must grow with it."""
    request = parse_request(
        Api.OPENAI_CHAT,
        orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a@b.io"}]}),
    )
    entry = Catalog.load([]).lookup("gpt-4o-mini")
    assert entry is not None
    result = REDACT_EMAIL.check(ANONYMOUS, entry, request)
    assert result is not None and result.body is not None
    redacted = with_body(request, result.body)
    assert redacted.shape.text_tokens == request.shape.text_tokens + len(R) - len("a@b.io")
    assert redacted.input_tokens_estimate >= request.input_tokens_estimate
    assert request.body["messages"][0]["content"] == "a@b.io"


CONVERSE_MODEL = "global.anthropic.claude-haiku-4-5-20251001-v1:0"
CONVERSE_PATH = "/model/global.anthropic.claude-haiku-4-5-20251001-v1%3A0/converse"
CONVERSE_BODY: dict[str, Any] = {
    "system": [{"text": f"sys {MAIL}"}, {"cachePoint": {"type": "default"}}],
    "messages": [
        {
            "role": "user",
            "content": [
                {"text": f"text {MAIL}"},
                {"image": {"format": "png", "source": {"bytes": IMAGE}}},
                {"document": {"format": "txt", "name": "doc", "source": {"bytes": IMAGE}}},
                {"guardContent": {"text": {"text": f"guarded {MAIL}"}}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"reasoningContent": {"reasoningText": {"text": MAIL, "signature": "sig"}}},
                {"toolUse": {"toolUseId": MAIL, "name": "send", "input": {"to": [MAIL]}}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "toolResult": {
                        "toolUseId": MAIL,
                        "status": "success",
                        "content": [{"text": f"sent {MAIL}"}, {"json": {"cc": {"who": MAIL}}}],
                    }
                }
            ],
        },
    ],
    "requestMetadata": {"owner": MAIL},
}


def test_converse_texts_are_redacted_and_nothing_else_changes() -> None:
    """Converse: system and message text, guard content, tool use inputs and tool results
    (text and JSON) are read; media, signed reasoning, ids and request metadata are not."""
    api = Api.BEDROCK_CONVERSE
    request = parse_request(api, orjson.dumps(CONVERSE_BODY), CONVERSE_PATH)
    entry = Catalog.load([]).lookup(CONVERSE_MODEL)
    assert entry is not None
    result = REDACT_EMAIL.check(ANONYMOUS, entry, request)
    assert result is not None and result.body is not None
    assert result.counts == {Category.EMAIL: 6}
    sent = upstream_body(request, served_model=CONVERSE_MODEL, redacted=result.body)
    assert sent is not None
    upstream = orjson.loads(sent)
    read = [c[k] for c, k in text_slots(api, upstream)]
    assert len(read) == 6 and all(R in t and MAIL not in t for t in read)
    assert (
        orjson.dumps(upstream).count(MAIL.encode())
        == orjson.dumps(CONVERSE_BODY).count(MAIL.encode()) - 6
    )
    for c, k in text_slots(api, upstream):
        c[k] = c[k].replace(R, MAIL)
    assert upstream == CONVERSE_BODY
