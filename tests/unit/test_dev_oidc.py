"""The development IdP's rules (gateway_extproc/identity/dev_oidc*.py), without HTTP: who may
run it, authorization requests, PKCE, one-use codes, device code states, refresh rotation with
reuse detection, revocation, and its tokens verified as the gateway verifies the dev issuer's."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import jwt
import pytest

from gateway_extproc.config.gateway import load_config
from gateway_extproc.errors import ConfigError
from gateway_extproc.identity.dev_oidc import CODE_TTL_S, DevProvider
from gateway_extproc.identity.dev_oidc_requests import (
    DEFAULT_PORT,
    DEVICE_CODE_GRANT,
    AuthorizeError,
    DevUser,
    OAuthError,
    dev_gate,
    parse_authorization_request,
    parse_user,
    redirect_to,
    s256_challenge,
)
from gateway_extproc.identity.devissuer import (
    ALLOW_ENV,
    DEV_AUDIENCE,
    DEV_ISSUER,
    JWKS_FILE,
    ensure_dev_issuer,
)

NOW = 1_760_000_000.0
BASE = "http://127.0.0.1:10094"
REDIRECT = "http://127.0.0.1:8765/callback"
ADA = DevUser("ada@example.com", ("eng", "gateway-admins"))


@pytest.fixture
def provider(tmp_path: Path) -> DevProvider:
    return DevProvider(ensure_dev_issuer(tmp_path / "dev-issuer"), BASE, device_interval_s=5)


def verify(provider: DevProvider, token: str, audience: str) -> dict[str, Any]:
    """As the gateway does: the dev issuer's jwks.json file, its iss, the audience."""
    jwks = jwt.PyJWKSet.from_dict(json.loads((provider.issuer.directory / JWKS_FILE).read_text()))
    (key,) = jwks.keys
    claims: dict[str, Any] = jwt.decode(
        token, key.key, algorithms=["ES256"], audience=audience, issuer=DEV_ISSUER,
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )  # fmt: skip
    return claims


def auth_params(challenge: str, **changes: str) -> dict[str, str]:
    params = {
        "response_type": "code",
        "client_id": "spend-page",
        "redirect_uri": REDIRECT,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "scope": "openid email",
        "state": "st-1",
        "nonce": "nonce-1",
    }
    return {**params, **changes}


def sign_in(provider: DevProvider, verifier: str, now: float = NOW) -> str:
    request = parse_authorization_request(auth_params(s256_challenge(verifier)))
    return provider.authorize(request, ADA, now)


def exchange(
    provider: DevProvider, code: str, verifier: str, now: float = NOW, **changes: str
) -> dict[str, Any]:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": REDIRECT,
        **changes,
    }
    return provider.token(form, changes.get("client_id", "spend-page"), now)


# -- who may run it ---------------------------------------------------------------------------


def test_runs_only_where_the_dev_issuer_is_allowed() -> None:
    assert dev_gate({ALLOW_ENV: "1"}) is None
    for environ in ({}, {ALLOW_ENV: "0"}, {ALLOW_ENV: "yes"}):
        problem = dev_gate(environ)
        assert problem is not None and ALLOW_ENV in problem and "gatewayctl run" in problem


# -- the authorization request ----------------------------------------------------------------

GOOD = s256_challenge("v" * 43)


@pytest.mark.parametrize(
    ("changes", "error", "redirect"),
    [
        ({"client_id": ""}, "client_id is required", False),
        ({"redirect_uri": ""}, "loopback", False),
        ({"redirect_uri": "https://evil.example/callback"}, "loopback", False),
        ({"redirect_uri": "http://127.0.0.1.evil.example/cb"}, "loopback", False),
        ({"redirect_uri": "http://localhost@evil.example/cb"}, "loopback", False),
        ({"redirect_uri": "http://127.0.0.1:8765/cb#frag"}, "loopback", False),
        ({"redirect_uri": "javascript://127.0.0.1/%0aalert(1)"}, "loopback", False),
        ({"response_type": "token"}, "response_type must be code", True),
        ({"code_challenge_method": "plain"}, "PKCE", True),
        ({"code_challenge": ""}, "PKCE", True),
        ({"code_challenge": "short"}, "PKCE", True),
        ({"code_challenge": GOOD[:-1] + "="}, "PKCE", True),
    ],
)
def test_a_bad_authorization_request_is_refused(
    changes: dict[str, str], error: str, redirect: bool
) -> None:
    with pytest.raises(AuthorizeError, match=error) as refused:
        parse_authorization_request(auth_params(GOOD, **changes))
    # An untrusted redirect URI never receives the error (nor anything else).
    assert refused.value.redirect is redirect


@pytest.mark.parametrize(
    "redirect_uri",
    ["http://127.0.0.1:8765/callback", "http://localhost:3000/cb?x=1", "http://[::1]:9/cb"],
)
def test_loopback_redirects_are_accepted(redirect_uri: str) -> None:
    request = parse_authorization_request(auth_params(GOOD, redirect_uri=redirect_uri))
    assert request.redirect_uri == redirect_uri and request.state == "st-1"
    assert request.fields()["code_challenge_method"] == "S256"
    back = redirect_to(redirect_uri, {"code": "c", "state": "s"})
    assert back.count("?") == 1 and back.endswith("code=c&state=s")


def test_the_sign_in_form_takes_an_email_and_groups() -> None:
    assert parse_user(" ada@example.com ", "eng, gateway-admins eng") == ADA
    assert parse_user("bob@example.com", "") == DevUser("bob@example.com", ())
    for email in ("", "ada", "ada@", "a b@example.com", "x@y@z"):
        with pytest.raises(ValueError, match="not an email"):
            parse_user(email, "")
    with pytest.raises(ValueError, match="not a group name"):
        parse_user("ada@example.com", "eng, <script>")
    with pytest.raises(ValueError, match="at most 32"):
        parse_user("ada@example.com", ",".join(f"g{i}" for i in range(33)))


# -- authorization code + PKCE ------------------------------------------------------------------


def test_a_code_gives_tokens_the_gateway_accepts(provider: DevProvider) -> None:
    verifier = secrets.token_urlsafe(48)
    tokens = exchange(provider, sign_in(provider, verifier), verifier)
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 3600
    access = verify(provider, tokens["access_token"], DEV_AUDIENCE)
    assert access["email"] == "ada@example.com" and access["email_verified"] is True
    assert access["groups"] == ["eng", "gateway-admins"] and access["iat"] == int(NOW)
    assert access["exp"] == int(NOW) + 3600
    ident = verify(provider, tokens["id_token"], "spend-page")
    assert ident["nonce"] == "nonce-1" and ident["email"] == "ada@example.com"
    assert ident["groups"] == ["eng", "gateway-admins"]


def test_a_code_is_used_once_even_after_a_failed_exchange(provider: DevProvider) -> None:
    verifier = secrets.token_urlsafe(48)
    code = sign_in(provider, verifier)
    exchange(provider, code, verifier)
    with pytest.raises(OAuthError, match="invalid_grant: unknown, used"):
        exchange(provider, code, verifier)
    code = sign_in(provider, verifier)
    with pytest.raises(OAuthError, match="PKCE verification failed"):
        exchange(provider, code, secrets.token_urlsafe(48))
    with pytest.raises(OAuthError, match="unknown, used"):  # no second guess at the verifier
        exchange(provider, code, verifier)


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"code_verifier": ""}, "PKCE"),
        ({"code_verifier": "short-but-right"}, "PKCE"),
        ({"redirect_uri": "http://127.0.0.1:8765/other"}, "another client or redirect"),
        ({"client_id": "someone-else"}, "another client or redirect"),
    ],
)
def test_a_code_needs_its_verifier_client_and_redirect(
    provider: DevProvider, changes: dict[str, str], error: str
) -> None:
    verifier = "short-but-right" if changes.get("code_verifier") == "short-but-right" else "v" * 64
    code = sign_in(provider, verifier)
    with pytest.raises(OAuthError, match=error) as refused:
        exchange(provider, code, verifier, **changes)
    assert refused.value.error == "invalid_grant" and refused.value.status == 400


def test_a_code_expires(provider: DevProvider) -> None:
    verifier = "v" * 64
    code = sign_in(provider, verifier)
    with pytest.raises(OAuthError, match="expired"):
        exchange(provider, code, verifier, now=NOW + CODE_TTL_S)
    assert exchange(provider, sign_in(provider, verifier), verifier, now=NOW + CODE_TTL_S - 1)


# -- device authorization (RFC 8628) ----------------------------------------------------------


def poll(provider: DevProvider, device_code: str, now: float, client: str = "cli") -> Any:
    return provider.token(
        {"grant_type": DEVICE_CODE_GRANT, "device_code": device_code}, client, now
    )


def outcome(provider: DevProvider, device_code: str, now: float, client: str = "cli") -> str:
    try:
        poll(provider, device_code, now, client)
    except OAuthError as exc:
        return exc.error
    return "tokens"


def test_a_device_code_waits_slows_down_and_is_approved_once(provider: DevProvider) -> None:
    started = provider.start_device("cli", "openid", NOW)
    assert started["verification_uri"] == f"{BASE}/device"
    assert started["verification_uri_complete"].endswith(f"user_code={started['user_code']}")
    assert started["interval"] == 5 and started["expires_in"] == 600
    device = started["device_code"]
    assert outcome(provider, device, NOW) == "authorization_pending"
    assert outcome(provider, device, NOW + 4) == "slow_down"  # faster than 5 s
    assert outcome(provider, device, NOW + 13) == "slow_down"  # now 10 s: 9 s is too fast
    assert outcome(provider, device, NOW + 13 + 15) == "authorization_pending"  # 15 s
    # The person types the code as they read it: lower case, without the dash.
    typed = started["user_code"].replace("-", "").lower()
    assert provider.decide_device(typed, ADA, NOW + 30).state == "approved"
    assert outcome(provider, device, NOW + 60, client="other-cli") == "invalid_grant"
    tokens = poll(provider, device, NOW + 60)
    assert verify(provider, tokens["access_token"], DEV_AUDIENCE)["groups"] == list(ADA.groups)
    assert verify(provider, tokens["id_token"], "cli")["email"] == ADA.email
    assert outcome(provider, device, NOW + 90) == "invalid_grant"  # used


def test_a_device_code_denied_or_expired(provider: DevProvider) -> None:
    denied = provider.start_device("cli", "openid", NOW)
    assert provider.decide_device(denied["user_code"], None, NOW).state == "denied"
    with pytest.raises(OAuthError, match="already denied"):
        provider.decide_device(denied["user_code"], ADA, NOW)
    assert outcome(provider, denied["device_code"], NOW + 10) == "access_denied"
    assert outcome(provider, denied["device_code"], NOW + 20) == "invalid_grant"  # gone

    expired = provider.start_device("cli", "openid", NOW)
    with pytest.raises(OAuthError, match="unknown or expired"):
        provider.decide_device(expired["user_code"], ADA, NOW + 600)
    assert outcome(provider, expired["device_code"], NOW + 600) == "expired_token"
    with pytest.raises(OAuthError, match="unknown or expired"):
        provider.decide_device("BCDF-GHJK", ADA, NOW)


# -- refresh tokens ------------------------------------------------------------------------------


def refresh(provider: DevProvider, token: str, now: float, client: str = "spend-page") -> Any:
    return provider.token({"grant_type": "refresh_token", "refresh_token": token}, client, now)


def test_refresh_tokens_rotate_and_a_reused_one_ends_the_family(provider: DevProvider) -> None:
    verifier = "v" * 64
    first = exchange(provider, sign_in(provider, verifier), verifier)
    second = refresh(provider, first["refresh_token"], NOW + 100)
    assert second["refresh_token"] != first["refresh_token"]
    access = verify(provider, second["access_token"], DEV_AUDIENCE)
    assert access["iat"] == int(NOW) + 100 and access["email"] == ADA.email
    assert "id_token" in second  # the openid scope is kept
    with pytest.raises(OAuthError, match="reused"):
        refresh(provider, first["refresh_token"], NOW + 200)
    with pytest.raises(OAuthError, match="unknown, revoked"):  # the live one went with it
        refresh(provider, second["refresh_token"], NOW + 300)
    # Another sign-in is its own family, untouched.
    other = exchange(provider, sign_in(provider, verifier), verifier)
    assert refresh(provider, other["refresh_token"], NOW + 400)


def test_refresh_needs_its_client_and_expires(provider: DevProvider) -> None:
    verifier = "v" * 64
    tokens = exchange(provider, sign_in(provider, verifier), verifier)
    with pytest.raises(OAuthError, match="unknown, revoked"):
        refresh(provider, tokens["refresh_token"], NOW, client="cli")
    with pytest.raises(OAuthError, match="unknown, revoked or expired"):
        refresh(provider, tokens["refresh_token"], NOW + provider.refresh_ttl_s)


def test_revocation_ends_the_family(provider: DevProvider) -> None:
    verifier = "v" * 64
    first = exchange(provider, sign_in(provider, verifier), verifier)
    second = refresh(provider, first["refresh_token"], NOW + 1)
    provider.revoke(first["refresh_token"])  # the rotated one still names the family
    with pytest.raises(OAuthError, match="unknown, revoked"):
        refresh(provider, second["refresh_token"], NOW + 2)
    provider.revoke("not-a-token")  # RFC 7009: nothing to say


def test_the_token_endpoint_needs_a_client_and_a_known_grant(provider: DevProvider) -> None:
    with pytest.raises(OAuthError, match="invalid_client") as refused:
        provider.token({"grant_type": "refresh_token"}, "", NOW)
    assert refused.value.status == 401
    with pytest.raises(OAuthError, match="unsupported_grant_type"):
        provider.token({"grant_type": "password"}, "cli", NOW)
    with pytest.raises(OAuthError, match="invalid_client"):
        provider.start_device("", "openid", NOW)


def test_discovery_names_the_tokens_issuer_and_this_servers_endpoints(
    provider: DevProvider,
) -> None:
    doc = provider.discovery()
    assert doc["issuer"] == DEV_ISSUER  # what the tokens' iss says, so clients' checks pass
    for name in ("authorization", "token", "device_authorization", "revocation"):
        assert doc[f"{name}_endpoint"].startswith(BASE + "/")
    assert doc["jwks_uri"] == f"{BASE}/jwks.json"
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert DEVICE_CODE_GRANT in doc["grant_types_supported"]
    assert provider.issuer.jwks()["keys"][0]["kid"] == provider.issuer.kid


# -- its port in the configuration ------------------------------------------------------------


def config(tmp_path: Path, text: str, **environ: str) -> Any:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return load_config(path, {ALLOW_ENV: "1", **environ})


def test_the_port_comes_from_the_config_or_the_environment(tmp_path: Path) -> None:
    assert config(tmp_path, "identity: {dev_issuer: true}\n").dev_idp_port == DEFAULT_PORT == 10094
    text = "identity: {dev_issuer: true, dev_idp_port: 12000}\n"
    assert config(tmp_path, text).dev_idp_port == 12000
    assert config(tmp_path, text, GATEWAY_DEV_IDP_PORT="0").dev_idp_port == 0
    with pytest.raises(ConfigError, match="GATEWAY_DEV_IDP_PORT: must be an integer"):
        config(tmp_path, text, GATEWAY_DEV_IDP_PORT="http")
    with pytest.raises(ConfigError, match=r"identity.dev_idp_port: must be an integer in"):
        config(tmp_path, "identity: {dev_issuer: true, dev_idp_port: 70000}\n")
    with pytest.raises(ConfigError, match=r"dev_idp_port: only with identity\.dev_issuer"):
        config(tmp_path, "identity: {dev_idp_port: 12000}\n")
    # Without the dev issuer the variable is not read (a stray value breaks nothing).
    assert config(tmp_path, "identity: {}\n", GATEWAY_DEV_IDP_PORT="x").dev_issuer is False
