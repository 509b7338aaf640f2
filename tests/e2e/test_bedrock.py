"""The official `anthropic` SDK (what Claude Code uses) calling Claude on AWS Bedrock through the
gateway: `/v1/messages` in, `POST /model/{id}/invoke[-with-response-stream]` signed with SigV4
out, to the mock provider, which verifies the signature with botocore; JSON and event-stream
answers back as Anthropic's, metered to the micro-dollar from the provider's usage and audited
with both APIs; budgets and policy apply (docs/bedrock.md)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from gateway_extproc.identity.devissuer import DevIssuer, ensure_dev_issuer
from gateway_extproc.stack import Stack
from tests.e2e.conftest import start_stack, static_tokens_yaml
from tests.e2e.harness import AuditLog, MockLog, expected_cost_micros, running_mock, tokens

pytestmark = pytest.mark.e2e
ALIAS = "bedrock-claude-haiku-4-5"
MODEL = "global.anthropic.claude-haiku-4-5-20251001-v1:0"
US_MODEL = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
CACHE = {"x-mock-cached-tokens": "2048", "x-mock-cache-write-tokens": "512"}
CONFIG = """
identity: {dev_issuer: true}
sidecar: {workers: 1}
providers:
  bedrock:
    schema: bedrock
    region: us-east-1
    forward_headers: [anthropic-beta]
policies:
  default: {allow: ["*"]}
  rules:
    - groups: [anthropic-only]
      allow: [claude-haiku-4-5]
budgets:
  - name: tiny-bedrock
    scope: {kind: user}
    match: {groups: [broke]}
    limit_usd: 0.000001
    window: {type: calendar, period: month}
    action: block
"""


def aws_free_environ(run_dir: Path, **extra: str) -> dict[str, str]:
    """The test process's environment without any AWS credential or profile: botocore's chain
    finds nothing, so the gateway signs with the mock's test credentials (unless `extra` sets
    some)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith("_API_KEY") and not k.startswith("AWS_")
    }
    missing = str(run_dir / "no-such-aws-file")
    env.update(
        GATEWAY_AUDIT_LOG=str(run_dir / "audit.jsonl"),
        PYTHONUNBUFFERED="1",
        AWS_CONFIG_FILE=missing,
        AWS_SHARED_CREDENTIALS_FILE=missing,
        **extra,
    )
    return env


class Gateway:
    def __init__(self, stack: Stack, issuer: DevIssuer) -> None:
        self.stack = stack
        self.issuer = issuer
        self.audit = AuditLog(stack.run_dir / "audit.jsonl")
        assert stack.mock_url is not None
        self.mock = MockLog(stack.mock_url.removesuffix("/v1"))
        self.clients: list[anthropic.Anthropic] = []

    def client(self, *groups: str) -> anthropic.Anthropic:
        user = f"{uuid.uuid4().hex[:8]}@example.com"
        token = self.issuer.mint(user, list(groups), None, 3600, {}, time.time())
        c = anthropic.Anthropic(base_url=self.stack.gateway_url, api_key=token, max_retries=0)
        self.clients.append(c)
        return c


@pytest.fixture(scope="module", params=["observe", "synchronous"])
def gw(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """Both metering modes (a Bedrock answer is rewritten on the request's stream in both)."""
    tmp_path = tmp_path_factory.mktemp(f"bedrock-{request.param}")
    run_dir = tmp_path / "run"
    issuer = ensure_dev_issuer(run_dir / "dev-issuer")
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG + f"metering: {{mode: {request.param}}}\n")
    environ = aws_free_environ(run_dir)
    g = Gateway(start_stack(run_dir, config_path=config, environ=environ), issuer)
    yield g
    for c in g.clients:
        c.close()
    g.stack.stop()


def _audited(rec: dict[str, Any], *, stream: bool, model: str = MODEL) -> None:
    assert rec["api"] == "anthropic_messages" and rec["provider_api"] == "bedrock_invoke"
    assert rec["provider"] == "bedrock" and rec["served_model"] == model
    assert rec["stream"] is stream and rec["status"] == 200 and rec["completed"] is True
    assert rec["usage_source"] == "provider"


def _upstream(gw: Gateway) -> dict[str, Any]:
    (sent,) = gw.mock.received()
    return sent


def test_json_answer_signed_metered_and_audited(gw: Gateway) -> None:
    gw.mock.clear()
    raw = gw.client().messages.with_raw_response.create(
        model=ALIAS,
        max_tokens=64,
        system="You are terse.",
        messages=[{"role": "user", "content": "hello"}],
        extra_headers={**CACHE, "x-mock-output-tokens": "7"},
    )
    message = raw.parse()
    assert message.type == "message" and len(message.content[0].text.split()) == 7  # type: ignore[union-attr]
    usage = message.usage
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (2048, 512)
    rec = gw.audit.wait_for(raw.headers["x-gateway-request-id"])
    _audited(rec, stream=False)
    want = tokens(usage.input_tokens, cached=2048, cache_write=512, output=7)
    assert rec["tokens"] == want
    assert rec["cost_micros"] == expected_cost_micros(MODEL, want) > 0
    assert raw.headers["x-gateway-cost-usd"] == f"{rec['cost_micros'] / 1e6:.6f}"
    sent = _upstream(gw)
    # The path carries the Bedrock id (`:` percent-encoded, as boto3 sends it); the mock
    # verified the SigV4 signature over this path, the host and the body.
    assert sent["path"] == "/model/global.anthropic.claude-haiku-4-5-20251001-v1:0/invoke"
    assert sent["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKID")
    assert "/us-east-1/bedrock/aws4_request" in sent["headers"]["authorization"]
    body = sent["body"]
    assert body["anthropic_version"] == "bedrock-2023-05-31"
    assert "model" not in body and "stream" not in body and body["max_tokens"] == 64
    for header in ("anthropic-version", "x-api-key"):
        assert header not in sent["headers"]


@pytest.mark.parametrize("chunk_bytes", ["", "1", "7"])
def test_stream_rewritten_to_sse_and_metered(gw: Gateway, chunk_bytes: str) -> None:
    """Event-stream frames split at any byte (`x-mock-chunk-bytes`) reach the SDK as SSE."""
    headers = {**CACHE, "x-mock-output-tokens": "5"}
    if chunk_bytes:
        headers["x-mock-chunk-bytes"] = chunk_bytes
    gw.mock.clear()
    with gw.client().messages.with_streaming_response.create(
        model=US_MODEL,
        max_tokens=32,
        stream=True,
        messages=[{"role": "user", "content": "hello"}],
        extra_headers=headers,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "content-length" not in response.headers
        request_id = response.headers["x-gateway-request-id"]
        events = list(response.parse())
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")  # type: ignore[union-attr]
    assert len(text.split()) == 5
    start = events[0].message  # type: ignore[union-attr]
    delta_usage = next(e for e in events if e.type == "message_delta").usage  # type: ignore[union-attr]
    rec = gw.audit.wait_for(request_id)
    _audited(rec, stream=True, model=US_MODEL)
    want = tokens(start.usage.input_tokens, cached=2048, cache_write=512, output=5)
    assert delta_usage.output_tokens == 5 and rec["tokens"] == want
    assert rec["cost_micros"] == expected_cost_micros(US_MODEL, want) > 0
    path = _upstream(gw)["path"]
    assert path == f"/model/{US_MODEL}/invoke-with-response-stream"


def test_anthropic_beta_header_moves_into_the_body(gw: Gateway) -> None:
    gw.mock.clear()
    gw.client().messages.create(
        model=ALIAS,
        max_tokens=8,
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"anthropic-beta": "token-efficient-tools-2025-02-19, interleaved"},
    )
    sent = _upstream(gw)
    assert sent["body"]["anthropic_beta"] == ["token-efficient-tools-2025-02-19", "interleaved"]
    assert "anthropic-beta" not in sent["headers"]


def test_budget_blocks_a_bedrock_request(gw: Gateway) -> None:
    gw.mock.clear()
    with pytest.raises(anthropic.RateLimitError) as err:
        gw.client("broke").messages.create(
            model=ALIAS, max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        )
    assert "tiny-bedrock" in str(err.value)
    assert gw.mock.received() == []


def test_policy_refuses_a_bedrock_model(gw: Gateway) -> None:
    gw.mock.clear()
    with pytest.raises(anthropic.PermissionDeniedError) as err:
        gw.client("anthropic-only").messages.create(
            model=ALIAS, max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        )
    assert ALIAS in str(err.value)
    assert gw.mock.received() == []


def test_bedrock_error_becomes_anthropic_error(gw: Gateway) -> None:
    with pytest.raises(anthropic.RateLimitError) as err:
        gw.client().messages.create(
            model=ALIAS,
            max_tokens=8,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-mock-status": "429"},
        )
    body = err.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error"
    rec = gw.audit.wait_for(err.value.response.headers["x-gateway-request-id"])
    assert rec["status"] == 429 and rec["cost_micros"] == 0


def test_a_signature_that_does_not_match_is_refused(tmp_path: Path) -> None:
    """AWS credentials from the environment (the chain), the endpoint overridden to a mock that
    knows another secret for that key: Bedrock's 403, as Anthropic's permission error."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with running_mock(tmp_path) as mock_url:
        config = tmp_path / "gateway.yaml"
        config.write_text(
            f"identity:\n  static_tokens:\n{static_tokens_yaml()}sidecar: {{workers: 1}}\n"
            f"providers:\n  bedrock:\n    schema: bedrock\n    region: us-west-2\n"
            f"    base_url: {mock_url}\n"
        )
        environ = aws_free_environ(
            run_dir,
            AWS_ACCESS_KEY_ID="AKIDGATEWAYMOCK00000",  # the mock's key id, not its secret
            AWS_SECRET_ACCESS_KEY="not-the-secret-the-mock-knows",
        )
        stack = start_stack(run_dir, config_path=config, environ=environ)
        try:
            client = anthropic.Anthropic(
                base_url=stack.gateway_url, api_key="client-key", max_retries=0
            )
            with pytest.raises(anthropic.PermissionDeniedError) as err:
                client.messages.create(
                    model=ALIAS, max_tokens=8, messages=[{"role": "user", "content": "hi"}]
                )
            client.close()
        finally:
            stack.stop()
    body = err.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "permission_error"
    assert "signature we calculated does not match" in body["error"]["message"]
