"""Prompts, completions and credentials never reach the audit file or any process's log: a
secret is planted in every prompt and credential, requests go through every API and the failure
paths (upstream errors, metering that fails), and every file the stack wrote is searched."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway_extproc.stack import Stack
from tests.e2e.harness import AuditLog

pytestmark = pytest.mark.e2e
SECRET = "plant-7f3c91-do-not-log"  # inside every prompt
CREDENTIAL = "sk-leak-me-not-0815"  # a valid static token (tests/e2e/conftest.py CLIENT_TOKENS)
OUTPUT_TOKENS = "30"  # completions long enough to be unmistakable in a log


def _prompt(label: str) -> str:
    return f"{label}: please keep {SECRET} to yourself"


def _sse_data(body: bytes) -> Iterator[dict[str, Any]]:
    for line in body.decode().splitlines():
        if line.startswith("data: {"):
            yield json.loads(line[len("data: ") :])


class Sent:
    """Requests sent through the gateway, and the completions they got back."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.request_ids: list[str] = []
        self.completions: list[str] = []
        self.metering_faults: dict[str, str] = {}  # content-encoding label -> request id

    def post(self, path: str, body: dict[str, Any], **headers: str) -> tuple[int, bytes]:
        """POST with the planted credential; (status, body bytes exactly as sent)."""
        if path == "/v1/messages":
            auth = {"x-api-key": CREDENTIAL}
        else:
            auth = {"authorization": f"Bearer {CREDENTIAL}"}
        with httpx.stream(
            "POST",
            self.stack.gateway_url + path,
            json=body,
            headers={
                **auth,
                "accept-encoding": "identity",
                "x-mock-output-tokens": OUTPUT_TOKENS,
                **headers,
            },
            timeout=30,
        ) as r:
            content = b"".join(r.iter_raw())  # raw: one body claims an encoding it lacks
        self.request_ids.append(r.headers["x-gateway-request-id"])
        return r.status_code, content

    def completion(self, text: str) -> None:
        assert len(text.split()) == int(OUTPUT_TOKENS), text
        self.completions.append(text)


def _chat_text(body: bytes) -> str:
    chunks = [c for c in _sse_data(body) if c["choices"]]  # not the usage chunk
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)


@pytest.fixture(scope="module")
def sent(stack: Stack, audit: AuditLog) -> Sent:
    s = Sent(stack)
    stream = {"stream": True}

    # Anthropic messages, streamed, with a system prompt.
    anthropic_body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 100,
        "system": _prompt("system"),
        "messages": [{"role": "user", "content": _prompt("anthropic")}],
    }
    status, body = s.post("/v1/messages", {**anthropic_body, **stream})
    assert status == 200, body
    deltas = [e for e in _sse_data(body) if e["type"] == "content_block_delta"]
    s.completion("".join(e["delta"]["text"] for e in deltas))

    # Responses, JSON and streamed, with instructions.
    responses_body = {
        "model": "gpt-4.1",
        "input": _prompt("responses"),
        "instructions": _prompt("instructions"),
    }
    status, body = s.post("/v1/responses", responses_body)
    assert status == 200, body
    s.completion(json.loads(body)["output"][0]["content"][0]["text"])
    status, body = s.post("/v1/responses", {**responses_body, **stream})
    assert status == 200, body
    deltas = [e for e in _sse_data(body) if e["type"] == "response.output_text.delta"]
    s.completion("".join(e["delta"] for e in deltas))

    # Embeddings.
    status, body = s.post(
        "/v1/embeddings", {"model": "text-embedding-3-small", "input": [_prompt("embed")]}
    )
    assert status == 200, body

    # Upstream errors, JSON and streamed, in both API formats.
    chat_body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": _prompt("chat")}],
    }
    for path, request in (("/v1/chat/completions", chat_body), ("/v1/messages", anthropic_body)):
        for extra in ({}, stream):
            status, body = s.post(path, {**request, **extra}, **{"x-mock-status": "500"})
            assert status == 500, body

    # Metering that fails: a stream labelled gzip that is not (the decoder raises), and a body
    # in an encoding the gateway cannot read.
    mislabelled = {"x-mock-content-encoding": "gzip"}
    status, body = s.post("/v1/chat/completions", {**chat_body, **stream}, **mislabelled)
    assert status == 200, body
    s.completion(_chat_text(body))
    s.metering_faults["gzip"] = s.request_ids[-1]
    status, body = s.post("/v1/chat/completions", chat_body, **{"x-mock-content-encoding": "br"})
    assert status == 200, body
    s.metering_faults["br"] = s.request_ids[-1]
    s.completion(json.loads(body)["choices"][0]["message"]["content"])

    # And the ordinary metered paths.
    status, body = s.post("/v1/chat/completions", chat_body)
    assert status == 200, body
    s.completion(json.loads(body)["choices"][0]["message"]["content"])
    status, body = s.post("/v1/chat/completions", {**chat_body, **stream})
    assert status == 200, body
    s.completion(_chat_text(body))

    for rid in s.request_ids:
        audit.wait_for(rid)
    return s


def _everything_written(stack: Stack) -> dict[Path, bytes]:
    files = {path: path.read_bytes() for path in stack.run_dir.rglob("*") if path.is_file()}
    assert stack.run_dir / "audit.jsonl" in files and stack.run_dir / "stack.log" in files
    return files


def test_no_prompt_completion_or_credential_in_any_file_the_stack_wrote(
    stack: Stack, sent: Sent
) -> None:
    planted = [SECRET, CREDENTIAL, *sent.completions]
    for path, content in _everything_written(stack).items():
        for secret in planted:
            assert secret.encode() not in content, f"{secret!r} leaked into {path}"


def test_the_failure_paths_did_run(stack: Stack, sent: Sent, audit: AuditLog) -> None:
    """The search above means something only if the errors and metering faults happened."""
    records = {r["request_id"]: r for r in audit.records() if r["request_id"] in sent.request_ids}
    assert len(records) == len(sent.request_ids) == 12
    assert sorted(r["status"] for r in records.values()).count(500) == 4
    log = (stack.run_dir / "stack.log").read_text(errors="replace")
    gzip_rid, br_rid = sent.metering_faults["gzip"], sent.metering_faults["br"]
    lines = log.splitlines()
    assert any("metering failed" in line and gzip_rid in line for line in lines)
    assert any("cannot meter br-encoded body" in line and br_rid in line for line in lines)
    assert records[gzip_rid]["usage_source"] == records[br_rid]["usage_source"] == "bound"
    assert {r["identity"]["static_token"] for r in records.values()} == {"leak-test"}
