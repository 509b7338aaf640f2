"""Sign-in for people: OIDC authorization code + PKCE through Authlib's AsyncOAuth2Client.

`/ui/login` keeps a state, a nonce and a PKCE code_verifier server-side (sessions.LoginState,
bound to a pre-login cookie) and sends the browser to the IdP's authorization endpoint (from
its discovery document). `/ui/callback` takes that state once, checks the returned `state`,
exchanges the code with the verifier, and verifies the id_token with the gateway's own
verifier for the configured issuer - signature by its JWKS, `iss`, `aud` = client_id, `exp`,
and the same claim mapping as data-plane tokens (groups, verified e-mail) - then the nonce.
Every failure is a `SignInError` with a message for the person, never a traceback.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any

import httpx
import jwt
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client
from httpx import HTTPError

from gateway_extproc.errors import Unauthenticated
from gateway_extproc.identity.authenticator import Authenticator
from gateway_extproc.identity.jwks import JwksCache
from gateway_extproc.identity.model import Identity, IdentityConfig, IssuerConfig
from gateway_extproc.ui.sessions import LoginState
from gateway_extproc.ui.settings import OidcSettings

log = logging.getLogger("gateway.ui")

DISCOVERY_TTL_S = 3600.0
HTTP_TIMEOUT_S = 10.0


class SignInError(Exception):
    """A sign-in that failed; the message is shown to the person (no secrets in it)."""


@dataclasses.dataclass(frozen=True)
class Provider:
    """What the sign-in needs of the IdP's discovery document."""

    authorization_endpoint: str
    token_endpoint: str


class SignIn:
    """One per page server; the IdP's discovery document is cached for an hour."""

    def __init__(self, settings: OidcSettings, redirect_uri: str, client_secret: str | None):
        self.settings = settings
        self.redirect_uri = redirect_uri
        self._secret = client_secret
        self._provider: tuple[Provider, float] | None = None

    def _client(self) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            self.settings.client_id,
            self._secret,
            token_endpoint_auth_method="client_secret_basic" if self._secret else "none",
            scope=" ".join(self.settings.scopes),
            redirect_uri=self.redirect_uri,
            code_challenge_method="S256",
            timeout=HTTP_TIMEOUT_S,
        )

    def discovery_url(self, issuer: IssuerConfig) -> str:
        url = self.settings.discovery_url
        return url or issuer.issuer.rstrip("/") + "/.well-known/openid-configuration"

    async def provider(self, issuer: IssuerConfig) -> Provider:
        cached = self._provider
        if cached is not None and time.monotonic() - cached[1] < DISCOVERY_TTL_S:
            return cached[0]
        url = self.discovery_url(issuer)
        try:
            async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as client:
                answer = await client.get(url)
            answer.raise_for_status()
            doc = answer.json()
            found = Provider(str(doc["authorization_endpoint"]), str(doc["token_endpoint"]))
        except (HTTPError, ValueError, KeyError, TypeError) as exc:
            log.warning("spend page sign-in: discovery at %s failed: %s", url, exc)
            raise SignInError("the identity provider cannot be reached; try again later") from None
        self._provider = (found, time.monotonic())
        return found

    async def authorization_url(self, issuer: IssuerConfig, login: LoginState) -> str:
        provider = await self.provider(issuer)
        async with self._client() as client:
            url, _ = client.create_authorization_url(
                provider.authorization_endpoint,
                state=login.state,
                code_verifier=login.verifier,
                nonce=login.nonce,
            )
        return str(url)

    async def exchange(self, issuer: IssuerConfig, code: str, login: LoginState) -> str:
        """The id_token for an authorization code (PKCE: the verifier goes with it)."""
        provider = await self.provider(issuer)
        try:
            async with self._client() as client:
                token: Mapping[str, Any] = await client.fetch_token(
                    provider.token_endpoint, code=code, code_verifier=login.verifier
                )
        except OAuthError as exc:
            log.info("spend page sign-in: the token endpoint refused the code: %s", exc.error)
            raise SignInError(
                f"the identity provider refused the sign-in ({exc.error}): start again"
            ) from None
        except (HTTPError, ValueError) as exc:
            log.warning("spend page sign-in: token endpoint failed: %s", type(exc).__name__)
            raise SignInError("the identity provider cannot be reached; try again later") from None
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise SignInError("the identity provider returned no id_token (scope openid?)")
        return id_token


async def verify_id_token(
    id_token: str, issuer: IssuerConfig, client_id: str, jwks: JwksCache, nonce: str
) -> Identity:
    """The person the id_token names, by the gateway's own verifier for `issuer` with the
    audience `client_id`; then its nonce must be the one this sign-in sent."""
    config = IdentityConfig(issuers=(dataclasses.replace(issuer, audiences=(client_id,)),))
    verifier = Authenticator(config, jwks={issuer.name: jwks})
    try:
        identity = await verifier.authenticate({"authorization": f"Bearer {id_token}"})
    except Unauthenticated as exc:
        raise SignInError(f"the sign-in could not be verified: {exc}") from None
    claims = jwt.decode(id_token, options={"verify_signature": False})  # verified above
    if claims.get("nonce") != nonce:
        raise SignInError("the sign-in could not be verified: nonce mismatch; start again")
    if identity.user is None:
        raise SignInError("the identity provider named no user (a verified e-mail) to sign in")
    return identity
