"""Clients of the official openai SDK's `AzureOpenAI` call the gateway at Azure's own paths
(`/openai/deployments/{deployment}/...?api-version=...`), their gateway token in `api-key`: the
deployment names a gateway model, served by whichever provider the catalog says (OpenAI here,
Claude through translation), metered exactly and audited; the client's `api-key` never reaches
the provider, and errors come back in OpenAI's format."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from gateway_extproc.stack import Stack
from tests.e2e.harness import AuditLog, MockLog, expected_cost_micros, tokens

pytestmark = pytest.mark.e2e
CLIENT = "client-key"  # a static token of the shared stack (conftest.CLIENT_TOKENS)
API_VERSION = "2024-10-21"


@pytest.fixture
def azure_client(stack: Stack) -> Iterator[openai.AzureOpenAI]:
    client = openai.AzureOpenAI(
        azure_endpoint=stack.gateway_url, api_key=CLIENT, api_version=API_VERSION, max_retries=0
    )
    yield client
    client.close()


def _want(usage: openai.types.CompletionUsage) -> dict[str, int]:
    details = usage.prompt_tokens_details
    cached = (details.cached_tokens if details else 0) or 0
    out = usage.completion_tokens_details
    reasoning = (out.reasoning_tokens if out else 0) or 0
    return tokens(
        usage.prompt_tokens - cached, cached=cached, output=usage.completion_tokens,
        reasoning=reasoning,
    )  # fmt: skip


def _assert_client_key_kept_back(mock: MockLog) -> None:
    seen = mock.last()
    assert CLIENT not in str(seen["headers"]) and "api-version" not in seen["query"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_deployment_path_is_served_by_the_catalogs_provider_and_metered(
    azure_client: openai.AzureOpenAI, audit: AuditLog, mock: MockLog, stream: bool
) -> None:
    raw = azure_client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",  # the SDK puts it in the path: /openai/deployments/gpt-4o-mini/...
        messages=[{"role": "user", "content": "hi"}],
        stream=stream,
        extra_headers={"x-mock-output-tokens": "9"},
    )
    if stream:
        chunks = list(raw.parse())  # type: ignore[call-overload]
        usage = chunks[-1].usage
    else:
        usage = raw.parse().usage  # type: ignore[union-attr]
    rec = audit.wait_for(raw.headers["x-gateway-request-id"])
    assert rec["provider"] == "openai" and rec["served_model"] == "gpt-4o-mini"
    assert rec["identity"]["static_token"] == "e2e-client"  # read from `api-key`
    assert rec["usage_source"] == "provider" and rec["tokens"]["output_tokens"] == 9
    assert usage is not None and rec["tokens"] == _want(usage)
    assert rec["cost_micros"] == expected_cost_micros("gpt-4o-mini", rec["tokens"]) > 0
    seen = mock.last()
    assert seen["path"] == "/v1/chat/completions" and seen["body"]["model"] == "gpt-4o-mini"
    _assert_client_key_kept_back(mock)


def test_the_path_names_the_model_not_the_body(
    stack: Stack, audit: AuditLog, mock: MockLog
) -> None:
    """`azure_deployment` fixes the path; the body's `model` is ignored, as Azure does."""
    client = openai.AzureOpenAI(
        azure_endpoint=stack.gateway_url, azure_deployment="gpt-4o-mini", api_key=CLIENT,
        api_version=API_VERSION, max_retries=0,
    )  # fmt: skip
    with client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
    rec = audit.wait_for(raw.headers["x-gateway-request-id"])
    assert rec["served_model"] == "gpt-4o-mini" and mock.last()["body"]["model"] == "gpt-4o-mini"


def test_embeddings_at_a_deployment_path(azure_client: openai.AzureOpenAI, audit: AuditLog) -> None:
    raw = azure_client.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input="hello"
    )
    result = raw.parse()
    rec = audit.wait_for(raw.headers["x-gateway-request-id"])
    assert rec["tokens"]["input_tokens"] == result.usage.prompt_tokens > 0
    assert rec["cost_micros"] == expected_cost_micros("text-embedding-3-small", rec["tokens"])


def test_a_claude_model_behind_an_azure_path_is_translated(
    azure_client: openai.AzureOpenAI, audit: AuditLog, mock: MockLog
) -> None:
    raw = azure_client.chat.completions.with_raw_response.create(
        model="claude-haiku-4-5", messages=[{"role": "user", "content": "hi"}], max_tokens=50
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    rec = audit.wait_for(raw.headers["x-gateway-request-id"])
    assert rec["provider"] == "anthropic" and mock.last()["path"] == "/v1/messages"
    assert rec["cost_micros"] == expected_cost_micros("claude-haiku-4-5", rec["tokens"]) > 0
    _assert_client_key_kept_back(mock)


def test_errors_in_openais_format(stack: Stack, azure_client: openai.AzureOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as unknown:
        azure_client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )
    assert unknown.value.code == "model_not_found" and "no-such-model" in unknown.value.message
    bad = openai.AzureOpenAI(
        azure_endpoint=stack.gateway_url, api_key="wrong", api_version=API_VERSION, max_retries=0
    )
    with bad, pytest.raises(openai.AuthenticationError) as denied:
        bad.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    assert isinstance(denied.value.body, dict) and denied.value.code
