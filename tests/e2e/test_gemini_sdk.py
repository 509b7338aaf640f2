"""The official google-genai SDK through Envoy + sidecar + mock: the Gemini API metered to the
micro-dollar from `usageMetadata` and audited, in both metering modes; its key is the caller's
identity and never reaches the provider, which gets the gateway's own; budgets, policies and the
worst-case bound apply, answered in Gemini's error format."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google import genai
from google.genai import errors, types

from gateway_extproc.stack import Stack
from tests.e2e.conftest import stack_environ, start_stack, static_tokens_yaml
from tests.e2e.harness import AuditLog, MockLog, expected_cost_micros, running_mock, tokens

pytestmark = pytest.mark.e2e
GEMINI_KEY = "AIza-gateway-owned-gemini-key"


def _client(stack: Stack, api_key: str = "client-key") -> genai.Client:
    """Keep it in a variable while it is used: a collected Client closes its connection."""
    options = types.HttpOptions(base_url=stack.gateway_url)
    return genai.Client(api_key=api_key, http_options=options)


def _config(headers: dict[str, str], **kw: object) -> types.GenerateContentConfig:
    return types.GenerateContentConfig(http_options=types.HttpOptions(headers=headers), **kw)  # type: ignore[arg-type]


@pytest.fixture(params=["observe", "synchronous"])
def any_stack(request: pytest.FixtureRequest) -> Stack:
    stack: Stack = request.getfixturevalue(
        "sync_stack" if request.param == "synchronous" else "stack"
    )
    return stack


def _want(usage: types.GenerateContentResponseUsageMetadata) -> dict[str, int]:
    cached = usage.cached_content_token_count or 0
    thoughts = usage.thoughts_token_count or 0
    return tokens(
        (usage.prompt_token_count or 0) - cached,
        cached=cached,
        output=(usage.candidates_token_count or 0) + thoughts,
        reasoning=thoughts,
    )


def test_generate_content_is_metered_exactly(any_stack: Stack) -> None:
    audit = AuditLog(any_stack.run_dir / "audit.jsonl")
    headers = {"x-mock-cached-tokens": "300", "x-mock-reasoning-tokens": "40"}
    client = _client(any_stack)
    response = client.models.generate_content(
        model="gemini-2.5-pro", contents="Say hello.", config=_config(headers)
    )
    assert response.text and response.usage_metadata is not None
    want = _want(response.usage_metadata)
    assert want["cached_input_tokens"] == 300 and want["reasoning_tokens"] == 40
    raw = response.sdk_http_response
    assert raw is not None and raw.headers is not None
    rec = audit.wait_for(raw.headers["x-gateway-request-id"])
    assert rec["tokens"] == want and rec["usage_source"] == "provider"
    assert rec["api"] == "gemini_generate" and rec["provider"] == "gemini"
    assert rec["cost_micros"] == expected_cost_micros("gemini-2.5-pro", want) > 0
    assert raw.headers["x-gateway-cost-usd"] == f"{rec['cost_micros'] / 1e6:.6f}"


@pytest.mark.parametrize("chunk_bytes", ["", "1", "7", "64"])
def test_stream_is_metered_exactly_however_split(stack: Stack, chunk_bytes: str) -> None:
    audit = AuditLog(stack.run_dir / "audit.jsonl")
    headers = {"x-mock-output-tokens": "25", "x-mock-cached-tokens": "50"}
    if chunk_bytes:
        headers["x-mock-chunk-bytes"] = chunk_bytes
    client = _client(stack)
    chunks = list(
        client.models.generate_content_stream(
            model="gemini-2.5-flash", contents="Say hello.", config=_config(headers)
        )
    )
    last = chunks[-1]
    assert len(chunks) == 25 and last.usage_metadata is not None
    want = _want(last.usage_metadata)  # the last chunk's usage is the total
    assert want["output_tokens"] == 25
    raw = chunks[0].sdk_http_response
    assert raw is not None and raw.headers is not None
    rec = audit.wait_for(raw.headers["x-gateway-request-id"])
    assert rec["tokens"] == want and rec["completed"] is True and rec["stream"] is True
    assert rec["cost_micros"] == expected_cost_micros("gemini-2.5-flash", want)


def test_errors_are_in_geminis_format(stack: Stack) -> None:
    client = _client(stack)
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model="gemini-9-unknown", contents="x")
    assert caught.value.code == 400 and caught.value.status == "INVALID_ARGUMENT"
    assert "catalog" in str(caught.value.message)
    with httpx.Client(base_url=stack.gateway_url) as http:
        no_sse = http.post(
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            json={"contents": [{"parts": [{"text": "x"}]}]},
            headers={"x-goog-api-key": "client-key"},
        )
        body_model = http.post(
            "/v1beta/models/gemini-2.5-flash:generateContent",
            json={"model": "gemini-2.5-pro", "contents": [{"parts": [{"text": "x"}]}]},
            headers={"x-goog-api-key": "client-key"},
        )
    for reply, words in ((no_sse, "alt=sse"), (body_model, "not in the body")):
        assert reply.status_code == 400
        error = reply.json()["error"]
        assert error["code"] == 400 and error["status"] == "INVALID_ARGUMENT"
        assert words in error["message"]


# -- a stack with the gateway's own Gemini key, a budget, a policy ------------------------------


@pytest.fixture(scope="module")
def keyed_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Gemini provider that refuses any request without the gateway's own key."""
    with running_mock(tmp_path_factory.mktemp("gemini-mock"), "--gemini-key", GEMINI_KEY) as url:
        yield url


@pytest.fixture(scope="module")
def gemini_stack(tmp_path_factory: pytest.TempPathFactory, keyed_mock: str) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("gemini-stack")
    config = run_dir / "gateway.yaml"
    config.write_text(
        f"""
mock_unconfigured_providers: false
identity:
  static_tokens:
{static_tokens_yaml()}providers:
  openai: null
  anthropic: null
  gemini:
    base_url: {keyed_mock}
    auth: {{header: x-goog-api-key, env: TEST_GATEWAY_GEMINI_KEY}}
    forward_headers: ["x-mock-*"]
policies:
  default: {{allow: [gemini-2.5-pro, gemini-2.5-flash]}}
budgets:
  - name: pro-closed
    scope: {{kind: global}}
    match: {{models: [gemini-2.5-pro]}}
    limit_usd: 0.000001
    window: {{type: calendar, period: day}}
    action: block
  - name: flash-roomy
    scope: {{kind: global}}
    match: {{models: [gemini-2.5-flash]}}
    limit_usd: 100
    window: {{type: calendar, period: day}}
    action: block
"""
    )
    env = stack_environ(run_dir, TEST_GATEWAY_GEMINI_KEY=GEMINI_KEY)
    stack = start_stack(run_dir, config_path=config, environ=env)
    yield stack
    stack.stop()


def test_provider_key_injected_client_key_never_forwarded(
    gemini_stack: Stack, keyed_mock: str
) -> None:
    mock = MockLog(keyed_mock)
    audit = AuditLog(gemini_stack.run_dir / "audit.jsonl")
    client = _client(gemini_stack)
    response = client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert response.text
    seen = mock.last()
    assert seen["headers"]["x-goog-api-key"] == GEMINI_KEY  # the client's JWT stayed behind
    assert "client-key" not in str(seen["headers"])
    # The budget's bound is the provider's to enforce: the cap was injected where Gemini reads it.
    assert seen["body"]["generationConfig"]["maxOutputTokens"] > 0
    raw = response.sdk_http_response
    assert raw is not None and raw.headers is not None
    rec = audit.wait_for(raw.headers["x-gateway-request-id"])
    assert rec["upstream_mocked"] is False and rec["output_cap_injected"] is True
    assert rec["identity"]["static_token"] == "e2e-client"
    # A `key=` in the query is stripped, never forwarded, and authenticates nothing.
    with httpx.Client(base_url=gemini_stack.gateway_url) as http:
        keyed = http.post(
            "/v1beta/models/gemini-2.5-flash:generateContent?key=client-key",
            json={"contents": [{"parts": [{"text": "x"}]}]},
            headers={"x-goog-api-key": "client-key"},
        )
        only_query = http.post(
            "/v1beta/models/gemini-2.5-flash:generateContent?key=client-key",
            json={"contents": [{"parts": [{"text": "x"}]}]},
        )
    assert keyed.status_code == 200
    assert mock.last()["query"] == ""
    assert only_query.status_code == 401
    assert only_query.json()["error"]["status"] == "UNAUTHENTICATED"


def test_budget_blocks_with_a_gemini_429(gemini_stack: Stack) -> None:
    with pytest.raises(errors.ClientError) as caught:
        client = _client(gemini_stack)
        client.models.generate_content(model="gemini-2.5-pro", contents="hi")
    assert caught.value.code == 429 and caught.value.status == "RESOURCE_EXHAUSTED"


def test_policy_refuses_with_a_gemini_403(gemini_stack: Stack) -> None:
    with pytest.raises(errors.ClientError) as caught:
        client = _client(gemini_stack)
        client.models.generate_content(model="gemini-2.5-flash-lite", contents="hi")
    assert caught.value.code == 403 and caught.value.status == "PERMISSION_DENIED"


def test_an_unknown_caller_is_refused(gemini_stack: Stack, tmp_path: Path) -> None:
    with pytest.raises(errors.ClientError) as caught:
        client = _client(gemini_stack, api_key="not-a-token")
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert caught.value.code == 401 and caught.value.status == "UNAUTHENTICATED"


# -- an install upgraded to a release with gemini built in, without a Gemini key ------------------


@pytest.fixture(scope="module")
def upgraded_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    """A production config written before gemini was built in: no mock, OpenAI's key, and no
    word about gemini (or anthropic). The upgrade must start and keep serving OpenAI."""
    run_dir = tmp_path_factory.mktemp("upgraded")
    with running_mock(tmp_path_factory.mktemp("upgraded-provider")) as provider_url:
        config = run_dir / "gateway.yaml"
        config.write_text(
            f"""
mock_unconfigured_providers: false
sidecar: {{workers: 1}}
identity:
  static_tokens:
{static_tokens_yaml()}providers:
  openai:
    base_url: {provider_url}/v1
"""
        )
        env = stack_environ(run_dir, OPENAI_API_KEY="sk-gateway-owned-openai-key")
        stack = start_stack(run_dir, config_path=config, environ=env)
        try:
            yield stack, provider_url
        finally:
            stack.stop()


def test_an_unnamed_provider_without_a_key_is_left_out_not_fatal(
    upgraded_stack: tuple[Stack, str],
) -> None:
    stack, provider_url = upgraded_stack
    assert set(stack.upstreams) == {"openai"}
    client = _client(stack)
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    err = caught.value
    assert err.code == 400 and err.status == "INVALID_ARGUMENT"
    assert "has no configured provider" in str(err.message)
    assert isinstance(err.details, dict)
    assert err.details["error"]["details"][0]["reason"] == "model_not_found"
    assert not MockLog(provider_url).received()  # nothing went anywhere
    with httpx.Client(base_url=stack.gateway_url) as http:
        headers = {"authorization": "Bearer client-key"}
        chat = http.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers=headers,
        )
        models = http.get("/v1/models", headers=headers).json()["data"]
    assert chat.status_code == 200  # OpenAI, configured, is served as before
    listed = {m["id"] for m in models}
    assert "gpt-4o-mini" in listed
    assert not any(m.startswith(("gemini-", "claude-")) for m in listed)
    # Said once at start, by the one worker, for each provider left out.
    log = (stack.run_dir / "stack.log").read_text()
    assert log.count("provider gemini left out") == 1
    assert log.count("provider anthropic left out") == 1
