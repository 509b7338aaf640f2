"""Identity through real Envoy: valid tokens are attributed, every attack is refused and never
reaches the provider, keys rotate without a restart, policies decide who may use which model."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from cryptography.hazmat.primitives import serialization

from gateway_extproc.stack import Stack
from tests.e2e.conftest import start_stack
from tests.e2e.harness import AuditLog, MockLog
from tests.idp import ISSUER, JwksServer, SigningKey

pytestmark = pytest.mark.e2e
STATIC_SECRET = "gw-static-docs-bot-7c1e4b"
ALICE = {
    "sub": "u-1",
    "email": "alice@example.com",
    "email_verified": True,
    "groups": ["eng", "ml-team"],
    "org": {"cost_center": "cc-42"},
}
CHAT = "/v1/chat/completions"
BODY = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'


def config_text(jwks_url: str) -> str:
    digest = hashlib.sha256(STATIC_SECRET.encode()).hexdigest()
    return f"""
identity:
  issuers:
    corp:
      issuer: {ISSUER}
      audiences: [llm-gateway]
      jwks_url: {jwks_url}
      jwks_refresh_min_interval_s: 1
      claims:
        user: [email]
        groups: [groups, realm_access.roles]
        service: [client_id]
        attributes: {{cost_center: org.cost_center}}
  static_tokens:
    docs-bot: {{sha256: "{digest}", groups: [bots]}}
policies:
  default: {{allow: ["*"]}}
  rules:
    - groups: [interns]
      allow: [gpt-4o-mini]
"""


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey("k1")


@pytest.fixture(scope="module")
def idp(key: SigningKey) -> Iterator[JwksServer]:
    server = JwksServer(key)
    yield server
    server.close()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, idp: JwksServer) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("secured")
    config = run_dir / "gateway.yaml"
    config.write_text(config_text(idp.url))
    s = start_stack(run_dir, config_path=config)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def audit(secured: Stack) -> AuditLog:
    return AuditLog(secured.run_dir / "audit.jsonl")


@pytest.fixture(scope="module")
def mock(secured: Stack) -> MockLog:
    assert secured.mock_url is not None
    return MockLog(secured.mock_url.removesuffix("/v1"))


def post(
    stack: Stack, headers: dict[str, str], body: bytes = BODY, path: str = CHAT
) -> httpx.Response:
    return httpx.post(
        stack.gateway_url + path,
        content=body,
        headers={"content-type": "application/json", **headers},
        timeout=30,
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    if secret is None:
        return signing_input + "."
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(sig)


def valid_claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": ISSUER,
        "aud": "llm-gateway",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        **ALICE,
        **extra,
    }


def attacks(key: SigningKey) -> dict[str, dict[str, str]]:
    good = key.token(ALICE)
    head, payload, sig = good.split(".")
    public_pem = key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    tampered = json.loads(base64.urlsafe_b64decode(payload + "=="))
    tampered["email"] = "ceo@example.com"
    other = SigningKey("k1")  # same kid, different key: a forged signature
    return {
        "alg none": {
            "authorization": "Bearer "
            + forge({"alg": "none", "typ": "JWT", "kid": "k1"}, valid_claims(), None)
        },
        "key confusion HS256 with the public key": {
            "authorization": "Bearer "
            + forge({"alg": "HS256", "typ": "JWT", "kid": "k1"}, valid_claims(), public_pem)
        },
        "expired": {"authorization": "Bearer " + key.token(ALICE, ttl=-3600)},
        "not yet valid": {
            "authorization": "Bearer " + key.token({**ALICE, "nbf": int(time.time()) + 3600})
        },
        "wrong issuer": {
            "authorization": "Bearer " + key.token({**ALICE, "iss": "https://evil.test/"})
        },
        "wrong audience": {"authorization": "Bearer " + key.token({**ALICE, "aud": "another-api"})},
        "unknown kid": {"authorization": "Bearer " + SigningKey("k-unknown").token(ALICE)},
        "forged signature": {"authorization": "Bearer " + other.token(ALICE)},
        "tampered payload": {
            "authorization": f"Bearer {head}.{_b64(json.dumps(tampered).encode())}.{sig}"
        },
        "truncated": {"authorization": "Bearer " + good[: len(good) // 2]},
        "16 KB token": {"authorization": "Bearer " + key.token({**ALICE, "pad": "x" * 16384})},
        "non-JSON payload": {"authorization": f"Bearer {head}.{_b64(b'not json at all')}.{sig}"},
        "missing Authorization": {},
        "Basic instead of Bearer": {
            "authorization": "Basic " + base64.b64encode(b"alice:secret").decode()
        },
        "spoofed identity headers": {
            "x-gateway-user": "alice@example.com",
            "x-gateway-groups": "admins",
        },
        "wrong static token": {"authorization": "Bearer " + STATIC_SECRET + "x"},
    }


def test_every_attack_is_refused_and_never_reaches_the_provider(
    secured: Stack, key: SigningKey, mock: MockLog, audit: AuditLog
) -> None:
    mock.clear()
    for name, headers in attacks(key).items():
        r = post(secured, headers)
        assert r.status_code == 401, f"{name}: {r.status_code} {r.text}"
        assert r.headers["www-authenticate"].startswith("Bearer"), name
        err = r.json()["error"]
        assert err["code"] == "unauthenticated" and err["message"], name
        assert audit.wait_for(r.headers["x-gateway-request-id"])["status"] == 401
    assert mock.received() == [], "a refused request reached the provider"
    # ...and in the Anthropic format for /v1/messages.
    r = post(
        secured, {"x-api-key": "nonsense", "anthropic-version": "2023-06-01"}, path="/v1/messages"
    )
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_sdks_with_valid_tokens_are_attributed(
    secured: Stack, key: SigningKey, audit: AuditLog, mock: MockLog
) -> None:
    token = key.token(ALICE)
    with openai.OpenAI(base_url=secured.gateway_url + "/v1", api_key=token, max_retries=0) as oai:
        raw = oai.chat.completions.with_raw_response.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-gateway-metadata": '{"app": "docs-bot", "ticket": "OPS-12"}'},
        )
    assert token not in json.dumps(
        mock.last()["headers"]
    )  # the client's token never travels upstream
    rec = audit.wait_for(raw.headers["x-gateway-request-id"])
    assert rec["identity"] == {
        "kind": "user",
        "auth_method": "jwt",
        "user": "alice@example.com",
        "service": None,
        "static_token": None,
        "groups": ["eng", "ml-team"],
        "issuer": "corp",
        "client_id": None,
        "attributes": {"cost_center": "cc-42"},
    }
    assert rec["unverified_metadata"] == {"app": "docs-bot", "ticket": "OPS-12"}

    service_token = key.token({"sub": "svc-1", "client_id": "code-review-bot"})
    for client in (
        anthropic.Anthropic(base_url=secured.gateway_url, api_key=service_token, max_retries=0),
        anthropic.Anthropic(base_url=secured.gateway_url, auth_token=service_token, max_retries=0),
    ):
        with client:
            raw_msg = client.messages.with_raw_response.create(
                model="claude-haiku-4-5",
                max_tokens=10,
                messages=[{"role": "user", "content": "hi"}],
            )
        rec = audit.wait_for(raw_msg.headers["x-gateway-request-id"])
        assert (
            rec["identity"]["kind"] == "service" and rec["identity"]["service"] == "code-review-bot"
        )
        assert rec["identity"]["user"] is None


def test_static_service_token(secured: Stack, audit: AuditLog) -> None:
    r = post(secured, {"authorization": "Bearer " + STATIC_SECRET})
    assert r.status_code == 200, r.text
    ident = audit.wait_for(r.headers["x-gateway-request-id"])["identity"]
    assert (
        ident["static_token"] == "docs-bot"
        and ident["service"] is None  # static tokens are not JWT services
        and ident["auth_method"] == "static_token"
        and ident["groups"] == ["bots"]
    )


def test_spoofed_identity_headers_do_not_change_who_you_are(
    secured: Stack, key: SigningKey, audit: AuditLog
) -> None:
    intern = key.token({"email": "ivan@example.com", "email_verified": True, "groups": ["interns"]})
    r = post(
        secured,
        {
            "authorization": "Bearer " + intern,
            "x-gateway-user": "alice@example.com",
            "x-gateway-groups": "ml-team",
        },
    )
    assert r.status_code == 200
    ident = audit.wait_for(r.headers["x-gateway-request-id"])["identity"]
    assert ident["user"] == "ivan@example.com" and ident["groups"] == ["interns"]


def test_policies_decide_which_models(secured: Stack, key: SigningKey, mock: MockLog) -> None:
    intern = key.token({"email": "ivan@example.com", "email_verified": True, "groups": ["interns"]})
    with openai.OpenAI(base_url=secured.gateway_url + "/v1", api_key=intern, max_retries=0) as oai:
        mock.clear()
        with pytest.raises(openai.PermissionDeniedError) as exc:
            oai.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
            )
        assert "gpt-4o" in exc.value.message
        assert mock.received() == []
        assert [m.id for m in oai.models.list()] == ["gpt-4o-mini"]
        oai.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    with anthropic.Anthropic(base_url=secured.gateway_url, api_key=intern, max_retries=0) as claude:
        with pytest.raises(anthropic.PermissionDeniedError) as aexc:
            claude.messages.create(
                model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            )
        assert "claude-haiku-4-5" in aexc.value.message


def test_bad_metadata_header_is_a_400(secured: Stack, key: SigningKey) -> None:
    r = post(
        secured, {"authorization": "Bearer " + key.token(ALICE), "x-gateway-metadata": "{not json"}
    )
    assert r.status_code == 400 and "x-gateway-metadata" in r.json()["error"]["message"]


def test_key_rotation_without_restart(secured: Stack, idp: JwksServer, key: SigningKey) -> None:
    new_key = SigningKey("k2")
    idp.keys = [key, new_key]  # the IdP publishes the next key, then starts signing with it
    # The new kid is unknown: the gateway refetches the JWKS, at most once per
    # jwks_refresh_min_interval_s (an earlier test's unknown kid may have just used it).
    token = new_key.token(ALICE)
    deadline = time.monotonic() + 10
    while (r := post(secured, {"authorization": "Bearer " + token})).status_code != 200:
        assert r.status_code == 401 and time.monotonic() < deadline, r.text
        time.sleep(0.1)


def test_jwks_down_mid_run_keeps_serving_known_keys(
    secured: Stack, idp: JwksServer, key: SigningKey
) -> None:
    idp.down = True
    try:
        r = post(secured, {"authorization": "Bearer " + key.token(ALICE)})
        assert r.status_code == 200, r.text
    finally:
        idp.down = False


def test_jwks_down_at_start_then_recovers(tmp_path: Path) -> None:
    key = SigningKey("k-late")
    idp = JwksServer(key)
    idp.down = True
    config = tmp_path / "gateway.yaml"
    config.write_text(config_text(idp.url))
    stack = start_stack(tmp_path / "run", config_path=config)
    try:
        token = key.token(ALICE)
        r = post(stack, {"authorization": "Bearer " + token})
        assert r.status_code == 401, r.text
        idp.down = False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = post(stack, {"authorization": "Bearer " + token})
            if r.status_code == 200:
                break
            time.sleep(0.3)
        assert r.status_code == 200, r.text
    finally:
        stack.stop()
        idp.close()
