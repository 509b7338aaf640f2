"""The development IdP as `gatewayctl run` starts it (Stack with start_dev_idp), its tokens
accepted by a real stack: a device-code sign-in (gatewayctl login's steps, through Authlib) and
an authorization-code + PKCE sign-in in a real Chromium, whose client is this test (a loopback
redirect target; Authlib builds the URL and exchanges the code), each followed by an official
openai SDK call with the access token that the audit attributes to the person and groups."""

from __future__ import annotations

import json
import secrets
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import openai
import pytest
from authlib.integrations.httpx_client import OAuth2Client
from authlib.oauth2.rfc8628 import DEVICE_CODE_GRANT_TYPE
from playwright.sync_api import Page

from gateway_extproc.identity.devissuer import DEV_ISSUER, JWKS_FILE
from gateway_extproc.stack import Stack
from tests.browser import shot
from tests.e2e.conftest import start_stack
from tests.e2e.harness import AuditLog

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("dev-idp")
    config = run_dir / "gateway.yaml"
    config.write_text("identity: {dev_issuer: true, dev_idp_port: 0}\n")
    s = start_stack(run_dir, config_path=config, start_dev_idp=True)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def discovery(stack: Stack) -> dict[str, Any]:
    assert stack.dev_idp_url.startswith("http://127.0.0.1:")
    doc: dict[str, Any] = httpx.get(
        f"{stack.dev_idp_url}/.well-known/openid-configuration", timeout=5
    ).json()
    return doc


def chat_as(stack: Stack, access_token: str) -> dict[str, Any]:
    """One official-SDK request with the token; its audit record."""
    with openai.OpenAI(
        base_url=stack.gateway_url + "/v1", api_key=access_token, max_retries=0
    ) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    assert raw.parse().choices[0].message.content
    return AuditLog(stack.run_dir / "audit.jsonl").wait_for(raw.headers["x-gateway-request-id"])


def verified(stack: Stack, token: str, audience: str) -> dict[str, Any]:
    """Checked against the dev issuer's key file, the one the sidecar trusts."""
    keys = json.loads((stack.run_dir / "dev-issuer" / JWKS_FILE).read_text())
    (key,) = jwt.PyJWKSet.from_dict(keys).keys
    claims: dict[str, Any] = jwt.decode(
        token, key.key, algorithms=["ES256"], audience=audience, issuer=DEV_ISSUER
    )
    return claims


def test_a_device_code_sign_in_yields_tokens_the_gateway_accepts(
    stack: Stack, discovery: dict[str, Any]
) -> None:
    assert discovery["issuer"] == DEV_ISSUER
    with OAuth2Client("gatewayctl", scope="openid") as cli:
        started = cli.request(
            "POST",
            discovery["device_authorization_endpoint"],
            data={"client_id": "gatewayctl", "scope": "openid"},
            withhold_token=True,
        ).json()
        # The person opens the verification page and approves with the code shown.
        page = httpx.get(started["verification_uri_complete"], timeout=5)
        assert page.status_code == 200 and "Local development only" in page.text
        approved = httpx.post(
            started["verification_uri"],
            data={"user_code": started["user_code"], "email": "ada@example.com", "groups": "eng"},
            timeout=5,
        )
        assert approved.status_code == 200
        token = cli.fetch_token(
            discovery["token_endpoint"],
            grant_type=DEVICE_CODE_GRANT_TYPE,
            device_code=started["device_code"],
        )
        ident = chat_as(stack, token["access_token"])["identity"]
        assert ident["user"] == "ada@example.com" and ident["groups"] == ["eng"]
        assert ident["issuer"] == "dev" and ident["auth_method"] == "jwt"
        # A refreshed token (rotated) is accepted as well.
        fresh = cli.refresh_token(discovery["token_endpoint"], refresh_token=token["refresh_token"])
        assert fresh["refresh_token"] != token["refresh_token"]
        assert chat_as(stack, fresh["access_token"])["identity"]["user"] == "ada@example.com"


class Callback:
    """The test as an OAuth client's redirect target on loopback: records each callback's query
    and answers with a small page."""

    def __init__(self) -> None:
        self.queries: list[dict[str, str]] = []
        callback = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                if url.path == "/callback":  # not the browser's /favicon.ico
                    callback.queries.append(dict(urllib.parse.parse_qsl(url.query)))
                body = b"<!doctype html><title>signed in</title><h1>Signed in</h1>"
                self.send_response(200)
                self.send_header("content-type", "text/html")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/callback"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def callback() -> Iterator[Callback]:
    target = Callback()
    yield target
    target.close()


def test_chromium_signs_in_with_code_and_pkce(
    stack: Stack, discovery: dict[str, Any], callback: Callback, page: Page, tmp_path: Path
) -> None:
    verifier, nonce = secrets.token_urlsafe(48), secrets.token_urlsafe(12)
    client = OAuth2Client(
        "e2e-browser",
        redirect_uri=callback.url,
        scope="openid email",
        code_challenge_method="S256",
    )
    url, state = client.create_authorization_url(
        discovery["authorization_endpoint"], code_verifier=verifier, nonce=nonce
    )
    page.goto(url)
    assert page.get_by_role("heading", level=1).inner_text() == "Local development sign-in"
    page.get_by_label("Email").fill("grace@example.com")
    page.get_by_label("Groups").fill("ml-team, gateway-admins")
    form = shot(page, "sign-in-form")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(callback.url + "?*")
    assert page.get_by_role("heading").inner_text() == "Signed in"
    shot(page, "signed-in")
    assert form.stat().st_size > 1000
    (back,) = callback.queries
    assert back["state"] == state and "code" in back
    token = client.fetch_token(
        discovery["token_endpoint"],
        authorization_response=page.url,
        code_verifier=verifier,
        state=state,
    )
    client.close()
    claims = verified(stack, token["id_token"], "e2e-browser")
    assert claims["nonce"] == nonce and claims["email"] == "grace@example.com"
    ident = chat_as(stack, token["access_token"])["identity"]
    assert ident["user"] == "grace@example.com"
    assert ident["groups"] == ["gateway-admins", "ml-team"]  # the audit sorts them
