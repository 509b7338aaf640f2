"""Google Vertex AI behind the gateway, through Envoy + sidecar + the mock's Vertex routes: the
official anthropic SDK (Claude Code's) on /v1/messages reaching a Vertex-routed Claude
(rawPredict / streamRawPredict), google-genai reaching a Vertex-routed Gemini; each metered to the
micro-dollar from the provider's usage and audited. Without Google credentials the provider is
mocked, and the mock accepts only the fixed test token the gateway sends it; the client's own
credential never reaches it. Budgets and policies apply as to any provider."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import httpx
import pytest
from google import genai
from google.genai import errors, types

from gateway_extproc.stack import Stack
from tests.e2e.conftest import stack_environ, start_stack, static_tokens_yaml
from tests.e2e.harness import AuditLog, MockLog, expected_cost_micros, tokens

pytestmark = pytest.mark.e2e
MESSAGES: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Say hello."}]
TOKEN = "mock-vertex-access-token"  # mock/vertex_api.py VERTEX_TOKEN
PREFIX = "/v1/projects/e2e-project/locations/us-east5/publishers"


@pytest.fixture(scope="module")
def vertex_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("vertex-stack")
    config = run_dir / "gateway.yaml"
    config.write_text(
        f"""
sidecar: {{workers: 1}}
identity:
  static_tokens:
{static_tokens_yaml()}providers:
  vertex:
    schema: vertex
    forward_headers: ["x-mock-*"]
    vertex:
      project: e2e-project
      location: us-east5
      credentials: {{env: E2E_NO_SUCH_GOOGLE_CREDENTIALS}}
policies:
  default: {{allow: [vertex-claude-sonnet-4-6, vertex-claude-haiku-4-5, vertex-gemini-2.5-flash]}}
budgets:
  - name: haiku-closed
    scope: {{kind: global}}
    match: {{models: [vertex-claude-haiku-4-5]}}
    limit_usd: 0.000001
    window: {{type: calendar, period: day}}
    action: block
"""
    )
    env = stack_environ(run_dir)
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    stack = start_stack(run_dir, config_path=config, environ=env)
    yield stack
    stack.stop()


@pytest.fixture
def claude(vertex_stack: Stack) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(
        base_url=vertex_stack.gateway_url, api_key="client-key", max_retries=0
    )
    yield client
    client.close()


def _mock(stack: Stack) -> MockLog:
    assert stack.mock_url is not None
    return MockLog(stack.mock_url.removesuffix("/v1"))


def _claude_want(usage: anthropic.types.Usage) -> dict[str, int]:
    return tokens(
        usage.input_tokens,
        cached=usage.cache_read_input_tokens or 0,
        cache_write=usage.cache_creation_input_tokens or 0,
        output=usage.output_tokens,
    )


def test_claude_json_reaches_raw_predict_metered_exactly(
    vertex_stack: Stack, claude: anthropic.Anthropic
) -> None:
    audit = AuditLog(vertex_stack.run_dir / "audit.jsonl")
    raw = claude.messages.with_raw_response.create(
        model="vertex-claude-sonnet-4-6",
        max_tokens=64,
        messages=MESSAGES,
        extra_headers={"x-mock-cached-tokens": "2048", "x-mock-cache-write-tokens": "512"},
    )
    msg = raw.parse()
    want = _claude_want(msg.usage)
    assert want["cached_input_tokens"] == 2048 and want["cache_write_input_tokens"] == 512
    rec = audit.wait_for(raw.headers["x-gateway-request-id"])
    assert rec["tokens"] == want and rec["usage_source"] == "provider"
    assert rec["provider"] == "vertex" and rec["api"] == "anthropic_messages"
    assert rec["cost_micros"] == expected_cost_micros("vertex-claude-sonnet-4-6", want) > 0
    seen = _mock(vertex_stack).last()
    assert seen["path"] == PREFIX + "/anthropic/models/claude-sonnet-4-6:rawPredict"
    assert seen["headers"]["authorization"] == "Bearer " + TOKEN
    assert "client-key" not in str(seen["headers"])  # the client's credential stayed behind
    assert "model" not in seen["body"]
    assert seen["body"]["anthropic_version"] == "vertex-2023-10-16"


@pytest.mark.parametrize("chunk_bytes", ["", "1", "7"])
def test_claude_stream_reaches_stream_raw_predict_metered_exactly(
    vertex_stack: Stack, claude: anthropic.Anthropic, chunk_bytes: str
) -> None:
    audit = AuditLog(vertex_stack.run_dir / "audit.jsonl")
    headers = {"x-mock-output-tokens": "30", "x-mock-cached-tokens": "100"}
    if chunk_bytes:
        headers["x-mock-chunk-bytes"] = chunk_bytes
    with claude.messages.with_streaming_response.create(
        model="vertex-claude-sonnet-4-6",
        max_tokens=500,
        messages=MESSAGES,
        stream=True,
        extra_headers=headers,
    ) as response:
        rid = response.headers["x-gateway-request-id"]
        events = list(response.parse())
    start = next(e for e in events if e.type == "message_start")
    delta = next(e for e in events if e.type == "message_delta")
    want = tokens(
        start.message.usage.input_tokens,
        cached=start.message.usage.cache_read_input_tokens or 0,
        cache_write=start.message.usage.cache_creation_input_tokens or 0,
        output=delta.usage.output_tokens,
    )
    assert want["output_tokens"] == 30
    rec = audit.wait_for(rid)
    assert rec["tokens"] == want and rec["completed"] is True and rec["stream"] is True
    assert rec["cost_micros"] == expected_cost_micros("vertex-claude-sonnet-4-6", want)
    seen = _mock(vertex_stack).last()
    assert seen["path"] == PREFIX + "/anthropic/models/claude-sonnet-4-6:streamRawPredict"
    assert seen["body"]["stream"] is True and "model" not in seen["body"]


def _genai(stack: Stack) -> genai.Client:
    options = types.HttpOptions(base_url=stack.gateway_url)
    return genai.Client(api_key="client-key", http_options=options)


def _gemini_want(usage: types.GenerateContentResponseUsageMetadata) -> dict[str, int]:
    cached = usage.cached_content_token_count or 0
    thoughts = usage.thoughts_token_count or 0
    return tokens(
        (usage.prompt_token_count or 0) - cached,
        cached=cached,
        output=(usage.candidates_token_count or 0) + thoughts,
        reasoning=thoughts,
    )


def test_gemini_on_vertex_json_and_stream_metered_exactly(vertex_stack: Stack) -> None:
    audit = AuditLog(vertex_stack.run_dir / "audit.jsonl")
    mock = _mock(vertex_stack)
    client = _genai(vertex_stack)
    headers = {"x-mock-cached-tokens": "300", "x-mock-reasoning-tokens": "40"}
    config = types.GenerateContentConfig(http_options=types.HttpOptions(headers=headers))
    response = client.models.generate_content(
        model="vertex-gemini-2.5-flash", contents="Say hello.", config=config
    )
    assert response.text and response.usage_metadata is not None
    want = _gemini_want(response.usage_metadata)
    assert want["cached_input_tokens"] == 300 and want["reasoning_tokens"] == 40
    raw = response.sdk_http_response
    assert raw is not None and raw.headers is not None
    rec = audit.wait_for(raw.headers["x-gateway-request-id"])
    assert rec["tokens"] == want and rec["provider"] == "vertex"
    assert rec["cost_micros"] == expected_cost_micros("vertex-gemini-2.5-flash", want) > 0
    seen = mock.last()
    assert seen["path"] == PREFIX + "/google/models/gemini-2.5-flash:generateContent"
    assert seen["headers"]["authorization"] == "Bearer " + TOKEN
    assert "x-goog-api-key" not in seen["headers"]

    stream_headers = {"x-mock-output-tokens": "25", "x-mock-chunk-bytes": "7"}
    chunks = list(
        client.models.generate_content_stream(
            model="vertex-gemini-2.5-flash",
            contents="Say hello.",
            config=types.GenerateContentConfig(
                http_options=types.HttpOptions(headers=stream_headers)
            ),
        )
    )
    assert len(chunks) == 25 and chunks[-1].usage_metadata is not None
    want = _gemini_want(chunks[-1].usage_metadata)
    raw = chunks[0].sdk_http_response
    assert raw is not None and raw.headers is not None
    rec = audit.wait_for(raw.headers["x-gateway-request-id"])
    assert rec["tokens"] == want and rec["completed"] is True
    assert rec["cost_micros"] == expected_cost_micros("vertex-gemini-2.5-flash", want)
    seen = mock.last()
    assert seen["path"] == PREFIX + "/google/models/gemini-2.5-flash:streamGenerateContent"
    assert seen["query"] == "alt=sse"


def test_budget_and_policy_apply(vertex_stack: Stack, claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.RateLimitError):  # the haiku budget is spent: 429
        claude.messages.create(model="vertex-claude-haiku-4-5", max_tokens=16, messages=MESSAGES)
    with pytest.raises(errors.ClientError) as caught:  # not in the policy: 403
        client = _genai(vertex_stack)
        client.models.generate_content(model="vertex-gemini-2.5-pro", contents="hi")
    assert caught.value.code == 403


def test_the_mock_refuses_any_other_token(vertex_stack: Stack) -> None:
    assert vertex_stack.mock_url is not None
    base = vertex_stack.mock_url.removesuffix("/v1")
    body = {"anthropic_version": "vertex-2023-10-16", "max_tokens": 8, "messages": MESSAGES}
    path = PREFIX + "/anthropic/models/claude-sonnet-4-6:rawPredict"
    with httpx.Client(base_url=base) as http:
        wrong = http.post(path, json=body, headers={"authorization": "Bearer client-key"})
        right = http.post(path, json=body, headers={"authorization": "Bearer " + TOKEN})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["status"] == "UNAUTHENTICATED"
    assert right.status_code == 200 and right.json()["usage"]["input_tokens"] > 0


def test_openai_chat_reaches_vertex_claude_translated(vertex_stack: Stack) -> None:
    import openai  # the OpenAI SDK's chat completions, translated to Messages (translate/)

    audit = AuditLog(vertex_stack.run_dir / "audit.jsonl")
    with openai.OpenAI(
        base_url=vertex_stack.gateway_url + "/v1", api_key="client-key", max_retries=0
    ) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="vertex-claude-sonnet-4-6",
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=32,
        )
    completion = raw.parse()
    assert completion.choices[0].message.content and completion.usage is not None
    rec = audit.wait_for(raw.headers["x-gateway-request-id"])
    assert rec["provider"] == "vertex" and rec["usage_source"] == "provider"
    seen = _mock(vertex_stack).last()
    assert seen["path"] == PREFIX + "/anthropic/models/claude-sonnet-4-6:rawPredict"
    assert "model" not in seen["body"] and seen["body"]["max_tokens"] == 32
    assert seen["body"]["anthropic_version"] == "vertex-2023-10-16"
    assert "anthropic-version" not in seen["headers"]
