"""Azure OpenAI with Entra ID tokens, end to end: the `azure` provider with `entra_id: true`, the
sidecar's azure-identity (its real DefaultAzureCredential, reaching the managed identity of App
Service through `IDENTITY_ENDPOINT` / `IDENTITY_HEADER`) fetching its token from the mock's token
endpoint, and the mock's Azure routes answering only that token as `Authorization: Bearer`. The
official openai SDK is the client. A token endpoint that refuses the sidecar gives the client a
503 in OpenAI's error format, charged nothing; the token never reaches a log, the client's own
credential never reaches the mock."""

from __future__ import annotations

import json
import math
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway_extproc.stack import Stack
from tests.e2e.conftest import stack_environ, start_stack, static_tokens_yaml
from tests.e2e.harness import AuditLog, MockLog, expected_cost_micros, running_mock, tokens

pytestmark = pytest.mark.e2e
ENTRA_TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.mock-entra-token.c2lnbmF0dXJl"
IDENTITY_SECRET = "app-service-identity-secret"
CLIENT = "client-key"


@pytest.fixture(scope="module")
def entra_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An Azure resource that takes only the Entra ID token, and the managed identity's token
    endpoint that issues it (to callers presenting IDENTITY_SECRET)."""
    args = ("--azure-token", ENTRA_TOKEN, "--identity-header", IDENTITY_SECRET)
    with running_mock(tmp_path_factory.mktemp("entra-mock"), *args) as url:
        yield url


def _stack(run_dir: Path, mock: str, identity_header: str) -> Stack:
    config = run_dir / "gateway.yaml"
    config.write_text(
        f"""
mock_unconfigured_providers: false
sidecar: {{workers: 1}}
identity:
  static_tokens:
{static_tokens_yaml()}providers:
  openai: null
  anthropic: null
  gemini: null
  azure:
    base_url: {mock}
    auth: null
    forward_headers: ["x-mock-*"]
    azure: {{api: v1, entra_id: true}}
"""
    )
    # Only the managed identity of App Service: no service principal, workload identity or
    # developer login of this machine's may answer for the mock's endpoint.
    env = {k: v for k, v in stack_environ(run_dir).items() if not k.startswith(("AZURE_", "MSI_"))}
    env.update(IDENTITY_ENDPOINT=f"{mock}/msi/token", IDENTITY_HEADER=identity_header)
    return start_stack(run_dir, config_path=config, environ=env)


@pytest.fixture(scope="module")
def entra_stack(tmp_path_factory: pytest.TempPathFactory, entra_mock: str) -> Iterator[Stack]:
    stack = _stack(tmp_path_factory.mktemp("entra-stack"), entra_mock, IDENTITY_SECRET)
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def refused_stack(tmp_path_factory: pytest.TempPathFactory, entra_mock: str) -> Iterator[Stack]:
    """A sidecar whose identity the token endpoint refuses (the wrong IDENTITY_HEADER)."""
    stack = _stack(tmp_path_factory.mktemp("entra-refused"), entra_mock, "not-the-secret")
    yield stack
    stack.stop()


def _client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.gateway_url + "/v1", api_key=CLIENT, max_retries=0)


def _asked(mock: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(mock + "/_mock/identity", timeout=5) as r:
        return list(json.load(r))


def _refusals(stack: Stack) -> int:
    log = (stack.run_dir / "stack.log").read_text(errors="replace")
    return log.count("Entra ID token for Azure OpenAI not obtained")


def _no_secret_in_logs(stack: Stack) -> None:
    log = (stack.run_dir / "stack.log").read_text(errors="replace")
    audit = (stack.run_dir / "audit.jsonl").read_text(errors="replace")
    for secret in (ENTRA_TOKEN, "mock-entra-token", IDENTITY_SECRET, CLIENT):
        assert secret not in log and secret not in audit


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_entra_token_fetched_sent_and_metered(
    entra_stack: Stack, entra_mock: str, stream: bool
) -> None:
    mock, audit = MockLog(entra_mock), AuditLog(entra_stack.run_dir / "audit.jsonl")
    mock.clear()
    with _client(entra_stack) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="azure/gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            stream=stream,
            extra_headers={"x-mock-output-tokens": "9"},
        )
        if stream:
            chunks = list(raw.parse())  # type: ignore[call-overload]
            usage = chunks[-1].usage
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            completion = raw.parse()
            usage = completion.usage
            assert completion.choices[0].message.content
    assert usage is not None and usage.completion_tokens == 9
    (seen,) = mock.received()  # the mock answered: it checked the bearer token
    assert seen["path"] == "/openai/v1/chat/completions"
    assert seen["headers"]["authorization"] == f"Bearer {ENTRA_TOKEN}"
    assert "api-key" not in seen["headers"]
    assert CLIENT not in json.dumps(seen)  # the client's credential stayed behind
    # the sidecar asked the managed identity, as App Service's endpoint expects
    asked = _asked(entra_mock)
    assert asked and all(a["identity_header"] for a in asked)
    assert asked[0]["query"] == {
        "api-version": "2019-08-01",
        "resource": "https://cognitiveservices.azure.com",
    }
    rec = audit.wait_for(raw.headers["x-gateway-request-id"])
    assert rec["provider"] == "azure" and rec["upstream_mocked"] is False
    assert rec["status"] == 200 and rec["usage_source"] == "provider"
    assert rec["tokens"] == tokens(usage.prompt_tokens, output=9)
    assert rec["cost_micros"] == expected_cost_micros("azure/gpt-4o", rec["tokens"]) > 0
    _no_secret_in_logs(entra_stack)


def test_token_cached_across_requests(entra_stack: Stack, entra_mock: str) -> None:
    """One fetch serves many requests: the token lives an hour, far from its refresh margin."""
    with _client(entra_stack) as client:
        client.chat.completions.create(
            model="azure/gpt-4o", messages=[{"role": "user", "content": "warm"}]
        )
        before = len(_asked(entra_mock))
        for _ in range(3):
            client.chat.completions.create(
                model="azure/gpt-4o", messages=[{"role": "user", "content": "hi"}]
            )
    assert len(_asked(entra_mock)) == before


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_refused_token_is_a_503_charged_nothing(
    refused_stack: Stack, entra_mock: str, stream: bool
) -> None:
    mock, audit = MockLog(entra_mock), AuditLog(refused_stack.run_dir / "audit.jsonl")
    mock.clear()
    # The client is closed even when an assertion below fails: a failed test keeps its frames
    # (and an unclosed client's pooled socket) until exit, a ResourceWarning then.
    with _client(refused_stack) as client, pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(
            model="azure/gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=stream
        )
    response = caught.value.response
    assert response.status_code == 503
    error = response.json()["error"]  # OpenAI's error format
    assert "Entra ID" in error["message"] and error["code"]
    # the sidecar did ask, and was refused (this request, or the one before it: the backoff)
    assert _asked(entra_mock) and _refusals(refused_stack) > 0
    assert mock.received() == []  # nothing reached Azure without a token
    rec = audit.wait_for(response.headers["x-gateway-request-id"])
    assert rec["status"] == 503 and rec["cost_micros"] == 0
    _no_secret_in_logs(refused_stack)


def test_refused_token_backs_off(refused_stack: Stack, entra_mock: str) -> None:
    """Back-to-back requests while the token endpoint refuses: each gets its 503, but the
    sidecar asks at most once per backoff (1 s, then doubled), not once per request."""
    requests = 6
    asked = len(_asked(entra_mock))
    started = time.monotonic()
    with _client(refused_stack) as client:
        for _ in range(requests):
            with pytest.raises(openai.InternalServerError) as caught:
                client.chat.completions.create(
                    model="azure/gpt-4o", messages=[{"role": "user", "content": "hi"}]
                )
            assert caught.value.response.status_code == 503
    elapsed = time.monotonic() - started
    # k fetches are at least 1 + 2 + ... + 2**(k-2) = 2**(k-1) - 1 seconds apart in all
    most = 1 + math.floor(math.log2(elapsed + 1))
    assert most < requests, f"{requests} requests took {elapsed:.1f} s: too slow to tell"
    assert len(_asked(entra_mock)) - asked <= most
