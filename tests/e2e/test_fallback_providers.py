"""Fallback chains whose fallback is another provider's wire format, end to end (issue 26,
docs/fallback.md): an Anthropic-SDK request for `claude-sonnet-4-5` whose primary (Anthropic's
API) fails 500 is answered by Claude on Bedrock. The per-attempt filter rewrites the replayed
attempt for Bedrock (path `/model/{id}/invoke[-with-response-stream]`, host, body without
`model`/`stream`, SigV4 last); the mock verifies the signature with botocore over what it
received; the answer reaches the client as Anthropic Messages (JSON, and the event stream
rewritten to SSE), charged at the Bedrock entry's price and audited with both attempts.

The Bedrock target is the `us.` geographic profile: its price ($3.30 / $16.50) differs from
Anthropic's ($3 / $15), so a charge at the wrong target's price fails the test.

Likewise `claude-haiku-4-5` falls back to Claude on Vertex AI (`vertex-claude-haiku-4-5`):
rawPredict / streamRawPredict under the project's path, the model id `claude-haiku-4-5@20251001`
in the path, Vertex's `anthropic_version` in the body, the mock's test bearer token (the mock
refuses any other). The shipped catalog prices that entry as Anthropic's API ($1 / $5), so the
stack's operator catalog gives it a price of its own (VERTEX_PRICE) to tell the two apart."""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import anthropic
import openai
import pytest

from tests.e2e.conftest import start_stack, static_tokens_yaml
from tests.e2e.harness import AuditLog, MockLog, expected_cost_micros, tokens
from tests.e2e.test_bedrock import aws_free_environ

pytestmark = pytest.mark.e2e
BEDROCK = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
VERTEX = "vertex-claude-haiku-4-5"  # Vertex's model id: claude-haiku-4-5@20251001
VERTEX_PATH = "/v1/projects/e2e-project/locations/us-east5/publishers/anthropic/models/"
VERTEX_TOKEN = "mock-vertex-access-token"  # mock/vertex_api.py VERTEX_TOKEN
# A test price for the Vertex entry (USD per 1M input, output tokens): not Anthropic's $1 / $5.
VERTEX_PRICE = ("1.10", "5.50")
CONFIG = f"""
identity:
  allow_anonymous: true
  static_tokens:
{static_tokens_yaml()}sidecar: {{workers: 1}}
providers:
  bedrock:
    schema: bedrock
    region: us-east-1
  azure:
    azure: {{api: deployments, api_version: 2024-10-21, deployments: {{azure/gpt-4o: prod-4o}}}}
  vertex:
    schema: vertex
    vertex:
      project: e2e-project
      location: us-east5
      credentials: {{env: E2E_NO_SUCH_GOOGLE_CREDENTIALS}}  # none: mocked, the mock's token
fallback:
  outlier: false  # the primary fails in every test: ejecting it would skip the retry
  chains:
    claude-sonnet-4-5: [anthropic/claude-sonnet-4-5, bedrock/{BEDROCK}]
    gpt-4o: [openai/gpt-4o, azure/gpt-4o]
    claude-haiku-4-5: [anthropic/claude-haiku-4-5, vertex/{VERTEX}]
"""
CATALOG = f"""
models:
  {VERTEX}: {{input: {VERTEX_PRICE[0]}, output: {VERTEX_PRICE[1]}}}
"""
ASK = [{"role": "user", "content": "hello"}]


class Gateway:
    def __init__(self, stack: Any) -> None:
        self.stack = stack
        self.audit = AuditLog(stack.run_dir / "audit.jsonl")
        assert stack.mock_url is not None
        self.mock = MockLog(stack.mock_url.removesuffix("/v1"))
        self.claude = anthropic.Anthropic(
            base_url=stack.gateway_url, api_key="client-key", max_retries=0
        )
        self.oai = openai.OpenAI(
            base_url=stack.gateway_url + "/v1", api_key="client-key", max_retries=0
        )


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp_path = tmp_path_factory.mktemp("fallback-providers")
    run_dir = tmp_path / "run"
    config = tmp_path / "gateway.yaml"
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG)
    config.write_text(f"catalog: {{files: [{catalog}]}}\n" + CONFIG)
    g = Gateway(start_stack(run_dir, config_path=config, environ=aws_free_environ(run_dir)))
    yield g
    g.claude.close()
    g.oai.close()
    g.stack.stop()


def _served_by_bedrock(gw: Gateway, request_id: str, *, stream: bool) -> dict[str, Any]:
    record = gw.audit.wait_for(request_id)
    assert record["served_by"] == f"bedrock/{BEDROCK}"
    assert record["provider"] == "bedrock" and record["served_model"] == BEDROCK
    assert record["api"] == "anthropic_messages" and record["provider_api"] == "bedrock_invoke"
    assert record["stream"] is stream and record["completed"] is True
    assert record["usage_source"] == "provider"
    attempts = record["attempts"]
    assert [(a["target"], a["status"]) for a in attempts] == [
        ("anthropic/claude-sonnet-4-5", 500),
        (f"bedrock/{BEDROCK}", 200),
    ]
    assert [a["cost_micros"] for a in attempts] == [0, record["cost_micros"]]
    # What each target got: Anthropic's API its own request, Bedrock a signed InvokeModel.
    first, second = gw.mock.received()
    assert first["path"] == "/v1/messages" and first["body"]["model"] == "claude-sonnet-4-5"
    suffix = "invoke-with-response-stream" if stream else "invoke"
    assert second["path"] == f"/model/{BEDROCK}/{suffix}"
    auth = second["headers"]["authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=") and "/us-east-1/bedrock/" in auth
    assert "client-key" not in auth and "x-api-key" not in second["headers"]
    body = second["body"]
    assert body["anthropic_version"] == "bedrock-2023-05-31"
    assert "model" not in body and "stream" not in body and body["max_tokens"] == 64
    return record


def test_a_primary_500_is_answered_by_bedrock_json(gw: Gateway) -> None:
    gw.mock.clear()
    raw = gw.claude.messages.with_raw_response.create(
        model="claude-sonnet-4-5",
        max_tokens=64,
        messages=ASK,
        extra_headers={"x-mock-fault": "claude-sonnet-4-5=500", "x-mock-output-tokens": "7"},
    )
    message = raw.parse()
    assert raw.status_code == 200 and message.type == "message"
    assert len(message.content[0].text.split()) == 7  # type: ignore[union-attr]
    record = _served_by_bedrock(gw, raw.headers["x-gateway-request-id"], stream=False)
    want = tokens(message.usage.input_tokens, output=7)
    assert record["tokens"] == want
    assert record["cost_micros"] == expected_cost_micros(BEDROCK, want)
    assert record["cost_micros"] != expected_cost_micros("claude-sonnet-4-5", want)
    assert raw.headers["x-gateway-cost-usd"] == f"{record['cost_micros'] / 1e6:.6f}"


@pytest.mark.parametrize("chunk_bytes", ["", "7"])
def test_a_primary_500_is_answered_by_bedrock_stream(gw: Gateway, chunk_bytes: str) -> None:
    headers = {"x-mock-fault": "claude-sonnet-4-5=500", "x-mock-output-tokens": "5"}
    if chunk_bytes:
        headers["x-mock-chunk-bytes"] = chunk_bytes
    gw.mock.clear()
    with gw.claude.messages.with_streaming_response.create(
        model="claude-sonnet-4-5",
        max_tokens=64,
        stream=True,
        messages=ASK,
        extra_headers=headers,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        request_id = response.headers["x-gateway-request-id"]
        events = list(response.parse())
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")  # type: ignore[union-attr]
    assert len(text.split()) == 5
    start = events[0].message  # type: ignore[union-attr]
    record = _served_by_bedrock(gw, request_id, stream=True)
    want = tokens(start.usage.input_tokens, output=5)
    assert record["tokens"] == want
    assert record["cost_micros"] == expected_cost_micros(BEDROCK, want)
    assert record["cost_micros"] != expected_cost_micros("claude-sonnet-4-5", want)


def test_a_primary_500_is_answered_by_azure(gw: Gateway) -> None:
    """An OpenAI client's gpt-4o whose primary fails is answered by the Azure deployment: the
    attempt goes to Azure's deployment path and api-version, without the client's credential,
    and is charged at the azure/gpt-4o entry's price."""
    gw.mock.clear()
    raw = gw.oai.chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=ASK,
        max_tokens=32,
        extra_headers={"x-mock-fault": "gpt-4o=500"},
    )
    reply = raw.parse()
    assert raw.status_code == 200 and reply.object == "chat.completion"
    record = gw.audit.wait_for(raw.headers["x-gateway-request-id"])
    assert record["served_by"] == "azure/gpt-4o" and record["provider"] == "azure"
    attempts = record["attempts"]
    assert [(a["target"], a["status"]) for a in attempts] == [
        ("openai/gpt-4o", 500),
        ("azure/gpt-4o", 200),
    ]
    usage = reply.usage
    assert usage is not None
    want = tokens(usage.prompt_tokens, output=usage.completion_tokens)
    assert record["cost_micros"] == expected_cost_micros("azure/gpt-4o", want) > 0
    assert [a["cost_micros"] for a in attempts] == [0, record["cost_micros"]]
    first, second = gw.mock.received()
    assert first["path"] == "/v1/chat/completions"
    assert second["path"] == "/openai/deployments/prod-4o/chat/completions"
    assert second["query"] == "api-version=2024-10-21"
    # A mocked provider is sent no key of the gateway's (config/upstreams.py): only check that
    # the client's credential did not travel.
    assert "client-key" not in str(second["headers"])


def _vertex_cost(want: dict[str, int]) -> int:
    """The micro-dollars `want` (input and output tokens only) costs at VERTEX_PRICE, rounded
    half up."""
    assert want["cached_input_tokens"] == want["cache_write_input_tokens"] == 0
    input_price, output_price = (Fraction(p) for p in VERTEX_PRICE)
    micros = want["input_tokens"] * input_price + want["output_tokens"] * output_price
    return int(micros + Fraction(1, 2))


def _served_by_vertex(gw: Gateway, request_id: str, *, stream: bool) -> dict[str, Any]:
    record = gw.audit.wait_for(request_id)
    assert record["served_by"] == f"vertex/{VERTEX}"
    assert record["provider"] == "vertex" and record["served_model"] == VERTEX
    assert record["api"] == "anthropic_messages"
    assert record["stream"] is stream and record["completed"] is True
    assert record["usage_source"] == "provider"
    attempts = record["attempts"]
    assert [(a["target"], a["status"]) for a in attempts] == [
        ("anthropic/claude-haiku-4-5", 500),
        (f"vertex/{VERTEX}", 200),
    ]
    assert [a["cost_micros"] for a in attempts] == [0, record["cost_micros"]]
    # What each target got: Anthropic's API its own request, Vertex a rawPredict with its token.
    first, second = gw.mock.received()
    assert first["path"] == "/v1/messages" and first["body"]["model"] == "claude-haiku-4-5"
    method = "streamRawPredict" if stream else "rawPredict"
    assert second["path"] == f"{VERTEX_PATH}claude-haiku-4-5@20251001:{method}"
    assert second["headers"]["authorization"] == "Bearer " + VERTEX_TOKEN
    assert "client-key" not in str(second["headers"]) and "x-api-key" not in second["headers"]
    body = second["body"]
    assert body["anthropic_version"] == "vertex-2023-10-16"
    assert "model" not in body and body["max_tokens"] == 64
    assert body.get("stream", False) is stream
    return record


def test_a_primary_500_is_answered_by_vertex_json(gw: Gateway) -> None:
    gw.mock.clear()
    raw = gw.claude.messages.with_raw_response.create(
        model="claude-haiku-4-5",
        max_tokens=64,
        messages=ASK,
        extra_headers={"x-mock-fault": "claude-haiku-4-5=500", "x-mock-output-tokens": "7"},
    )
    message = raw.parse()
    assert raw.status_code == 200 and message.type == "message"
    assert len(message.content[0].text.split()) == 7  # type: ignore[union-attr]
    record = _served_by_vertex(gw, raw.headers["x-gateway-request-id"], stream=False)
    want = tokens(message.usage.input_tokens, output=7)
    assert record["tokens"] == want
    assert record["cost_micros"] == _vertex_cost(want)
    assert record["cost_micros"] != expected_cost_micros("claude-haiku-4-5", want)
    assert raw.headers["x-gateway-cost-usd"] == f"{record['cost_micros'] / 1e6:.6f}"


@pytest.mark.parametrize("chunk_bytes", ["", "7"])
def test_a_primary_500_is_answered_by_vertex_stream(gw: Gateway, chunk_bytes: str) -> None:
    headers = {"x-mock-fault": "claude-haiku-4-5=500", "x-mock-output-tokens": "5"}
    if chunk_bytes:
        headers["x-mock-chunk-bytes"] = chunk_bytes
    gw.mock.clear()
    with gw.claude.messages.with_streaming_response.create(
        model="claude-haiku-4-5",
        max_tokens=64,
        stream=True,
        messages=ASK,
        extra_headers=headers,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        request_id = response.headers["x-gateway-request-id"]
        events = list(response.parse())
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")  # type: ignore[union-attr]
    assert len(text.split()) == 5
    start = events[0].message  # type: ignore[union-attr]
    record = _served_by_vertex(gw, request_id, stream=True)
    want = tokens(start.usage.input_tokens, output=5)
    assert record["tokens"] == want
    assert record["cost_micros"] == _vertex_cost(want)
    assert record["cost_micros"] != expected_cost_micros("claude-haiku-4-5", want)
