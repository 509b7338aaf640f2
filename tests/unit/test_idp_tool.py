"""The test IdP (tests/idp.py) itself: the OAuth rules the sign-in tests rely on it to enforce,
driven through Authlib's client so a broken tool fails here, not as a puzzling e2e failure."""

from __future__ import annotations

import base64
import hashlib
import secrets
import urllib.parse
from collections.abc import Iterator

import httpx
import jwt
import pytest
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.httpx_client import OAuth2Client

from tests.idp import DEVICE_GRANT, IdpClient, IdpUser, OidcProvider

REDIRECT = "http://127.0.0.1:9/ui/callback"


@pytest.fixture(scope="module")
def idp() -> Iterator[OidcProvider]:
    provider = OidcProvider(
        [IdpUser("ada@example.com", "pw-ada", ("eng",))],
        [IdpClient("page", (REDIRECT,)), IdpClient("cli")],
        device_interval=0,
    )
    yield provider
    provider.close()


def _sign_in(idp: OidcProvider, challenge: str, password: str = "pw-ada") -> httpx.Response:
    form = {
        "client_id": "page",
        "redirect_uri": REDIRECT,
        "response_type": "code",
        "scope": "openid email",
        "state": "s1",
        "nonce": "n1",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "username": "ada@example.com",
        "password": password,
        "action": "allow",
    }
    return httpx.post(f"{idp.issuer}/authorize", data=form)


def _challenge(verifier: str) -> str:
    return (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )


def test_code_flow_checks_pkce_and_uses_a_code_once(idp: OidcProvider) -> None:
    verifier = secrets.token_urlsafe(48)
    answer = _sign_in(idp, _challenge(verifier))
    assert answer.status_code == 302
    back = urllib.parse.parse_qs(urllib.parse.urlsplit(answer.headers["location"]).query)
    client = OAuth2Client("page", redirect_uri=REDIRECT)
    with pytest.raises(OAuthError, match="PKCE"):
        client.fetch_token(f"{idp.issuer}/token", code=back["code"][0], code_verifier="wrong" * 10)
    answer = _sign_in(idp, _challenge(verifier))
    code = urllib.parse.parse_qs(urllib.parse.urlsplit(answer.headers["location"]).query)["code"][0]
    token = client.fetch_token(f"{idp.issuer}/token", code=code, code_verifier=verifier)
    claims = jwt.decode(token["id_token"], options={"verify_signature": False})
    assert claims["aud"] == "page" and claims["nonce"] == "n1" and claims["groups"] == ["eng"]
    with pytest.raises(OAuthError, match="invalid_grant"):
        client.fetch_token(f"{idp.issuer}/token", code=code, code_verifier=verifier)
    assert _sign_in(idp, _challenge(verifier), password="wrong").status_code == 401


def test_device_flow_pending_slow_down_denied_expired_and_refresh_rotation(
    idp: OidcProvider,
) -> None:
    client = OAuth2Client("cli")

    def start() -> dict[str, str]:
        doc: dict[str, str] = httpx.post(
            f"{idp.issuer}/device_authorization", data={"client_id": "cli", "scope": "openid"}
        ).json()
        return doc

    def poll(device_code: str) -> dict[str, str]:
        return dict(
            client.fetch_token(
                f"{idp.issuer}/token", grant_type=DEVICE_GRANT, device_code=device_code
            )
        )

    doc = start()
    with pytest.raises(OAuthError, match="authorization_pending"):
        poll(doc["device_code"])
    idp.slow_down_polls = 1
    with pytest.raises(OAuthError, match="slow_down"):
        poll(doc["device_code"])
    idp.devices[doc["device_code"]].interval = 0
    idp.approve(doc["user_code"], "ada@example.com")
    token = poll(doc["device_code"])
    assert jwt.decode(token["access_token"], options={"verify_signature": False})["email"] == (
        "ada@example.com"
    )
    refreshed = client.refresh_token(f"{idp.issuer}/token", refresh_token=token["refresh_token"])
    assert refreshed["refresh_token"] != token["refresh_token"]
    with pytest.raises(OAuthError, match="invalid_grant"):  # rotated: the old one is spent
        client.refresh_token(f"{idp.issuer}/token", refresh_token=token["refresh_token"])

    denied = start()
    idp.deny(denied["user_code"])
    with pytest.raises(OAuthError, match="access_denied"):
        poll(denied["device_code"])
    expired = start()
    idp.expire(expired["user_code"])
    with pytest.raises(OAuthError, match="expired_token"):
        poll(expired["device_code"])
