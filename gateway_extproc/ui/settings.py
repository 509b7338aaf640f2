"""The `spend_page:` section: parsed once, every problem reported with its path.

spend_page:
  enabled: false               # served by sidecar worker 0, through Envoy's admin JSON listener
  port: 10092                  # worker 0's loopback port for it (a unix socket with admin TLS)
  public_url: http://127.0.0.1:10091   # where people open it (the redirect URI's base)
  session_ttl_s: 28800         # a sign-in lasts this long
  demo_data: false             # seed a labelled 30-day demo history when the rollups are empty
  oidc:                        # sign-in with the IdP (authorization code + PKCE); optional
    issuer: corp               # an identity.issuers name (with a JWKS): verifies the id_token
    client_id: llm-gateway-page
    client_secret_env: PAGE_CLIENT_SECRET   # optional: a confidential client's secret
    discovery_url: null        # default <issuer>/.well-known/openid-configuration
    scopes: [openid, email, profile]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from gateway_extproc.admin.auth import DEV_ISSUER_NAME
from gateway_extproc.identity.model import IdentityConfig

DEFAULT_PAGE_PORT = 10092
DEFAULT_SESSION_TTL_S = 8 * 3600
SOCKET_NAME = "spend-page.sock"  # beside admin_api.socket


@dataclasses.dataclass(frozen=True)
class OidcSettings:
    issuer: str  # the identity issuer's name
    client_id: str
    client_secret_env: str | None = None
    discovery_url: str | None = None
    scopes: tuple[str, ...] = ("openid", "email", "profile")


@dataclasses.dataclass(frozen=True)
class SpendPageConfig:
    enabled: bool = False
    port: int = DEFAULT_PAGE_PORT
    public_url: str = ""  # "": the admin JSON listener's own address
    session_ttl_s: int = DEFAULT_SESSION_TTL_S
    demo_data: bool = False
    oidc: OidcSettings | None = None

    @property
    def secure_cookies(self) -> bool:
        return self.public_url.startswith("https://")

    @property
    def redirect_uri(self) -> str:
        return f"{self.public_url}/ui/callback"


def page_socket(admin_socket: str | None) -> str | None:
    """The page's unix socket (with admin TLS, Envoy reaches worker 0 over sockets only)."""
    if admin_socket is None:
        return None
    return str(PurePosixPath(admin_socket).with_name(SOCKET_NAME))


def _int(doc: Mapping[object, object], key: str, lo: int, hi: int, problems: list[str]) -> int:
    default = getattr(SpendPageConfig(), key)
    value = doc.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        problems.append(f"spend_page.{key}: must be an integer in [{lo}, {hi}] (got {value!r})")
        return int(default)
    return value


def _oidc(doc: object, problems: list[str]) -> OidcSettings | None:
    if doc is None:
        return None
    if not isinstance(doc, Mapping):
        problems.append("spend_page.oidc: must be a mapping")
        return None
    known = {f.name for f in dataclasses.fields(OidcSettings)}
    for extra in sorted(set(map(str, doc)) - known):
        problems.append(f"spend_page.oidc.{extra}: unknown key")
    texts: dict[str, str | None] = {}
    for key in ("issuer", "client_id", "client_secret_env", "discovery_url"):
        value = doc.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            problems.append(f"spend_page.oidc.{key}: must be a non-empty string (got {value!r})")
            value = None
        texts[key] = value
    for key in ("issuer", "client_id"):
        if doc.get(key) is None:
            problems.append(f"spend_page.oidc.{key}: required")
    url = texts["discovery_url"]
    if url is not None and urlsplit(url).scheme not in ("http", "https"):
        problems.append(f"spend_page.oidc.discovery_url: must be an http(s) URL (got {url!r})")
    scopes = doc.get("scopes", list(OidcSettings.scopes))
    if not isinstance(scopes, list) or not all(isinstance(s, str) and s for s in scopes):
        problems.append(f"spend_page.oidc.scopes: must be a list of scopes (got {scopes!r})")
        scopes = list(OidcSettings.scopes)
    if "openid" not in scopes:
        problems.append("spend_page.oidc.scopes: must include openid (the id_token signs in)")
    return OidcSettings(
        issuer=texts["issuer"] or "",
        client_id=texts["client_id"] or "",
        client_secret_env=texts["client_secret_env"],
        discovery_url=url,
        scopes=tuple(dict.fromkeys(scopes)),
    )


def parse_spend_page(doc: object, problems: list[str]) -> SpendPageConfig:
    if doc is None:
        return SpendPageConfig()
    if not isinstance(doc, Mapping):
        problems.append("spend_page: must be a mapping")
        return SpendPageConfig()
    for extra in sorted(set(map(str, doc)) - {f.name for f in dataclasses.fields(SpendPageConfig)}):
        problems.append(f"spend_page.{extra}: unknown key")
    flags = {}
    for key in ("enabled", "demo_data"):
        value = doc.get(key, False)
        if not isinstance(value, bool):
            problems.append(f"spend_page.{key}: must be true or false (got {value!r})")
            value = False
        flags[key] = value
    public_url = doc.get("public_url", "")
    parts = urlsplit(public_url) if isinstance(public_url, str) else None
    if public_url != "" and (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.netloc
        or parts.path not in ("", "/")
        or parts.query
    ):
        problems.append(
            "spend_page.public_url: must be an http(s) origin like https://spend.example.com "
            f"(got {public_url!r})"
        )
        public_url = ""
    oidc = _oidc(doc.get("oidc"), problems)
    if oidc is not None and not public_url:
        problems.append(
            "spend_page.public_url: required with oidc (the IdP redirects to "
            "<public_url>/ui/callback)"
        )
    return SpendPageConfig(
        enabled=flags["enabled"],
        port=_int(doc, "port", 0, 65535, problems),
        public_url=str(public_url).rstrip("/"),
        session_ttl_s=_int(doc, "session_ttl_s", 60, 30 * 86_400, problems),
        demo_data=flags["demo_data"],
        oidc=oidc,
    )


def page_problems(
    page: SpendPageConfig, identity: IdentityConfig, admin_enabled: bool, dev_issuer: bool = False
) -> list[str]:
    """What the rest of the configuration must give the page: the admin API (its listener and
    its authorisation) and, for sign-in, an issuer with a JWKS to verify id tokens with (with
    `identity.dev_issuer`, also the local development issuer, `dev`, whose IdP `gatewayctl run`
    serves)."""
    problems: list[str] = []
    if page.enabled and not admin_enabled:
        problems.append(
            "spend_page.enabled: needs admin_api.enabled (the page is served through the admin "
            "API's JSON listener, with its authorisation)"
        )
    if page.oidc is not None and page.oidc.issuer:
        if dev_issuer and page.oidc.issuer == DEV_ISSUER_NAME:
            return problems
        issuers = {i.name: i for i in identity.issuers}
        found = issuers.get(page.oidc.issuer)
        if found is None:
            configured = ", ".join(issuers) or "none"
            problems.append(
                f"spend_page.oidc.issuer: no issuer named {page.oidc.issuer!r} in "
                f"identity.issuers (configured: {configured})"
            )
        elif found.hs_secret is not None:
            problems.append(
                f"spend_page.oidc.issuer: issuer {page.oidc.issuer!r} has a shared secret: "
                "sign-in needs an issuer with a JWKS"
            )
    return problems
