"""What the CLI reads before it signs anyone in: the gateway's public document
(`GET <gateway>/.well-known/llm-gateway`, config/login.py) and the IdP's OpenID discovery."""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Mapping
from typing import Any

import httpx

from gateway_extproc.config.login import DOCUMENT_VERSION, TOKEN_KINDS, WELL_KNOWN_PATH

DEFAULT_GATEWAY = "http://127.0.0.1:10000"
GATEWAY_ENV = "GATEWAY_URL"
HTTP_TIMEOUT_S = 15.0


class LoginError(Exception):
    """A problem the person can act on; the message says what to do (exit status 1)."""


def gateway_url(value: str | None, environ: Mapping[str, str]) -> str:
    """`--gateway`, else $GATEWAY_URL, else the local gateway; without a trailing slash (the
    credentials file is keyed by it)."""
    url = (value or environ.get(GATEWAY_ENV) or DEFAULT_GATEWAY).strip().rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LoginError(f"the gateway URL must be http(s)://host[:port] (got {url!r})")
    return url


@dataclasses.dataclass(frozen=True)
class LoginSettings:
    """The document's `login` block: how to sign in for this gateway."""

    issuer: str
    discovery_url: str
    client_id: str
    scopes: tuple[str, ...]
    token: str  # access_token | id_token: which one the gateway accepts
    audience: str | None = None
    client_secret_env: str | None = None


@dataclasses.dataclass(frozen=True)
class GatewayDocument:
    gateway: str
    openai_base_url: str
    anthropic_base_url: str
    login: LoginSettings | None


def _absolute(gateway: str, reference: object, what: str) -> str:
    if not isinstance(reference, str) or not reference:
        raise LoginError(f"the gateway's document has no {what} base URL")
    return urllib.parse.urljoin(gateway + "/", reference).rstrip("/")


def parse_document(gateway: str, doc: object) -> GatewayDocument:
    """Pure: the document fetched from `gateway`, its base URLs resolved against it."""
    if not isinstance(doc, dict) or doc.get("version") != DOCUMENT_VERSION:
        raise LoginError(
            f"{gateway}{WELL_KNOWN_PATH} is not a version {DOCUMENT_VERSION} gateway document"
        )
    apis: dict[str, dict[str, Any]] = {}
    for name in ("openai", "anthropic"):
        block = doc.get(name)
        apis[name] = block if isinstance(block, dict) else {}
    login_doc = doc.get("login")
    login = None
    if isinstance(login_doc, dict):
        fields = ("issuer", "discovery_url", "client_id")
        if not all(isinstance(login_doc.get(k), str) and login_doc[k] for k in fields):
            raise LoginError(f"the gateway's login block lacks one of {', '.join(fields)}")
        scopes = login_doc.get("scopes") or []
        token = login_doc.get("token", "access_token")
        if token not in TOKEN_KINDS:
            raise LoginError(f"the gateway asks for an unknown token kind {token!r}")
        login = LoginSettings(
            issuer=login_doc["issuer"],
            discovery_url=login_doc["discovery_url"],
            client_id=login_doc["client_id"],
            scopes=tuple(str(s) for s in scopes),
            token=token,
            audience=login_doc.get("audience"),
            client_secret_env=login_doc.get("client_secret_env"),
        )
    return GatewayDocument(
        gateway=gateway,
        openai_base_url=_absolute(gateway, apis["openai"].get("base_url"), "OpenAI"),
        anthropic_base_url=_absolute(gateway, apis["anthropic"].get("base_url"), "Anthropic"),
        login=login,
    )


def _get_json(http: httpx.Client, url: str, what: str) -> Any:
    try:
        answer = http.get(url, timeout=HTTP_TIMEOUT_S, headers={"accept": "application/json"})
    except httpx.HTTPError as exc:
        raise LoginError(f"cannot reach {what} at {url}: {exc}") from exc
    if answer.status_code != 200:
        raise LoginError(f"{what} at {url} answered HTTP {answer.status_code}")
    try:
        return answer.json()
    except ValueError as exc:
        raise LoginError(f"{what} at {url} is not JSON") from exc


def fetch_document(http: httpx.Client, gateway: str) -> GatewayDocument:
    return parse_document(
        gateway, _get_json(http, gateway + WELL_KNOWN_PATH, "the gateway's document")
    )


@dataclasses.dataclass(frozen=True)
class IdpEndpoints:
    token: str
    device_authorization: str | None
    revocation: str | None


def fetch_idp(http: httpx.Client, login: LoginSettings) -> IdpEndpoints:
    """The IdP's endpoints from its discovery document, which must name the issuer the gateway
    trusts (OpenID Connect Discovery 1.0 section 4.3)."""
    meta = _get_json(http, login.discovery_url, "the IdP's discovery document")
    if not isinstance(meta, dict) or not isinstance(meta.get("token_endpoint"), str):
        raise LoginError(f"{login.discovery_url} names no token_endpoint")
    if meta.get("issuer") != login.issuer:
        raise LoginError(
            f"{login.discovery_url} is for issuer {meta.get('issuer')!r}, but the gateway "
            f"trusts {login.issuer!r}"
        )
    device = meta.get("device_authorization_endpoint")
    revocation = meta.get("revocation_endpoint")
    return IdpEndpoints(
        token=meta["token_endpoint"],
        device_authorization=device if isinstance(device, str) else None,
        revocation=revocation if isinstance(revocation, str) else None,
    )
