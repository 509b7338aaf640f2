"""The local development OpenID provider's rules, for `make run` only (no HTTP here).

`gatewayctl run` serves these on loopback (gateway_extproc/devidp.py) when
`identity.dev_issuer` is on, so a person can sign in to the spend page (authorization code +
PKCE) and run `gatewayctl login` (RFC 8628 device authorization) with no real IdP. It signs
with the dev issuer's key, and its tokens carry the dev issuer's `iss`, so the gateway already
trusts them: access tokens for the data-plane audience (`llm-gateway`), id tokens for the
client, both with the person's `email` (verified) and `groups`, as `gatewayctl token` mints them.

What it enforces, being an OAuth server all the same:
- authorization codes: PKCE S256 required, redirect URIs on loopback only (it is no open
  redirector), one use, 60 s, bound to the client, redirect URI and challenge;
- device codes: pending until approved or denied on the verification page, polled no faster
  than the interval (else `slow_down`, interval + 5 s), expired after `device_ttl_s`, one use;
- refresh tokens: rotated on every use; a rotated one presented again revokes its whole family
  (a stolen copy and the real one cannot both live on); revocation ends the family too.

What it does not do: passwords (the sign-in form takes an email and groups, clearly labelled
dev-only), client registration (any client_id, treated as public; a secret sent is ignored),
consent, persistence: codes, device codes and refresh tokens live in memory and are gone when
`gatewayctl run` stops. Every call takes `now`; nothing here reads a clock.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from collections.abc import Mapping
from typing import Any

from gateway_extproc.identity.dev_oidc_requests import (
    DEVICE_CODE_GRANT,
    AuthorizationRequest,
    DevUser,
    OAuthError,
    redirect_to,
    verifier_matches,
)
from gateway_extproc.identity.devissuer import DEV_ISSUER, DevIssuer

__all__ = ["CODE_TTL_S", "DevProvider", "DeviceAuthorization"]

CODE_TTL_S = 60
_USER_CODE_LETTERS = "BCDFGHJKLMNPQRSTVWXZ"  # no vowels: no words, no 0/O or 1/I confusion


@dataclasses.dataclass
class _Code:
    request: AuthorizationRequest
    user: DevUser
    expires_at: float


@dataclasses.dataclass
class DeviceAuthorization:
    device_code: str
    user_code: str  # XXXX-XXXX
    client_id: str
    scope: str
    expires_at: float
    interval: int
    state: str = "pending"  # pending | approved | denied
    user: DevUser | None = None
    last_poll: float | None = None


@dataclasses.dataclass
class _Refresh:
    family: str
    user: DevUser
    client_id: str
    scope: str
    expires_at: float
    rotated: bool = False


def _user_code_key(text: str) -> str:
    return re.sub(r"[\s-]", "", text).upper()


class DevProvider:
    """The provider's state and rules. Not thread-safe: the HTTP layer holds one lock."""

    def __init__(
        self,
        issuer: DevIssuer,
        base_url: str,
        *,
        access_ttl_s: int = 3600,
        refresh_ttl_s: int = 7 * 86400,
        device_interval_s: int = 5,
        device_ttl_s: int = 600,
    ) -> None:
        self.issuer = issuer
        self.base_url = base_url.rstrip("/")
        self.access_ttl_s = access_ttl_s
        self.refresh_ttl_s = refresh_ttl_s
        self.device_interval_s = device_interval_s
        self.device_ttl_s = device_ttl_s
        self._codes: dict[str, _Code] = {}
        self._devices: dict[str, DeviceAuthorization] = {}  # by device_code
        self._refresh: dict[str, _Refresh] = {}

    def discovery(self) -> dict[str, Any]:
        """The OpenID discovery document. `issuer` is the tokens' `iss` (the dev issuer the
        gateway trusts), not this server's address; every endpoint is on this server."""
        base = self.base_url
        return {
            "issuer": DEV_ISSUER,
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/token",
            "device_authorization_endpoint": f"{base}/device_authorization",
            "revocation_endpoint": f"{base}/revoke",
            "jwks_uri": f"{base}/jwks.json",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token", DEVICE_CODE_GRANT],
            "code_challenge_methods_supported": ["S256"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "scopes_supported": ["openid", "email", "profile", "offline_access"],
            "claims_supported": ["sub", "email", "email_verified", "groups"],
            "token_endpoint_auth_methods_supported": [
                "none",
                "client_secret_basic",
                "client_secret_post",
            ],
        }

    # -- authorization code + PKCE -------------------------------------------------------

    def authorize(self, request: AuthorizationRequest, user: DevUser, now: float) -> str:
        """The person signed in: a one-use code for the client's redirect."""
        self._purge(now)
        code = secrets.token_urlsafe(32)
        self._codes[code] = _Code(request, user, now + CODE_TTL_S)
        return code

    def _code_grant(self, form: Mapping[str, str], client_id: str, now: float) -> dict[str, Any]:
        held = self._codes.pop(form.get("code", ""), None)  # one use, whatever happens next
        if held is None or held.expires_at <= now:
            raise OAuthError("invalid_grant", "unknown, used or expired code")
        request = held.request
        if request.client_id != client_id or request.redirect_uri != form.get("redirect_uri"):
            raise OAuthError("invalid_grant", "the code was issued to another client or redirect")
        if not verifier_matches(form.get("code_verifier", ""), request.code_challenge):
            raise OAuthError("invalid_grant", "PKCE verification failed")
        return self._issue(held.user, client_id, request.scope, request.nonce, now)

    # -- device authorization (RFC 8628) -------------------------------------------------

    def start_device(self, client_id: str, scope: str, now: float) -> dict[str, Any]:
        if not client_id:
            raise OAuthError("invalid_client", "client_id is required", 401)
        self._purge(now)
        letters = "".join(secrets.choice(_USER_CODE_LETTERS) for _ in range(8))
        device = DeviceAuthorization(
            device_code=secrets.token_urlsafe(32),
            user_code=f"{letters[:4]}-{letters[4:]}",
            client_id=client_id,
            scope=scope or "openid",
            expires_at=now + self.device_ttl_s,
            interval=self.device_interval_s,
        )
        self._devices[device.device_code] = device
        verification = f"{self.base_url}/device"
        return {
            "device_code": device.device_code,
            "user_code": device.user_code,
            "verification_uri": verification,
            "verification_uri_complete": redirect_to(verification, {"user_code": device.user_code}),
            "expires_in": self.device_ttl_s,
            "interval": device.interval,
        }

    def decide_device(
        self, user_code: str, user: DevUser | None, now: float
    ) -> DeviceAuthorization:
        """The verification page's answer: `user` approves, None denies. Raises OAuthError for
        a code that is unknown, expired or already decided."""
        key = _user_code_key(user_code)
        device = next(
            (d for d in self._devices.values() if _user_code_key(d.user_code) == key), None
        )
        if device is None or device.expires_at <= now:
            raise OAuthError("invalid_request", "unknown or expired code")
        if device.state != "pending":
            raise OAuthError("invalid_request", f"this code was already {device.state}")
        device.state, device.user = ("approved", user) if user is not None else ("denied", None)
        return device

    def _device_grant(self, form: Mapping[str, str], client_id: str, now: float) -> dict[str, Any]:
        device = self._devices.get(form.get("device_code", ""))
        if device is None or device.client_id != client_id:
            raise OAuthError("invalid_grant", "unknown device code")
        too_fast = device.last_poll is not None and now - device.last_poll < device.interval
        device.last_poll = now
        if device.expires_at <= now:
            del self._devices[device.device_code]
            raise OAuthError("expired_token", "the device code expired; start again")
        if device.state == "denied":
            del self._devices[device.device_code]
            raise OAuthError("access_denied", "the person denied the request")
        if too_fast:
            device.interval += 5  # RFC 8628 3.5: and the client adds 5 s to its own
            raise OAuthError("slow_down", f"poll at most every {device.interval} s")
        if device.state == "pending" or device.user is None:
            raise OAuthError("authorization_pending", "waiting for the person to approve")
        del self._devices[device.device_code]  # one use
        return self._issue(device.user, client_id, device.scope, "", now)

    # -- refresh tokens, revocation -------------------------------------------------------

    def _refresh_grant(self, form: Mapping[str, str], client_id: str, now: float) -> dict[str, Any]:
        held = self._refresh.get(form.get("refresh_token", ""))
        if held is None or held.client_id != client_id or held.expires_at <= now:
            raise OAuthError("invalid_grant", "unknown, revoked or expired refresh token")
        if held.rotated:  # presented twice: someone else holds a copy
            self._end_family(held.family)
            raise OAuthError("invalid_grant", "refresh token reused: every token of it revoked")
        held.rotated = True
        return self._issue(held.user, client_id, held.scope, "", now, family=held.family)

    def revoke(self, token: str) -> None:
        """RFC 7009: a refresh token ends with its whole family; anything else is ignored
        (access tokens are JWTs and live until they expire)."""
        held = self._refresh.get(token)
        if held is not None:
            self._end_family(held.family)

    def _end_family(self, family: str) -> None:
        for token in [t for t, r in self._refresh.items() if r.family == family]:
            del self._refresh[token]

    # -- the token endpoint -------------------------------------------------------------

    def token(self, form: Mapping[str, str], client_id: str, now: float) -> dict[str, Any]:
        """POST /token for `client_id` (from the form or HTTP basic auth). Raises OAuthError."""
        if not client_id:
            raise OAuthError("invalid_client", "client_id is required", 401)
        self._purge(now)
        grant = form.get("grant_type", "")
        if grant == "authorization_code":
            return self._code_grant(form, client_id, now)
        if grant == DEVICE_CODE_GRANT:
            return self._device_grant(form, client_id, now)
        if grant == "refresh_token":
            return self._refresh_grant(form, client_id, now)
        raise OAuthError("unsupported_grant_type", f"grant_type {grant!r} is not supported")

    def _issue(
        self,
        user: DevUser,
        client_id: str,
        scope: str,
        nonce: str,
        now: float,
        family: str | None = None,
    ) -> dict[str, Any]:
        refresh = secrets.token_urlsafe(32)
        self._refresh[refresh] = _Refresh(
            family=family or secrets.token_urlsafe(8),
            user=user,
            client_id=client_id,
            scope=scope,
            expires_at=now + self.refresh_ttl_s,
        )
        groups = list(user.groups)
        ttl = self.access_ttl_s
        doc: dict[str, Any] = {
            "access_token": self.issuer.mint(user.email, groups, None, ttl, {}, now),
            "token_type": "Bearer",
            "expires_in": ttl,
            "refresh_token": refresh,
            "scope": scope,
        }
        if "openid" in scope.split():
            extra = {"nonce": nonce} if nonce else {}
            doc["id_token"] = self.issuer.mint(
                user.email, groups, None, ttl, extra, now, audience=client_id
            )
        return doc

    def _purge(self, now: float) -> None:
        """Forget what has expired (memory stays bounded by what is live)."""
        for code in [c for c, held in self._codes.items() if held.expires_at <= now]:
            del self._codes[code]
        for key in [k for k, d in self._devices.items() if d.expires_at + 60 <= now]:
            del self._devices[key]
        for token in [t for t, r in self._refresh.items() if r.expires_at <= now]:
            del self._refresh[token]
