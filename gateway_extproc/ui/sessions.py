"""The spend page's sessions and sign-ins in progress, in Redis (several pods share them).

    P:{T}:ui:s:<sha256(session id)>   JSON {identity, expires_at, csrf}     TTL session_ttl_s
    P:{T}:ui:l:<sha256(login id)>     JSON {state, nonce, verifier, next}   TTL LOGIN_TTL_S

The session id (the cookie's value) and the pre-login id are 256-bit random values; only their
SHA-256 is a key, so a read of Redis yields no cookie. A sign-in in progress is taken with
GETDEL: its state and PKCE verifier are used once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from gateway_extproc.budgets.scripts import redis_errors
from gateway_extproc.identity.model import AuthMethod, Identity, Kind

LOGIN_TTL_S = 600


def new_id() -> str:
    return secrets.token_urlsafe(32)


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def identity_doc(identity: Identity) -> dict[str, Any]:
    return {
        "kind": identity.kind.value,
        "auth_method": identity.auth_method.value,
        "user": identity.user,
        "service": identity.service,
        "static_token": identity.static_token,
        "groups": sorted(identity.groups),
        "issuer": identity.issuer,
        "attributes": dict(identity.attributes),
    }


def identity_of(doc: dict[str, Any], expires_at: float) -> Identity:
    return Identity(
        kind=Kind(doc["kind"]),
        auth_method=AuthMethod(doc["auth_method"]),
        user=doc["user"],
        service=doc["service"],
        groups=frozenset(doc["groups"]),
        issuer=doc["issuer"],
        attributes=dict(doc["attributes"]),
        expires_at=expires_at,
        static_token=doc["static_token"],
    )


@dataclasses.dataclass(frozen=True)
class Session:
    identity: Identity
    expires_at: float
    csrf: str  # the logout form's token


@dataclasses.dataclass(frozen=True)
class LoginState:
    state: str
    nonce: str
    verifier: str  # PKCE code_verifier
    next: str  # the page to return to


class Sessions:
    def __init__(self, client: Redis | RedisCluster, key_base: str) -> None:
        self._client = client
        self._base = f"{key_base}:ui"

    def _session_key(self, session_id: str) -> str:
        return f"{self._base}:s:{_digest(session_id)}"

    def _login_key(self, login_id: str) -> str:
        return f"{self._base}:l:{_digest(login_id)}"

    async def create(self, identity: Identity, ttl_s: int, now: float) -> tuple[str, Session]:
        session_id = new_id()
        session = Session(identity, now + ttl_s, secrets.token_urlsafe(24))
        doc = {
            "identity": identity_doc(identity),
            "expires_at": session.expires_at,
            "csrf": session.csrf,
        }
        with redis_errors("ui session"):
            await self._client.set(self._session_key(session_id), orjson.dumps(doc), ex=ttl_s)
        return session_id, session

    async def get(self, session_id: str, now: float) -> Session | None:
        if not session_id or len(session_id) > 128:
            return None
        with redis_errors("ui session"):
            raw = await self._client.get(self._session_key(session_id))
        if raw is None:
            return None
        doc = orjson.loads(raw)
        expires_at = float(doc["expires_at"])
        if now >= expires_at:
            return None
        return Session(identity_of(doc["identity"], expires_at), expires_at, str(doc["csrf"]))

    async def delete(self, session_id: str) -> None:
        with redis_errors("ui session"):
            await self._client.delete(self._session_key(session_id))

    async def begin_login(self, login_id: str, state: LoginState) -> None:
        with redis_errors("ui login"):
            await self._client.set(
                self._login_key(login_id),
                orjson.dumps(dataclasses.asdict(state)),
                ex=LOGIN_TTL_S,
            )

    async def take_login(self, login_id: str) -> LoginState | None:
        """The sign-in begun under this pre-login id, once (GETDEL)."""
        if not login_id or len(login_id) > 128:
            return None
        with redis_errors("ui login"):
            raw = await self._client.getdel(self._login_key(login_id))
        if raw is None:
            return None
        return LoginState(**orjson.loads(raw))
