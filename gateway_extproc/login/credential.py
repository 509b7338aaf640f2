"""A fresh gateway credential from the stored login: used as it is while it has more than the
margin left, else refreshed with the refresh token through Authlib (the rotated refresh token
is stored), all under the store's lock so concurrent callers refresh once."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import jwt
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.httpx_client import OAuth2Client

from gateway_extproc.login.document import HTTP_TIMEOUT_S, LoginError
from gateway_extproc.login.store import CredentialStore, StoredLogin

DEFAULT_MARGIN_S = 60.0


def needs_refresh(expires_at: float | None, now: float, margin_s: float) -> bool:
    """Whether a credential expiring at `expires_at` must be replaced now. Unknown expiry (an
    opaque token without expires_in): used until the gateway refuses it."""
    return expires_at is not None and expires_at - now <= margin_s


def _jwt_exp(token: object) -> float | None:
    """A JWT's `exp`, read without verifying (our own credential's lifetime, nothing more)."""
    if not isinstance(token, str) or token.count(".") != 2:
        return None
    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.PyJWTError:
        return None
    return float(exp) if isinstance(exp, int | float) else None


def credential_expiry(token: Mapping[str, Any], kind: str, now: float) -> float | None:
    """When the credential in a token response expires: an id token's `exp`; an access token's
    `expires_in` (Authlib's `expires_at`), else its `exp` if it is a JWT."""
    if kind == "id_token":
        return _jwt_exp(token.get("id_token"))
    expires_at = token.get("expires_at")
    if isinstance(expires_at, int | float):
        return float(expires_at)
    expires_in = token.get("expires_in")
    if isinstance(expires_in, int | float):
        return now + float(expires_in)
    return _jwt_exp(token.get("access_token"))


def oauth_client(
    client_id: str, secret_env: str | None, environ: Mapping[str, str]
) -> OAuth2Client:
    """A public client, or a confidential one when the gateway names a secret variable."""
    secret = None
    if secret_env:
        secret = environ.get(secret_env)
        if not secret:
            raise LoginError(f"this gateway's IdP wants a client secret: set {secret_env}")
    return OAuth2Client(client_id, client_secret=secret, timeout=HTTP_TIMEOUT_S)


def from_token(token: Mapping[str, Any], previous: StoredLogin, now: float) -> StoredLogin:
    """The stored login after a token response: a refresh token the IdP did not rotate is kept,
    and so is an id token it did not send again (unless the id token is the credential)."""
    if previous.token_kind == "id_token" and not token.get("id_token"):
        raise LoginError("the IdP sent no id token: run gatewayctl login again")
    return StoredLogin(
        **{
            **previous.as_json(),
            "access_token": str(token.get("access_token") or ""),
            "refresh_token": token.get("refresh_token") or previous.refresh_token,
            "id_token": token.get("id_token") or previous.id_token,
            "expires_at": credential_expiry(token, previous.token_kind, now),
        }
    )


def fresh_credential(
    store: CredentialStore,
    gateway: str,
    *,
    now: Callable[[], float],
    environ: Mapping[str, str] = os.environ,
    margin_s: float = DEFAULT_MARGIN_S,
) -> str:
    relogin = f"run gatewayctl login --gateway {gateway}"
    with store.locked():
        entry = store.get(gateway)
        if entry is None:
            raise LoginError(f"not logged in to {gateway}: {relogin}")
        if not needs_refresh(entry.expires_at, now(), margin_s):
            return entry.credential
        if not entry.refresh_token:
            raise LoginError(
                f"the token for {gateway} has expired and cannot be refreshed: {relogin}"
            )
        client = oauth_client(entry.client_id, entry.client_secret_env, environ)
        try:
            token = client.refresh_token(entry.token_endpoint, refresh_token=entry.refresh_token)
        except OAuthError as exc:
            raise LoginError(
                f"the IdP refused to refresh the token ({exc.error}): {relogin}"
            ) from None
        except httpx.HTTPError as exc:
            raise LoginError(f"cannot refresh the token at {entry.token_endpoint}: {exc}") from exc
        finally:
            client.close()
        updated = from_token(token, entry, now())
        store.put(updated)
        return updated.credential
