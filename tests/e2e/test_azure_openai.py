"""Azure OpenAI behind the gateway, with the official openai SDK as the client: a model the
catalog routes to `azure` is served at Azure's paths (the v1 API, and the classic deployment
paths with their api-version), the gateway's `api-key` injected and checked by the mock (the
client's token never forwarded), Azure's stream shape (a first chunk with empty `choices` and
the prompt's filter results) metered to the micro-dollar and audited, and Azure's
content-filter 400 passed to the client in OpenAI's format, charged nothing."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from gateway_extproc.stack import Stack
from tests.e2e.conftest import stack_environ, start_stack, static_tokens_yaml
from tests.e2e.harness import AuditLog, MockLog, expected_cost_micros, running_mock, tokens

pytestmark = pytest.mark.e2e
AZURE_KEY = "azure-gateway-owned-key"
CLIENT = "client-key"


@pytest.fixture(scope="module")
def keyed_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An Azure resource that refuses any request without the gateway's own key."""
    with running_mock(tmp_path_factory.mktemp("azure-mock"), "--azure-key", AZURE_KEY) as url:
        yield url


def _stack(run_dir_factory: pytest.TempPathFactory, mock: str, azure_block: str) -> Stack:
    run_dir = run_dir_factory.mktemp("azure-stack")
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
    auth: {{header: api-key, env: TEST_AZURE_KEY}}
    forward_headers: ["x-mock-*"]
    azure: {azure_block}
budgets:
  - name: mini-closed
    scope: {{kind: global}}
    match: {{models: [azure/gpt-4o-mini]}}
    limit_usd: 0.000001
    window: {{type: calendar, period: day}}
    action: block
"""
    )
    env = stack_environ(run_dir, TEST_AZURE_KEY=AZURE_KEY)
    return start_stack(run_dir, config_path=config, environ=env)


@pytest.fixture(scope="module")
def v1_stack(tmp_path_factory: pytest.TempPathFactory, keyed_mock: str) -> Iterator[Stack]:
    stack = _stack(tmp_path_factory, keyed_mock, "{api: v1, deployments: {azure/gpt-4.1: prod-41}}")
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def deployments_stack(tmp_path_factory: pytest.TempPathFactory, keyed_mock: str) -> Iterator[Stack]:
    stack = _stack(tmp_path_factory, keyed_mock, "{api: deployments, api_version: 2024-10-21}")
    yield stack
    stack.stop()


def _client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.gateway_url + "/v1", api_key=CLIENT, max_retries=0)


def _want(usage: openai.types.CompletionUsage) -> dict[str, int]:
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
    reasoning = (
        usage.completion_tokens_details.reasoning_tokens if usage.completion_tokens_details else 0
    )
    return tokens(
        usage.prompt_tokens - (cached or 0),
        cached=cached or 0,
        output=usage.completion_tokens,
        reasoning=reasoning or 0,
    )


def _mismatches(stack: Stack, request_id: str) -> list[str]:
    """The sidecar's reported-model mismatch lines for the request (model_mismatch.py)."""
    log = (stack.run_dir / "stack.log").read_text(errors="replace")
    return [ln for ln in log.splitlines() if request_id in ln and "provider reported model" in ln]


def test_v1_json_metered_key_injected_deployment_in_body(v1_stack: Stack, keyed_mock: str) -> None:
    mock, audit = MockLog(keyed_mock), AuditLog(v1_stack.run_dir / "audit.jsonl")
    raw = _client(v1_stack).chat.completions.with_raw_response.create(
        model="azure/gpt-4.1",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-mock-cached-tokens": "20"},
    )
    completion = raw.parse()
    assert completion.usage is not None and completion.choices[0].message.content
    seen = mock.last()
    assert seen["path"] == "/openai/v1/chat/completions" and seen["query"] == ""
    assert seen["headers"]["api-key"] == AZURE_KEY
    assert CLIENT not in str(seen["headers"])  # the client's credential stayed behind
    assert seen["body"]["model"] == "prod-41"  # the configured deployment
    want = _want(completion.usage)
    assert want["cached_input_tokens"] == 20
    rec = audit.wait_for(raw.headers["x-gateway-request-id"])
    assert rec["provider"] == "azure" and rec["upstream_mocked"] is False
    assert rec["tokens"] == want and rec["usage_source"] == "provider"
    assert rec["cost_micros"] == expected_cost_micros("azure/gpt-4.1", want) > 0
    # the mock answers with the deployment's name: the model asked for, no mismatch
    assert rec["provider_model"] == "prod-41" and completion.model == "prod-41"
    assert _mismatches(v1_stack, raw.headers["x-gateway-request-id"]) == []


@pytest.mark.parametrize("chunk_bytes", ["", "1", "7"])
def test_deployment_path_stream_in_azures_shape_metered(
    deployments_stack: Stack, keyed_mock: str, chunk_bytes: str
) -> None:
    mock, audit = MockLog(keyed_mock), AuditLog(deployments_stack.run_dir / "audit.jsonl")
    headers = {"x-mock-output-tokens": "12"}
    if chunk_bytes:
        headers["x-mock-chunk-bytes"] = chunk_bytes
    raw = _client(deployments_stack).chat.completions.with_raw_response.create(
        model="azure/gpt-4o",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_headers=headers,
    )
    chunks = list(raw.parse())
    seen = mock.last()
    assert seen["path"] == "/openai/deployments/gpt-4o/chat/completions"
    assert seen["query"] == "api-version=2024-10-21"
    assert seen["headers"]["api-key"] == AZURE_KEY
    assert seen["body"]["stream_options"] == {"include_usage": True}  # forced by the gateway
    # Azure's first chunk: no choices, the prompt's filter results (the SDK passes it through).
    assert chunks[0].choices == [] and chunks[0].model_extra is not None
    assert "prompt_filter_results" in chunks[0].model_extra
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 12
    want = _want(usage)
    rec = audit.wait_for(raw.headers["x-gateway-request-id"])
    assert rec["tokens"] == want and rec["completed"] is True and rec["stream"] is True
    assert rec["cost_micros"] == expected_cost_micros("azure/gpt-4o", want) > 0
    # Azure reports the deployment's model (`gpt-4o`), not `azure/gpt-4o`: no mismatch
    assert rec["provider_model"] == "gpt-4o"
    assert _mismatches(deployments_stack, raw.headers["x-gateway-request-id"]) == []


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_azure_reporting_a_dearer_model_is_charged_at_it(
    deployments_stack: Stack, stream: bool
) -> None:
    """A real mismatch still is one: `azure/gpt-4.1` answered by a `gpt-4o` snapshot is charged
    at `azure/gpt-4o` (the same provider's model, found without OpenAI's catalog entries)."""
    audit = AuditLog(deployments_stack.run_dir / "audit.jsonl")
    raw = _client(deployments_stack).chat.completions.with_raw_response.create(
        model="azure/gpt-4.1",
        messages=[{"role": "user", "content": "hi"}],
        stream=stream,
        extra_headers={"x-mock-response-model": "gpt-4o-2024-11-20"},
    )
    list(raw.parse()) if stream else raw.parse()  # type: ignore[call-overload]
    request_id = raw.headers["x-gateway-request-id"]
    rec = audit.wait_for(request_id)
    assert rec["provider_model"] == "gpt-4o-2024-11-20" and rec["usage_source"] == "provider"
    dearer = expected_cost_micros("azure/gpt-4o", rec["tokens"])
    assert rec["cost_micros"] == dearer > expected_cost_micros("azure/gpt-4.1", rec["tokens"])
    (line,) = _mismatches(deployments_stack, request_id)
    assert "dearer_reported" in line and "'azure/gpt-4o'" in line


def test_content_filter_400_reaches_the_client_and_charges_nothing(
    deployments_stack: Stack,
) -> None:
    audit = AuditLog(deployments_stack.run_dir / "audit.jsonl")
    with pytest.raises(openai.BadRequestError) as caught:
        _client(deployments_stack).chat.completions.create(
            model="azure/gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-mock-content-filter": "prompt"},
        )
    assert caught.value.code == "content_filter" and caught.value.param == "prompt"
    request_id = caught.value.response.headers["x-gateway-request-id"]
    rec = audit.wait_for(request_id)
    assert rec["status"] == 400 and rec["cost_micros"] == 0


def test_budget_blocks_an_azure_model(v1_stack: Stack) -> None:
    with pytest.raises(openai.RateLimitError):
        _client(v1_stack).chat.completions.create(
            model="azure/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
