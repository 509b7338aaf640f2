"""What boto3's `bedrock-runtime` client sends for a gateway token, read from botocore itself
(docs/bedrock.md, "Calling the gateway with boto3"): over https, `AWS_BEARER_TOKEN_BEDROCK`
becomes `Authorization: Bearer <token>` with no SigV4; over plain http botocore refuses to
send it, which is why the documented handler exists (and the e2e test uses it)."""

from __future__ import annotations

from typing import Any

import boto3
import botocore
import botocore.config
import botocore.exceptions
import pytest

MESSAGES: list[Any] = [{"role": "user", "content": [{"text": "hi"}]}]


class Sent(Exception):
    """Raised by a before-send handler: the request never leaves the process."""

    def __init__(self, request: Any) -> None:
        super().__init__("sent")
        self.request = request


def _capture(request: Any, **_: Any) -> None:
    raise Sent(request)


def _client(endpoint: str, **config: Any) -> Any:
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=botocore.config.Config(retries={"max_attempts": 1}, **config),
    )


@pytest.fixture
def no_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> pytest.MonkeyPatch:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    return monkeypatch


def test_the_bedrock_bearer_variable_sends_the_token_over_https(
    no_aws: pytest.MonkeyPatch,
) -> None:
    no_aws.setenv("AWS_BEARER_TOKEN_BEDROCK", "gateway-jwt")
    client = _client("https://gateway.example")
    client.meta.events.register("before-send.bedrock-runtime.Converse", _capture)
    with pytest.raises(Sent) as sent:
        client.converse(modelId="bedrock-claude-haiku-4-5", messages=MESSAGES)
    headers = sent.value.request.headers
    assert headers["Authorization"] == b"Bearer gateway-jwt"
    assert "X-Amz-Date" not in headers  # no SigV4 at all
    assert sent.value.request.url.endswith("/model/bedrock-claude-haiku-4-5/converse")


def test_the_bearer_variable_refuses_plain_http(no_aws: pytest.MonkeyPatch) -> None:
    no_aws.setenv("AWS_BEARER_TOKEN_BEDROCK", "gateway-jwt")
    client = _client("http://127.0.0.1:10000")
    with pytest.raises(botocore.exceptions.InvalidEndpointConfigurationError):
        client.converse(modelId="bedrock-claude-haiku-4-5", messages=MESSAGES)


def test_the_documented_handler_sends_the_token_over_http(no_aws: pytest.MonkeyPatch) -> None:
    client = _client("http://127.0.0.1:10000", signature_version=botocore.UNSIGNED)

    def bearer(request: Any, **_: Any) -> None:
        request.headers["Authorization"] = "Bearer gateway-jwt"

    client.meta.events.register("before-sign.bedrock-runtime.*", bearer)
    client.meta.events.register("before-send.bedrock-runtime.ConverseStream", _capture)
    with pytest.raises(Sent) as sent:
        client.converse_stream(modelId="bedrock-claude-haiku-4-5", messages=MESSAGES)
    assert sent.value.request.headers["Authorization"] == b"Bearer gateway-jwt"
