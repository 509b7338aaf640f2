"""The `login:` section: how people and agents get a gateway token from the company's IdP
(`gatewayctl login`, OAuth 2.0 device authorization grant), and the public document the CLI
reads it from (`GET /.well-known/llm-gateway`, served by Envoy: envoy/wellknown.py).

login:
  issuer: corp                 # one of identity.issuers: the tokens it mints are what people use
  client_id: llm-gateway-cli   # a public client registered at the IdP for the device grant
  client_secret_env: CORP_CLI_SECRET   # only for IdPs that insist on a secret for it (the CLI
                                       # reads this variable; the gateway never holds the value)
  discovery_url: https://login.example.com/realms/corp/.well-known/openid-configuration
  scopes: [openid, email, profile, offline_access]
  audience: llm-gateway        # sent as `audience` to IdPs that need one (Auth0, some Okta)
  token: access_token          # or id_token, for IdPs whose access tokens are opaque

Nothing here is secret: the whole section is published to anyone who can reach the gateway.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from gateway_extproc.identity.model import IdentityConfig
from gateway_extproc.identity.reader import SectionReader

WELL_KNOWN_PATH = "/.well-known/llm-gateway"
DOCUMENT_VERSION = 1
DEFAULT_SCOPES = ("openid", "email", "profile", "offline_access")
TOKEN_KINDS = ("access_token", "id_token")
# Where each SDK's base URL is, relative to the gateway's own URL (the document is the same
# whatever name or port a client reached the gateway by: the CLI resolves these against it).
OPENAI_BASE_PATH = "/v1"
ANTHROPIC_BASE_PATH = "/"

_KEYS = frozenset(
    {"issuer", "client_id", "client_secret_env", "discovery_url", "scopes", "audience", "token"}
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")  # RFC 6749 scope-token


@dataclasses.dataclass(frozen=True)
class LoginConfig:
    issuer_name: str  # the identity.issuers entry
    issuer: str  # its `iss`
    client_id: str
    discovery_url: str
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    audience: str | None = None
    token: str = "access_token"  # which token is the gateway credential
    client_secret_env: str | None = None


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_problem(url: str) -> str | None:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - ValueError for a bad port
    except ValueError:
        return f"must be an http(s) URL (got {url!r})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"must be an http(s) URL (got {url!r})"
    if parts.scheme == "http" and not _loopback(parts.hostname.lower()):
        return (
            "must use https: the CLI would fetch the IdP's endpoints over plain http, where "
            "they can be replaced in transit (http:// only to a loopback address)"
        )
    return None


def parse_login(doc: object, identity: IdentityConfig, problems: list[str]) -> LoginConfig | None:
    """The section, checked against the identity issuers it names; None when absent."""
    if doc is None:
        return None
    if not isinstance(doc, Mapping):
        problems.append(f"login: must be a mapping (got {doc!r})")
        return None
    r = SectionReader(doc, "login", problems)
    r.unknown_keys(_KEYS)
    before = len(problems)
    name = r.string("issuer")
    issuers = {i.name: i for i in identity.issuers}
    issuer = issuers.get(name or "")
    if name is None:
        r.problem("issuer", "required: the identity.issuers entry people sign in with")
    elif issuer is None:
        known = ", ".join(sorted(issuers)) or "none configured"
        r.problem("issuer", f"{name!r} is not one of identity.issuers ({known})")
    elif issuer.hs_secret is not None:
        r.problem("issuer", f"{name!r} is a shared-secret (hs_secret) issuer, not an IdP")
    client_id = r.string("client_id")
    if client_id is None:
        r.problem("client_id", "required: the public client registered at the IdP for the CLI")
    secret_env = r.string("client_secret_env")
    if secret_env is not None and not _ENV_NAME.fullmatch(secret_env):
        r.problem("client_secret_env", f"must be an environment variable name (got {secret_env!r})")
    discovery_url = r.string("discovery_url")
    if discovery_url is None and issuer is not None:
        discovery_url = issuer.issuer.rstrip("/") + "/.well-known/openid-configuration"
    if discovery_url is not None and (problem := _url_problem(discovery_url)) is not None:
        r.problem("discovery_url" if "discovery_url" in doc else "issuer", problem)
    scopes = r.strings("scopes", DEFAULT_SCOPES, pattern=_SCOPE)
    audience = r.string("audience")
    token = doc.get("token", "access_token")
    if token not in TOKEN_KINDS:
        r.problem("token", f"must be one of {', '.join(TOKEN_KINDS)} (got {token!r})")
    elif token == "id_token":
        if "openid" not in scopes:
            r.problem("scopes", "must include openid when login.token is id_token")
        if issuer is not None and client_id is not None and client_id not in issuer.audiences:
            r.problem(
                "token",
                f"id_token: an id token's audience is the client_id ({client_id!r}), so the "
                f"gateway accepts it only if identity.issuers.{name}.audiences includes it "
                f"(now {list(issuer.audiences)}): add {client_id!r} there",
            )
    if len(problems) > before or issuer is None or client_id is None or discovery_url is None:
        return None
    return LoginConfig(
        issuer_name=issuer.name,
        issuer=issuer.issuer,
        client_id=client_id,
        discovery_url=discovery_url,
        scopes=scopes,
        audience=audience,
        token=str(token),
        client_secret_env=secret_env,
    )


def discovery_document(login: LoginConfig | None) -> dict[str, Any]:
    """`GET /.well-known/llm-gateway`: what a client needs to reach the gateway and sign in to
    it. Secret-free: it is public. Base URLs are relative to the gateway's URL (RFC 3986
    references). Without a `login:` section there is no `login` block."""
    doc: dict[str, Any] = {
        "version": DOCUMENT_VERSION,
        "openai": {"base_url": OPENAI_BASE_PATH},
        "anthropic": {"base_url": ANTHROPIC_BASE_PATH},
    }
    if login is not None:
        block: dict[str, Any] = {
            "issuer": login.issuer,
            "discovery_url": login.discovery_url,
            "client_id": login.client_id,
            "scopes": list(login.scopes),
            "token": login.token,
        }
        if login.audience is not None:
            block["audience"] = login.audience
        if login.client_secret_env is not None:
            block["client_secret_env"] = login.client_secret_env
        doc["login"] = block
    return doc
