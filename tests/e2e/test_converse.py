"""boto3's `bedrock-runtime` client calling Bedrock's native Converse API on the gateway:
`POST /model/{modelId}/converse[-stream]` in, with the user's gateway token as
`Authorization: Bearer`, re-signed with SigV4 out to the mock provider, which verifies the
signature with botocore. Metered to the micro-dollar from Converse's `usage` (and the stream's
`metadata` event), audited with `provider_api`, and refused (budget, token) in Bedrock's JSON
error format, which botocore reads into a `ClientError` with the right code (docs/bedrock.md).

The bearer goes on with a `before-sign` handler and `signature_version=UNSIGNED`: botocore's
own bearer path (`AWS_BEARER_TOKEN_BEDROCK`) refuses a plain-http endpoint, which is what this
test's Envoy listens on (tests/unit/test_converse_client.py shows what it sends over https).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import botocore
import botocore.config
import botocore.exceptions
import pytest
import urllib3.exceptions

from gateway_extproc.identity.devissuer import DevIssuer, ensure_dev_issuer
from gateway_extproc.stack import Stack
from tests.e2e.conftest import start_stack
from tests.e2e.harness import AuditLog, MockLog, expected_cost_micros, tokens
from tests.e2e.test_bedrock import aws_free_environ
from tests.e2e.worst_case import release

pytestmark = pytest.mark.e2e
ALIAS = "bedrock-claude-haiku-4-5"
MODEL = "global.anthropic.claude-haiku-4-5-20251001-v1:0"
US_MODEL = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
CACHE = {"x-mock-cached-tokens": "2048", "x-mock-cache-write-tokens": "512"}
MESSAGES: list[Any] = [{"role": "user", "content": [{"text": "hello"}]}]
CONFIG = """
identity: {dev_issuer: true}
sidecar: {workers: 1}
limits: {max_request_body_bytes: 262144}
providers:
  bedrock:
    schema: bedrock
    region: us-east-1
policies:
  default: {allow: ["*"]}
budgets:
  - name: tiny-converse
    scope: {kind: user}
    match: {groups: [broke]}
    limit_usd: 0.000001
    window: {type: calendar, period: month}
    action: block
  - name: roomy-converse
    scope: {kind: user}
    match: {groups: [capped]}
    limit_usd: 100
    window: {type: calendar, period: month}
    action: block
"""


class Gateway:
    def __init__(self, stack: Stack, issuer: DevIssuer) -> None:
        self.stack = stack
        self.issuer = issuer
        self.audit = AuditLog(stack.run_dir / "audit.jsonl")
        assert stack.mock_url is not None
        self.mock = MockLog(stack.mock_url.removesuffix("/v1"))

    def token(self, *groups: str) -> str:
        user = f"{uuid.uuid4().hex[:8]}@example.com"
        return self.issuer.mint(user, list(groups), None, 3600, {}, time.time())

    def client(self, *groups: str, token: str | None = None, **headers: str) -> Any:
        """boto3's client with the gateway token as a bearer (docs/bedrock.md's snippet) and
        the mock's controls as extra headers. The last response's headers: `self.seen`."""
        bearer = token if token is not None else self.token(*groups)
        client = boto3.client(
            "bedrock-runtime",
            endpoint_url=self.stack.gateway_url,
            region_name="us-east-1",
            config=botocore.config.Config(
                signature_version=botocore.UNSIGNED, retries={"max_attempts": 1}
            ),
        )

        def authorize(request: Any, **_: Any) -> None:
            request.headers["Authorization"] = f"Bearer {bearer}"
            for name, value in headers.items():
                request.headers[name] = value

        client.meta.events.register("before-sign.bedrock-runtime.*", authorize)
        return client


@pytest.fixture(scope="module", params=["observe", "synchronous"])
def gw(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    tmp_path = tmp_path_factory.mktemp(f"converse-{request.param}")
    run_dir = tmp_path / "run"
    issuer = ensure_dev_issuer(run_dir / "dev-issuer")
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG + f"metering: {{mode: {request.param}}}\n")
    g = Gateway(start_stack(run_dir, config_path=config, environ=aws_free_environ(run_dir)), issuer)
    yield g
    g.stack.stop()


def _request_id(response: dict[str, Any]) -> str:
    return str(response["ResponseMetadata"]["HTTPHeaders"]["x-gateway-request-id"])


def _audited(rec: dict[str, Any], *, stream: bool, model: str) -> None:
    api = "bedrock_converse_stream" if stream else "bedrock_converse"
    assert rec["api"] == api and rec["provider_api"] == api
    assert rec["provider"] == "bedrock" and rec["served_model"] == model
    assert rec["stream"] is stream and rec["status"] == 200 and rec["completed"] is True
    assert rec["usage_source"] == "provider"


def _signed_not_bearer(sent: dict[str, Any], token: str) -> None:
    """The mock verified the SigV4 signature; the client's bearer never reached it."""
    auth = sent["headers"]["authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKID")
    assert "/us-east-1/bedrock/aws4_request" in auth
    assert token not in repr(sent)


def test_converse_json_signed_metered_and_audited(gw: Gateway) -> None:
    token = gw.token()
    client = gw.client(token=token, **CACHE, **{"x-mock-output-tokens": "7"})
    gw.mock.clear()
    answer = client.converse(
        modelId=ALIAS,
        system=[{"text": "You are terse."}],
        messages=MESSAGES,
        inferenceConfig={"maxTokens": 64},
    )
    assert len(answer["output"]["message"]["content"][0]["text"].split()) == 7
    assert answer["stopReason"] == "end_turn"
    usage = answer["usage"]
    assert (usage["cacheReadInputTokens"], usage["cacheWriteInputTokens"]) == (2048, 512)
    headers = answer["ResponseMetadata"]["HTTPHeaders"]
    rec = gw.audit.wait_for(_request_id(answer))
    _audited(rec, stream=False, model=MODEL)
    want = tokens(usage["inputTokens"], cached=2048, cache_write=512, output=7)
    assert rec["tokens"] == want
    assert rec["cost_micros"] == expected_cost_micros(MODEL, want) > 0
    assert headers["x-gateway-cost-usd"] == f"{rec['cost_micros'] / 1e6:.6f}"
    (sent,) = gw.mock.received()
    # The alias became the Bedrock id, in the path (`:` percent-encoded, as botocore sends it).
    assert sent["raw_path"] == "/model/global.anthropic.claude-haiku-4-5-20251001-v1%3A0/converse"
    _signed_not_bearer(sent, token)
    assert sent["body"]["inferenceConfig"] == {"maxTokens": 64}
    assert sent["body"]["system"] == [{"text": "You are terse."}]


def test_a_budgeted_converse_without_max_tokens_gets_the_gateways_cap(gw: Gateway) -> None:
    gw.mock.clear()
    client = gw.client("capped", **{"x-mock-output-tokens": "3"})
    answer = client.converse(modelId=MODEL, messages=MESSAGES, inferenceConfig={"topP": 0.5})
    assert answer["usage"]["outputTokens"] == 3
    (sent,) = gw.mock.received()
    config = sent["body"]["inferenceConfig"]
    assert config["topP"] == 0.5 and isinstance(config["maxTokens"], int)
    assert config["maxTokens"] > 0
    rec = gw.audit.wait_for(_request_id(answer))
    assert rec["output_cap_injected"] is True


def test_budget_refusal_is_a_throttling_exception(gw: Gateway) -> None:
    gw.mock.clear()
    with pytest.raises(botocore.exceptions.ClientError) as err:
        gw.client("broke").converse(modelId=ALIAS, messages=MESSAGES)
    response = err.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert response["Error"]["Code"] == "ThrottlingException"
    assert "tiny-converse" in response["Error"]["Message"]
    assert gw.mock.received() == []
    rec = gw.audit.wait_for(_request_id(response))
    assert rec["status"] == 429 and rec["cost_micros"] == 0


def test_a_bad_token_is_unrecognized_client(gw: Gateway) -> None:
    gw.mock.clear()
    with pytest.raises(botocore.exceptions.ClientError) as err:
        gw.client(token="not-a-gateway-token").converse(modelId=ALIAS, messages=MESSAGES)
    response = err.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 401
    assert response["Error"]["Code"] == "UnrecognizedClientException"
    assert gw.mock.received() == []


def test_an_unknown_model_is_refused_in_bedrocks_format(gw: Gateway) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as err:
        gw.client().converse(modelId="no-such-model-v1:0", messages=MESSAGES)
    response = err.value.response
    # Bedrock's own answer to an unknown model id is a ValidationException (400) too
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert response["Error"]["Code"] == "ValidationException"
    assert "no-such-model-v1:0" in response["Error"]["Message"]


def test_envoys_own_refusal_is_in_bedrocks_format(gw: Gateway) -> None:
    """A body over the limit is refused by Envoy itself (its local reply), before the sidecar
    reads it: still a Bedrock error botocore reads a code from."""
    big = [{"role": "user", "content": [{"text": "a" * 300_000}]}]
    with pytest.raises(botocore.exceptions.ClientError) as err:
        gw.client().converse(modelId=ALIAS, messages=big)
    response = err.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 413
    assert response["Error"]["Code"] == "ValidationException"
    assert "262144" in response["Error"]["Message"]


def test_a_provider_error_reaches_the_client_as_bedrocks(gw: Gateway) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as err:
        gw.client(**{"x-mock-status": "429"}).converse(modelId=ALIAS, messages=MESSAGES)
    response = err.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert response["Error"]["Code"] == "ThrottlingException"
    rec = gw.audit.wait_for(_request_id(response))
    assert rec["status"] == 429 and rec["cost_micros"] == 0


def _stream(client: Any, model: str, **kwargs: Any) -> tuple[list[dict[str, Any]], str, str]:
    """(the events, the gateway's request id, the content type) of one ConverseStream."""
    response = client.converse_stream(modelId=model, messages=MESSAGES, **kwargs)
    headers = response["ResponseMetadata"]["HTTPHeaders"]
    return list(response["stream"]), headers["x-gateway-request-id"], headers["content-type"]


@pytest.mark.parametrize("chunk_bytes", ["", "1", "7"])
def test_converse_stream_metered_from_its_metadata_event(gw: Gateway, chunk_bytes: str) -> None:
    """Event-stream frames split at any byte (`x-mock-chunk-bytes`) reach botocore whole and
    are metered from the `metadata` event's usage."""
    headers = {**CACHE, "x-mock-output-tokens": "5"}
    if chunk_bytes:
        headers["x-mock-chunk-bytes"] = chunk_bytes
    token = gw.token()
    gw.mock.clear()
    events, request_id, content_type = _stream(
        gw.client(token=token, **headers), US_MODEL, inferenceConfig={"maxTokens": 32}
    )
    assert content_type == "application/vnd.amazon.eventstream"
    kinds = [next(iter(e)) for e in events]
    assert kinds[0] == "messageStart" and kinds[-2:] == ["messageStop", "metadata"]
    deltas = [e["contentBlockDelta"]["delta"] for e in events if "contentBlockDelta" in e]
    text = "".join(d["text"] for d in deltas)
    assert len(text.split()) == 5
    usage = events[-1]["metadata"]["usage"]
    rec = gw.audit.wait_for(request_id)
    _audited(rec, stream=True, model=US_MODEL)
    want = tokens(usage["inputTokens"], cached=2048, cache_write=512, output=5)
    assert usage["outputTokens"] == 5 and rec["tokens"] == want
    assert rec["cost_micros"] == expected_cost_micros(US_MODEL, want) > 0
    (sent,) = gw.mock.received()
    assert sent["raw_path"] == f"/model/{US_MODEL.replace(':', '%3A')}/converse-stream"
    _signed_not_bearer(sent, token)


def test_a_stream_without_usage_is_charged_an_estimate(gw: Gateway) -> None:
    """No `metadata` event: charged from what was seen, never nothing, and marked so."""
    events, request_id, _ = _stream(
        gw.client(**{"x-mock-omit-usage": "1", "x-mock-output-tokens": "6"}),
        MODEL,
        inferenceConfig={"maxTokens": 16},
    )
    assert "metadata" not in [next(iter(e)) for e in events]
    rec = gw.audit.wait_for(request_id)
    assert rec["usage_source"] != "provider" and rec["cost_micros"] > 0


def test_a_budget_refuses_a_stream_before_it_starts(gw: Gateway) -> None:
    gw.mock.clear()
    with pytest.raises(botocore.exceptions.ClientError) as err:
        gw.client("broke").converse_stream(modelId=ALIAS, messages=MESSAGES)
    assert err.value.response["Error"]["Code"] == "ThrottlingException"
    assert gw.mock.received() == []


def test_a_stream_the_upstream_cuts_is_charged_its_bound(gw: Gateway) -> None:
    """The provider's connection dies mid-stream: no usage was seen, so the request is charged
    the upper bound of its bill (docs/budgets.md), as for the other APIs: the output limit, here
    below what was streamed plus the unseen margin."""
    # The mock holds after its first event: the cut comes once the client has read it (so it
    # has the 200's headers; a drop while a filter still held them would be a 502).
    hold = f"converse-cut-{uuid.uuid4().hex}"
    headers = {
        "x-mock-output-tokens": "30",
        "x-mock-hold-after-events": f"{hold}@1",
        "x-mock-abort-after-events": "10",
    }
    response = gw.client(**headers).converse_stream(
        modelId=MODEL, messages=MESSAGES, inferenceConfig={"maxTokens": 40}
    )
    request_id = response["ResponseMetadata"]["HTTPHeaders"]["x-gateway-request-id"]
    events = iter(response["stream"])
    assert "messageStart" in next(events)
    release(gw.mock.base, hold)
    with pytest.raises(urllib3.exceptions.ProtocolError):  # botocore passes it on
        list(events)
    rec = gw.audit.wait_for(request_id)
    assert rec["usage_source"] == "bound" and rec["completed"] is False
    assert rec["tokens"]["output_tokens"] == 40
    assert rec["cost_micros"] == expected_cost_micros(MODEL, rec["tokens"]) > 0
