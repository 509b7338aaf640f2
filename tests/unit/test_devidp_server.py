"""The development IdP over HTTP (gateway_extproc/devidp.py), in process on an ephemeral loopback
port, driven through Authlib's client as the spend page and `gatewayctl login` drive it: the
sign-in form, refusals that never reach an untrusted redirect, the device verification page,
what it logs, and the process refusing to start outside gatewayctl run."""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.httpx_client import OAuth2Client
from authlib.oauth2.rfc8628 import DEVICE_CODE_GRANT_TYPE

from gateway_extproc.devidp import DevIdpServer
from gateway_extproc.identity.dev_oidc_requests import s256_challenge
from gateway_extproc.identity.devissuer import ALLOW_ENV, DEV_ISSUER, JWKS_FILE

REDIRECT = "http://127.0.0.1:8765/callback"


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevIdpServer]:
    server = DevIdpServer(tmp_path_factory.mktemp("devidp") / "dev-issuer", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.close()
    thread.join(5)


def query(url: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


def authorize_url(idp: DevIdpServer, verifier: str, **extra: str) -> str:
    client = OAuth2Client(
        "spend-page", redirect_uri=REDIRECT, scope="openid email", code_challenge_method="S256"
    )
    url, _ = client.create_authorization_url(
        f"{idp.url}/authorize", code_verifier=verifier, **extra
    )
    client.close()
    return str(url)


def test_serves_discovery_and_the_dev_issuers_keys_on_loopback(idp: DevIdpServer) -> None:
    assert idp.httpd.server_address[0] == "127.0.0.1"
    doc = httpx.get(f"{idp.url}/.well-known/openid-configuration").json()
    assert doc["issuer"] == DEV_ISSUER and doc["token_endpoint"] == f"{idp.url}/token"
    jwks = httpx.get(doc["jwks_uri"])
    assert jwks.headers["cache-control"] == "no-store"
    on_disk = (idp.provider.issuer.directory / JWKS_FILE).read_text()
    assert jwks.json() == httpx.Response(200, text=on_disk).json()  # the key the gateway trusts


def test_the_sign_in_form_is_labelled_dev_only_and_escapes_what_it_carries(
    idp: DevIdpServer,
) -> None:
    page = httpx.get(authorize_url(idp, "v" * 64, state='"><script>alert(1)</script>'))
    assert page.status_code == 200 and page.headers["x-frame-options"] == "DENY"
    assert "Local development only" in page.text and "No password" in page.text
    assert 'name="email"' in page.text and 'type="password"' not in page.text
    assert "<script>alert" not in page.text and "&lt;script&gt;" in page.text


def test_code_flow_through_authlib_with_pkce_then_refresh(idp: DevIdpServer) -> None:
    verifier = secrets.token_urlsafe(48)
    form = {**query(authorize_url(idp, verifier, nonce="n-1")), "action": "allow"}
    answer = httpx.post(
        f"{idp.url}/authorize", data={**form, "email": "ada@example.com", "groups": "eng"}
    )
    assert answer.status_code == 302
    back = answer.headers["location"]
    assert back.startswith(REDIRECT + "?") and query(back)["state"] == form["state"]
    # Authlib's default client authentication is HTTP basic with an empty secret.
    client = OAuth2Client("spend-page", redirect_uri=REDIRECT, scope="openid email")
    token = client.fetch_token(
        f"{idp.url}/token", authorization_response=back, code_verifier=verifier
    )
    assert {"access_token", "id_token", "refresh_token"} <= token.keys()
    rotated = client.refresh_token(f"{idp.url}/token", refresh_token=token["refresh_token"])
    assert rotated["refresh_token"] != token["refresh_token"]
    with pytest.raises(OAuthError, match="invalid_grant"):
        client.fetch_token(f"{idp.url}/token", authorization_response=back, code_verifier=verifier)
    client.close()


def test_refusals_go_back_only_to_a_loopback_redirect(idp: DevIdpServer) -> None:
    params = query(authorize_url(idp, "v" * 64))
    evil = {**params, "redirect_uri": "https://evil.example/callback"}
    for answer in (
        httpx.get(f"{idp.url}/authorize", params=evil),
        httpx.post(f"{idp.url}/authorize", data={**evil, "email": "ada@example.com"}),
    ):
        assert answer.status_code == 400 and "location" not in answer.headers
        assert "loopback" in answer.text
    no_pkce = {k: v for k, v in params.items() if not k.startswith("code_challenge")}
    answer = httpx.get(f"{idp.url}/authorize", params=no_pkce)
    assert answer.status_code == 302
    assert query(answer.headers["location"]) == {
        "error": "invalid_request",
        "error_description": "PKCE with code_challenge_method S256 is required",
        "state": params["state"],
    }
    denied = httpx.post(f"{idp.url}/authorize", data={**params, "action": "deny"})
    assert query(denied.headers["location"]) == {"error": "access_denied", "state": params["state"]}
    bad = httpx.post(f"{idp.url}/authorize", data={**params, "email": "not-an-email"})
    assert bad.status_code == 400 and "location" not in bad.headers
    assert "not an email address" in bad.text and 'name="code_challenge"' in bad.text


def test_device_flow_through_the_verification_page(idp: DevIdpServer) -> None:
    client = OAuth2Client("gatewayctl", scope="openid")
    started = client.request(
        "POST",
        f"{idp.url}/device_authorization",
        data={"client_id": "gatewayctl"},
        withhold_token=True,
    )
    device = started.json()
    with pytest.raises(OAuthError, match="authorization_pending"):
        client.fetch_token(
            f"{idp.url}/token", grant_type=DEVICE_CODE_GRANT_TYPE, device_code=device["device_code"]
        )
    page = httpx.get(device["verification_uri_complete"])
    assert page.status_code == 200 and f'value="{device["user_code"]}"' in page.text
    wrong = httpx.post(f"{idp.url}/device", data={"user_code": "BCDF-GHJK", "email": "a@b.c"})
    assert wrong.status_code == 400 and "unknown or expired code" in wrong.text
    approved = httpx.post(
        f"{idp.url}/device",
        data={"user_code": device["user_code"], "email": "ada@example.com", "groups": "eng"},
    )
    assert approved.status_code == 200 and "approved" in approved.text
    idp.provider._devices[device["device_code"]].last_poll = None  # the test does not wait 5 s
    token = client.fetch_token(
        f"{idp.url}/token", grant_type=DEVICE_CODE_GRANT_TYPE, device_code=device["device_code"]
    )
    assert token["token_type"] == "Bearer" and "id_token" in token
    client.close()


def test_logs_say_method_path_and_status_never_a_query_or_a_token(
    idp: DevIdpServer, caplog: pytest.LogCaptureFixture
) -> None:
    verifier = secrets.token_urlsafe(48)
    with caplog.at_level(logging.INFO, logger="gateway.devidp"):
        form = {**query(authorize_url(idp, verifier)), "email": "ada@example.com"}
        httpx.get(f"{idp.url}/authorize", params=form)
        back = httpx.post(f"{idp.url}/authorize", data=form).headers["location"]
        code = query(back)["code"]
        client = OAuth2Client("spend-page", redirect_uri=REDIRECT)
        token = client.fetch_token(
            f"{idp.url}/token", authorization_response=back, code_verifier=verifier
        )
        client.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.devidp"]
    assert lines == ["GET /authorize 200", "POST /authorize 302", "POST /token 200"]
    text = "\n".join(lines)
    for secret in (code, verifier, token["access_token"], token["refresh_token"], "ada@"):
        assert secret not in text


def test_a_body_over_the_limit_is_refused(idp: DevIdpServer) -> None:
    answer = httpx.post(f"{idp.url}/token", content=b"x" * (64 * 1024 + 1))
    assert answer.status_code == 413 and answer.json()["error"] == "invalid_request"


def test_the_process_starts_only_under_gatewayctl_run(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != ALLOW_ENV}
    argv = [sys.executable, "-m", "gateway_extproc.devidp", "--dir", str(tmp_path / "d")]
    refused = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and "GATEWAY_ALLOW_DEV_ISSUER=1" in refused.stderr
    assert not (tmp_path / "d").exists()  # not even a key made


def test_the_s256_challenge_is_rfc_7636s_example() -> None:
    # RFC 7636 appendix B.
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert s256_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
