"""Trust boundaries through real Envoy: an issuer vouches only for what it may assert, static
tokens are not JWT services, the provider sees only the headers the gateway allows, and a
provider reporting another model is charged at the dearer of the two."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import jwt
import openai
import pytest

from gateway_extproc.stack import Stack
from tests.e2e.conftest import stack_environ, start_stack
from tests.e2e.harness import AuditLog, MockLog, expected_cost_micros
from tests.idp import ISSUER, JwksServer, SigningKey

pytestmark = pytest.mark.e2e
CI_ISSUER = "https://ci.test"
CI_SECRET = "ci-shared-secret-that-is-long-enough-0815"
STATIC_SECRET = "gw-static-docs-bot-4f2a9d"
CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]
VERIFIED_ALICE = {"email": "alice@example.com", "email_verified": True}


def config_text(jwks_url: str) -> str:
    digest = hashlib.sha256(STATIC_SECRET.encode()).hexdigest()
    return f"""
identity:
  issuers:
    corp:
      issuer: {ISSUER}
      audiences: [llm-gateway]
      jwks_url: {jwks_url}
      claims: {{user: [email], groups: [groups], service: [client_id]}}
    ci:                                   # shared secret: services only, no groups (default)
      issuer: {CI_ISSUER}
      audiences: [llm-gateway]
      hs_secret: {{env: TEST_CI_JWT_SECRET}}
      asserts: {{service_prefixes: ["ci-"]}}
  static_tokens:
    docs-bot: {{sha256: "{digest}", groups: [bots]}}
policies:
  default: {{allow: [gpt-4o-mini, "claude-haiku-*"]}}
  rules:
    - static_tokens: [docs-bot]
      allow: [gpt-4o, gpt-4o-mini, "claude-haiku-*"]
providers:
  anthropic:
    forward_headers: [anthropic-beta]
"""


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey("k1")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, key: SigningKey) -> Iterator[Stack]:
    idp = JwksServer(key)
    run_dir = tmp_path_factory.mktemp("boundaries")
    config = run_dir / "gateway.yaml"
    config.write_text(config_text(idp.url))
    env = stack_environ(run_dir, TEST_CI_JWT_SECRET=CI_SECRET)
    s = start_stack(run_dir, config_path=config, environ=env)
    yield s
    s.stop()
    idp.close()


@pytest.fixture(scope="module")
def audit(stack: Stack) -> AuditLog:
    return AuditLog(stack.run_dir / "audit.jsonl")


@pytest.fixture(scope="module")
def mock(stack: Stack) -> MockLog:
    assert stack.mock_url is not None
    return MockLog(stack.mock_url.removesuffix("/v1"))


def ci_token(**claims: Any) -> str:
    now = int(time.time())
    body = {"iss": CI_ISSUER, "aud": "llm-gateway", "iat": now, "exp": now + 600, **claims}
    return jwt.encode(body, CI_SECRET, algorithm="HS256")


def chat(stack: Stack, token: str, model: str = "gpt-4o-mini", **headers: str) -> httpx.Response:
    return httpx.post(
        stack.gateway_url + CHAT,
        json={"model": model, "messages": MESSAGES},
        headers={"authorization": f"Bearer {token}", **headers},
        timeout=30,
    )


# --- principals are qualified by who vouched for them --------------------------------------------


def test_the_ci_issuer_cannot_mint_a_user_token_for_alice(
    stack: Stack, key: SigningKey, mock: MockLog, audit: AuditLog
) -> None:
    forged = ci_token(email="alice@example.com", groups=["ml-team"])
    mock.clear()
    r = chat(stack, forged)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"].startswith("Bearer")
    err = r.json()["error"]
    assert err["code"] == "unauthenticated"
    assert err["message"] == "issuer ci may not assert a user (it may assert services)"
    assert audit.wait_for(r.headers["x-gateway-request-id"])["identity"] is None
    # ...in the Anthropic format through its SDK, too.
    claude = anthropic.Anthropic(base_url=stack.gateway_url, api_key=forged, max_retries=0)
    with claude, pytest.raises(anthropic.AuthenticationError) as exc:
        claude.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=MESSAGES)  # type: ignore[arg-type]
    assert "issuer ci may not assert a user" in str(exc.value)
    # A service outside its prefix is refused as well.
    r = chat(stack, ci_token(client_id="docs-bot"))
    assert r.status_code == 401
    assert "it vouches only for names starting with ci-" in r.json()["error"]["message"]
    assert mock.received() == [], "a refused request reached the provider"

    # What each issuer may assert still works.
    assert chat(stack, key.token(VERIFIED_ALICE)).status_code == 200
    r = chat(stack, ci_token(client_id="ci-build"))
    assert r.status_code == 200, r.text
    ident = audit.wait_for(r.headers["x-gateway-request-id"])["identity"]
    assert (ident["issuer"], ident["kind"], ident["service"]) == ("ci", "service", "ci-build")


def test_a_jwt_service_named_like_a_static_token_does_not_get_its_policy(
    stack: Stack, key: SigningKey, audit: AuditLog
) -> None:
    r = chat(stack, STATIC_SECRET, model="gpt-4o")
    assert r.status_code == 200, r.text
    ident = audit.wait_for(r.headers["x-gateway-request-id"])["identity"]
    assert (ident["static_token"], ident["service"], ident["issuer"]) == (
        "docs-bot",
        None,
        "static",
    )

    impostor = key.token({"sub": "svc", "client_id": "docs-bot"})
    r = chat(stack, impostor, model="gpt-4o")
    assert r.status_code == 403, r.text
    assert r.json()["error"]["message"] == (
        "docs-bot may not use model 'gpt-4o': the default policy allows only gpt-4o-mini, "
        "claude-haiku-*"
    )
    ident = audit.wait_for(r.headers["x-gateway-request-id"])["identity"]
    assert (ident["service"], ident["static_token"], ident["issuer"]) == ("docs-bot", None, "corp")


# --- the provider sees only what the gateway allows ----------------------------------------------


def test_the_provider_receives_only_allowed_headers(stack: Stack, mock: MockLog) -> None:
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    extra = {"x-internal-secret": "do-not-leak", "cookie": "sid=1", "traceparent": traceparent}
    mock.clear()
    with openai.OpenAI(
        base_url=stack.gateway_url + "/v1", api_key=STATIC_SECRET, max_retries=0
    ) as oai:
        raw = oai.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            extra_headers=extra,  # type: ignore[arg-type]
        )
    assert raw.http_response.status_code == 200
    got = mock.last()["headers"]
    assert "x-internal-secret" not in got and "cookie" not in got
    assert got["traceparent"] == traceparent
    assert got["content-type"] == "application/json"
    assert got["user-agent"].startswith("OpenAI/Python")
    assert got["x-stainless-lang"] == "python"
    assert got["x-request-id"] == raw.headers["x-gateway-request-id"]
    assert not any(name.startswith("x-gateway-") for name in got)
    assert "authorization" not in got  # the client's token never travels upstream


def test_a_billing_header_is_refused_unless_the_provider_allows_it(
    stack: Stack, mock: MockLog
) -> None:
    mock.clear()
    oai = openai.OpenAI(
        base_url=stack.gateway_url + "/v1",
        api_key=STATIC_SECRET,
        organization="org-someone-else",
        max_retries=0,
    )
    with oai, pytest.raises(openai.BadRequestError) as exc:
        oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert exc.value.code == "header_not_allowed"
    assert "header openai-organization is not forwarded to provider openai" in exc.value.message
    assert mock.received() == []

    # anthropic-beta is allowed for the anthropic provider by its forward_headers. (A long-context
    # beta is also priced: tests/e2e/test_budget_bounds.py.)
    beta = "token-efficient-tools-2025-02-19"
    with anthropic.Anthropic(
        base_url=stack.gateway_url, api_key=STATIC_SECRET, max_retries=0
    ) as claude:
        reply = claude.messages.create(
            model="claude-haiku-4-5",
            max_tokens=5,
            messages=MESSAGES,  # type: ignore[arg-type]
            extra_headers={"anthropic-beta": beta},
        )
    assert reply.content
    got = mock.last()["headers"]
    assert got["anthropic-beta"] == beta and got["anthropic-version"]


# --- a reported model the gateway did not price ---------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_dearer_reported_model_is_charged_at_its_price(
    stack: Stack, key: SigningKey, audit: AuditLog, stream: bool
) -> None:
    token = key.token(VERIFIED_ALICE)
    with openai.OpenAI(base_url=stack.gateway_url + "/v1", api_key=token, max_retries=0) as oai:
        raw = oai.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=stream,
            extra_headers={"x-mock-response-model": "gpt-4o"},
        )
        if stream:
            chunks = list(raw.parse())  # type: ignore[call-overload]
            assert chunks[-1].model == "gpt-4o"
        else:
            assert raw.parse().model == "gpt-4o"  # type: ignore[union-attr]
    request_id = raw.headers["x-gateway-request-id"]
    record = audit.wait_for(request_id)
    assert (record["served_model"], record["provider_model"]) == ("gpt-4o-mini", "gpt-4o")
    assert record["usage_source"] == "provider"
    dearer = expected_cost_micros("gpt-4o", record["tokens"])
    assert dearer > expected_cost_micros("gpt-4o-mini", record["tokens"])
    assert record["cost_micros"] == dearer
    log = (stack.run_dir / "stack.log").read_text(errors="replace")
    (line,) = [line for line in log.splitlines() if request_id in line and "reported" in line]
    assert "'gpt-4o'" in line and "'gpt-4o-mini'" in line and "dearer_reported" in line
