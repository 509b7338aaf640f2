"""A Bedrock provider as configured: its upstream (the AWS chain's credentials or, without
them, the mock and its test credentials), the Envoy cluster whose hostname is the signed host,
and the request phase's forward of a translated request, signed last (docs/bedrock.md)."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from gateway_extproc.apis import Schema
from gateway_extproc.config.gateway import GatewayConfig, load_config
from gateway_extproc.config.upstreams import needs_mock, resolve_upstreams
from gateway_extproc.envoy.bootstrap import build
from gateway_extproc.errors import ConfigError
from gateway_extproc.mock.bedrock_api import signature_error
from gateway_extproc.providers.bedrock import signing
from gateway_extproc.request.route import CLUSTER_HEADER, forward_translated
from gateway_extproc.translate.pairs import MESSAGES_TO_BEDROCK
from tests.sidecar_secrets import ACCESS
from tests.unit.test_envoy_config import CA_FILE, PORTS

MOCK = "http://127.0.0.1:18081/v1"
MODEL = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"


@pytest.fixture(autouse=True)
def no_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))


def bedrock_config(tmp_path: Path, **bedrock: Any) -> GatewayConfig:
    doc = {
        "providers": {"bedrock": {"schema": "bedrock", "region": "us-east-1", **bedrock}},
        "mock_unconfigured_providers": True,
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_config(path, KEYS)


# Every built-in provider's key (Azure's endpoint, Vertex's key file: a path, never read when
# resolving): only Bedrock can lack its credential.
KEYS = {
    "OPENAI_API_KEY": "sk-x",
    "ANTHROPIC_API_KEY": "sk-ant-x",
    "GEMINI_API_KEY": "gm-x",
    "AZURE_OPENAI_API_KEY": "az-x",
    "AZURE_OPENAI_ENDPOINT": "https://example.openai.azure.com",
    "GOOGLE_APPLICATION_CREDENTIALS": "/var/run/secrets/vertex/sa.json",
}


def test_without_aws_credentials_the_mock_serves_it(tmp_path: Path) -> None:
    config = bedrock_config(tmp_path)
    assert needs_mock(config, KEYS)
    up = resolve_upstreams(config, KEYS, MOCK)["bedrock"]
    assert (up.schema, up.host, up.port, up.tls, up.mocked) == (
        Schema.BEDROCK,
        "127.0.0.1",
        18081,
        False,
        True,
    )
    assert up.base_path == "/"  # Bedrock's paths start at the root
    assert up.host_header == "127.0.0.1:18081"
    assert up.signer is not None and up.signer.region == "us-east-1"
    assert up.signer.credentials.access_key == signing.MOCK_ACCESS_KEY
    assert up.auth_header is None and up.auth_value is None


def test_without_aws_credentials_and_without_the_mock_is_an_error(tmp_path: Path) -> None:
    config = bedrock_config(tmp_path)
    with pytest.raises(ConfigError) as err:
        resolve_upstreams(config, KEYS, None)
    assert err.value.problems == [
        "providers.bedrock.auth: no credential in the AWS credential chain (environment, "
        "profile, web identity)"
    ]


def test_with_aws_credentials_it_is_bedrock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDREAL")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    config = bedrock_config(tmp_path, region="eu-central-1")
    assert not needs_mock(config, KEYS)
    up = resolve_upstreams(config, KEYS, MOCK)["bedrock"]
    assert (up.host, up.port, up.tls, up.mocked, up.base_path) == (
        "bedrock-runtime.eu-central-1.amazonaws.com",
        443,
        True,
        False,
        "/",
    )
    assert up.host_header == "bedrock-runtime.eu-central-1.amazonaws.com"
    assert up.signer is not None and up.signer.credentials.access_key == "AKIDREAL"
    assert "secret" not in repr(up)


def test_endpoint_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDREAL")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    config = bedrock_config(tmp_path, base_url="https://vpce-0abc.bedrock-runtime.example:8443")
    up = resolve_upstreams(config, KEYS, MOCK)["bedrock"]
    assert up.host_header == "vpce-0abc.bedrock-runtime.example:8443"


def _cluster(config: GatewayConfig, upstreams: dict[str, Any]) -> dict[str, Any]:
    b = build(config, PORTS, upstreams.values(), CA_FILE, ACCESS)
    (c,) = [c for c in b["static_resources"]["clusters"] if c["name"] == "provider_bedrock"]
    return c


def test_envoy_sends_the_signed_host(tmp_path: Path) -> None:
    """The route's auto_host_rewrite sets Host to the endpoint's hostname: the signed host,
    for the mock's static address too (its port included)."""
    config = bedrock_config(tmp_path)
    mocked = _cluster(config, resolve_upstreams(config, KEYS, MOCK))
    (lb,) = mocked["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert lb["endpoint"]["hostname"] == "127.0.0.1:18081"
    production = _cluster(config, resolve_upstreams(config, KEYS, None, assume_credentials=True))
    (lb,) = production["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert lb["endpoint"]["hostname"] == "bedrock-runtime.us-east-1.amazonaws.com"
    assert production["transport_socket"]["typed_config"]["sni"] == (
        "bedrock-runtime.us-east-1.amazonaws.com"
    )


def _set(common: Any) -> dict[str, str]:
    return {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}


@pytest.mark.parametrize("stream", [False, True])
def test_forward_is_signed_over_what_is_sent(tmp_path: Path, stream: bool) -> None:
    config = bedrock_config(tmp_path, forward_headers=["anthropic-beta"])
    up = resolve_upstreams(config, KEYS, MOCK)["bedrock"]
    client = {"model": "x", "max_tokens": 9, "messages": [], "stream": stream}
    common = forward_translated(
        up,
        MESSAGES_TO_BEDROCK,
        MESSAGES_TO_BEDROCK.request(client),
        served_model=MODEL,
        stream=stream,
        max_tokens=100,
        client_headers=("content-type", "anthropic-version", "anthropic-beta", "x-api-key"),
        beta="b-1",
        cluster=up.cluster,
    )
    headers = _set(common)
    action = "invoke-with-response-stream" if stream else "invoke"
    path = f"/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/{action}"
    assert headers[":path"] == path and headers[CLUSTER_HEADER] == "provider_bedrock"
    body = common.body_mutation.body
    assert orjson.loads(body)["anthropic_beta"] == ["b-1"]
    assert headers["content-length"] == str(len(body))
    removed = set(common.header_mutation.remove_headers)
    assert {"anthropic-version", "anthropic-beta", "x-api-key"} <= removed
    received = {**headers, "host": up.host_header}
    signed_at = datetime.datetime.strptime(headers["x-amz-date"], "%Y%m%dT%H%M%SZ")
    now = signed_at.replace(tzinfo=datetime.UTC)  # the verifier's clock: when it was signed
    assert signature_error("POST", path, received, body, now=now) is None
    assert signature_error("POST", path, received, body + b" ", now=now) is not None
