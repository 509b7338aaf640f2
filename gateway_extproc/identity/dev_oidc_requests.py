"""The development IdP's inputs (identity/dev_oidc.py): who may run it, the sign-in form's
fields, an authorization request checked before any code is issued, PKCE's S256, OAuth errors.
Pure: no I/O, no clock."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import re
import urllib.parse
from collections.abc import Mapping

from gateway_extproc.identity.devissuer import ALLOW_ENV

__all__ = [
    "DEFAULT_PORT",
    "DEVICE_CODE_GRANT",
    "PORT_ENV",
    "AuthorizationRequest",
    "AuthorizeError",
    "DevUser",
    "OAuthError",
    "dev_gate",
    "parse_authorization_request",
    "parse_user",
    "redirect_to",
    "s256_challenge",
    "verifier_matches",
]

PORT_ENV = "GATEWAY_DEV_IDP_PORT"  # overrides identity.dev_idp_port
DEFAULT_PORT = 10094
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_EMAIL = re.compile(r"[^@\s,]{1,64}@[^@\s,]{1,255}")
_GROUP = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,63}")
_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")  # RFC 7636 4.1
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")  # base64url of a SHA-256 digest


def dev_gate(environ: Mapping[str, str]) -> str | None:
    """None when the dev IdP may run, else why not: like `identity.dev_issuer`, only where
    `GATEWAY_ALLOW_DEV_ISSUER=1` (gatewayctl run sets it for its own processes)."""
    if environ.get(ALLOW_ENV) == "1":
        return None
    return (
        "the development IdP signs anyone in as anyone: it runs only under gatewayctl run "
        f"(make run), which sets {ALLOW_ENV}=1"
    )


class OAuthError(Exception):
    """An OAuth error answer: `error` is the RFC's code, `status` the HTTP status."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error, self.description, self.status = error, description, status

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


class AuthorizeError(OAuthError):
    """A bad authorization request. `redirect` False: the client or its redirect URI is not
    trusted, so the error is shown on the page, never sent to that URI (RFC 6749 4.1.2.1)."""

    def __init__(self, error: str, description: str, redirect: bool) -> None:
        super().__init__(error, description)
        self.redirect = redirect


@dataclasses.dataclass(frozen=True)
class DevUser:
    email: str
    groups: tuple[str, ...] = ()


def parse_user(email: str, groups: str) -> DevUser:
    """The sign-in form's fields: an email, and groups separated by commas or spaces. Raises
    ValueError saying what is wrong."""
    email = email.strip()
    if not _EMAIL.fullmatch(email):
        raise ValueError(f"not an email address: {email!r}")
    names = tuple(dict.fromkeys(g for g in re.split(r"[\s,]+", groups) if g))
    bad = [g for g in names if not _GROUP.fullmatch(g)]
    if bad:
        raise ValueError(f"not a group name: {', '.join(map(repr, bad))}")
    if len(names) > 32:
        raise ValueError("at most 32 groups")
    return DevUser(email, names)


def _loopback(uri: str) -> bool:
    parts = urllib.parse.urlsplit(uri)
    return parts.scheme in ("http", "https") and parts.hostname in _LOOPBACK and not parts.fragment


def redirect_to(uri: str, params: Mapping[str, str]) -> str:
    """`uri` with `params` added to its query (it may have one already)."""
    return uri + ("&" if urllib.parse.urlsplit(uri).query else "?") + urllib.parse.urlencode(params)


@dataclasses.dataclass(frozen=True)
class AuthorizationRequest:
    client_id: str
    redirect_uri: str
    code_challenge: str
    scope: str = "openid"
    state: str = ""
    nonce: str = ""

    def fields(self) -> dict[str, str]:
        """What the sign-in form carries along (hidden) to its POST."""
        return {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "code_challenge": self.code_challenge,
            "code_challenge_method": "S256",
            "scope": self.scope,
            "state": self.state,
            "nonce": self.nonce,
        }


def parse_authorization_request(params: Mapping[str, str]) -> AuthorizationRequest:
    client_id, redirect_uri = params.get("client_id", ""), params.get("redirect_uri", "")
    if not client_id:
        raise AuthorizeError("invalid_request", "client_id is required", redirect=False)
    if not _loopback(redirect_uri):
        raise AuthorizeError(
            "invalid_request",
            "redirect_uri must be an http(s) address on loopback (127.0.0.1, localhost, [::1])",
            redirect=False,
        )
    if params.get("response_type") != "code":
        raise AuthorizeError("unsupported_response_type", "response_type must be code", True)
    challenge = params.get("code_challenge", "")
    if params.get("code_challenge_method") != "S256" or not _CHALLENGE.fullmatch(challenge):
        raise AuthorizeError(
            "invalid_request", "PKCE with code_challenge_method S256 is required", True
        )
    return AuthorizationRequest(
        client_id=client_id,
        redirect_uri=redirect_uri,
        code_challenge=challenge,
        scope=params.get("scope") or "openid",
        state=params.get("state", ""),
        nonce=params.get("nonce", ""),
    )


def s256_challenge(verifier: str) -> str:
    """RFC 7636 4.2: BASE64URL(SHA256(ASCII(code_verifier))), unpadded."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def verifier_matches(verifier: str, challenge: str) -> bool:
    """A well-formed PKCE verifier whose S256 challenge is `challenge` (compared in constant
    time)."""
    if not _VERIFIER.fullmatch(verifier):
        return False
    return hmac.compare_digest(s256_challenge(verifier), challenge)
