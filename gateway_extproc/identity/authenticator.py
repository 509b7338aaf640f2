"""Who is calling: the request's credential turned into a verified `Identity`, or a 401.

Credential rules (header names lower-case):
- `authorization: Bearer <token>` (scheme case-insensitive); failing that `x-api-key: <token>`
  (what the Anthropic SDK sends for `api_key`), and on a Gemini path `x-goog-api-key: <token>`
  (what google-genai sends for `api_key`), and on an Azure path (`/openai/...`) `api-key:
  <token>` (what the `AzureOpenAI` SDK sends for `api_key`). A `?key=` in the query is never a
  credential (URLs are logged and cached on their way): the processor strips it, and it
  authenticates nothing.
  Another Authorization scheme (Basic, ...) without an api key is refused, saying Bearer is
  required.
- No credential: `ANONYMOUS` if `allow_anonymous`, else 401 `missing_token`.
- Longer than `max_token_bytes`: refused before any parsing.
- Static service tokens: the credential's SHA-256 compared with every configured digest in
  constant time. Revoking one is a config reload (a new Authenticator without it). Its identity
  names it as `static_token`, a namespace apart from JWT services (`service` is set too only
  with `static_tokens_share_service_namespace`).
- Anything else is a JWT (`jwt_verify`), keys from each issuer's `JwksCache`; an unknown kid
  refreshes that issuer's JWKS (rate limited) and retries once.

Verified JWTs are cached (LRU, `verified_cache_size`, keyed by the token's SHA-256) until the
token's `exp` exactly, so a repeated token costs a dictionary lookup. Failures are not cached.
Tokens are never logged; refusals are logged with their reason only.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Mapping

from gateway_extproc.apis import looks_azure, looks_gemini
from gateway_extproc.errors import Unauthenticated
from gateway_extproc.identity.jwks import Fetch, JwksCache, KeySet
from gateway_extproc.identity.jwt_verify import (
    KeysUnavailable,
    TokenRejected,
    UnknownKeyId,
    inspect,
    verify,
)
from gateway_extproc.identity.model import (
    ANONYMOUS,
    AuthMethod,
    Identity,
    IdentityConfig,
    Kind,
)

__all__ = ["STATIC_ISSUER", "Authenticator", "credential"]

logger = logging.getLogger(__name__)

STATIC_ISSUER = "static"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def credential(headers: Mapping[str, str]) -> str | None:
    """The Bearer token, else the x-api-key (x-goog-api-key on a Gemini path, api-key on an
    Azure path); None if neither.
    TokenRejected for another Authorization scheme (without an api key) or an empty Bearer
    token."""
    api_key = headers.get("x-api-key", "").strip()
    path = headers.get(":path", "")
    if not api_key and looks_gemini(path):
        api_key = headers.get("x-goog-api-key", "").strip()
    elif not api_key and looks_azure(path):
        api_key = headers.get("api-key", "").strip()
    authorization = headers.get("authorization", "").strip()
    if authorization:
        scheme, _, rest = authorization.partition(" ")
        if scheme.lower() == "bearer":
            token = rest.strip()
            if not token:
                raise TokenRejected(
                    "empty Bearer token", reason="malformed", error="invalid_request"
                )
            return token
        if not api_key:
            raise TokenRejected(
                "the Authorization header must use the Bearer scheme: Bearer <token>",
                reason="wrong_scheme",
                error="invalid_request",
            )
    return api_key or None


def _other_header(path: str) -> str:
    """The API key header a client of `path`'s family may send instead, for the 401."""
    if looks_gemini(path):
        return " or x-goog-api-key: <token>"
    return " or api-key: <token>" if looks_azure(path) else ""


class Authenticator:
    """One per loaded config. `clock` is wall time (token exp/nbf/iat and JWKS ages); `fetch`
    replaces the JWKS HTTP GET (tests). `jwks`: another authenticator's key caches to use
    (the admin API's, for the same issuers with other audiences); that one starts and closes
    them."""

    def __init__(
        self,
        config: IdentityConfig,
        *,
        clock: Callable[[], float] = time.time,
        fetch: Fetch | None = None,
        jwks: Mapping[str, JwksCache] | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._issuers = {issuer.issuer: issuer for issuer in config.issuers}
        self._owns_jwks = jwks is None
        self.jwks: Mapping[str, JwksCache] = {
            issuer.name: JwksCache(issuer, clock=clock, fetch=fetch)
            if jwks is None
            else jwks[issuer.name]
            for issuer in config.issuers
            if issuer.hs_secret is None
        }
        shared = config.static_tokens_share_service_namespace
        self._static = tuple(
            (
                token.sha256,
                Identity(
                    kind=Kind.SERVICE,
                    auth_method=AuthMethod.STATIC_TOKEN,
                    user=None,
                    service=token.service if shared else None,  # a namespace of its own
                    groups=token.groups,
                    issuer=STATIC_ISSUER,
                    attributes=dict(token.attributes),
                    expires_at=None,
                    static_token=token.service,
                ),
            )
            for token in config.static_tokens
        )
        self._verified: collections.OrderedDict[bytes, tuple[Identity, float]] = (
            collections.OrderedDict()
        )
        self._tasks: list[asyncio.Task[None]] = []
        self.verifications = 0  # JWT signature checks run (cache misses)
        self.cache_hits = 0
        self.refused: collections.Counter[str] = collections.Counter()  # by reason

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load every JWKS (a failure is logged and counted, not fatal), then keep them fresh."""
        if not self._owns_jwks:
            return
        await asyncio.gather(*(cache.refresh("start") for cache in self.jwks.values()))
        for name, cache in self.jwks.items():
            self._tasks.append(asyncio.create_task(cache.run(), name=f"jwks-refresh-{name}"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if not self._owns_jwks:
            return
        for cache in self.jwks.values():
            await cache.close()

    async def __aenter__(self) -> Authenticator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- requests ----------------------------------------------------------------------------

    def cached(self, headers: Mapping[str, str], now: float) -> Identity | None:
        """The sync fast path: a static token or a cached verified JWT, else None (then await
        `authenticate`, which also produces the right 401). Never verifies, never raises."""
        try:
            token = credential(headers)
        except TokenRejected:
            return None
        if token is None or len(token) > self.config.max_token_bytes:
            return None
        digest = _digest(token)
        return self._static_match(digest) or self._cache_get(digest, now)

    async def authenticate(self, headers: Mapping[str, str]) -> Identity:
        """The caller's identity, or Unauthenticated (401) with a message saying why."""
        try:
            token = credential(headers)
        except TokenRejected as exc:
            raise self._refuse(exc.reason, exc.message, exc.error) from None
        if token is None:
            if self.config.allow_anonymous:
                return ANONYMOUS
            raise self._refuse(
                "missing_token",
                "missing credential: send Authorization: Bearer <token>"
                + _other_header(headers.get(":path", "")),
                "missing_token",
            )
        limit = self.config.max_token_bytes
        if len(token) > limit or len(token.encode("utf-8", "surrogatepass")) > limit:
            raise self._refuse("too_large", f"token is larger than {limit} bytes", "invalid_token")
        digest = _digest(token)
        now = self._clock()
        found = self._static_match(digest) or self._cache_get(digest, now)
        if found is not None:
            return found
        try:
            identity = await self._verify(token)
        except TokenRejected as exc:
            raise self._refuse(exc.reason, exc.message, exc.error) from None
        self._cache_put(digest, identity, self._clock())
        return identity

    def _refuse(self, reason: str, message: str, error: str) -> Unauthenticated:
        self.refused[reason] += 1
        logger.info("authentication refused (%s): %s", reason, message)
        return Unauthenticated(message, error=error)

    def _static_match(self, digest: bytes) -> Identity | None:
        found = None
        for expected, identity in self._static:  # every digest, no early exit
            if hmac.compare_digest(digest, expected):
                found = identity
        return found

    def _cache_get(self, digest: bytes, now: float) -> Identity | None:
        entry = self._verified.get(digest)
        if entry is None:
            return None
        identity, expires_at = entry
        if now >= expires_at:
            del self._verified[digest]
            return None
        self._verified.move_to_end(digest)
        self.cache_hits += 1
        return identity

    def _cache_put(self, digest: bytes, identity: Identity, now: float) -> None:
        size = self.config.verified_cache_size
        expires_at = identity.expires_at
        if size <= 0 or expires_at is None or now >= expires_at:
            return  # a token without exp is verified every time
        self._verified[digest] = (identity, expires_at)
        self._verified.move_to_end(digest)
        while len(self._verified) > size:
            self._verified.popitem(last=False)

    @property
    def cache_size(self) -> int:
        return len(self._verified)

    async def _verify(self, token: str) -> Identity:
        unverified = inspect(token, self._issuers)
        cache = self.jwks.get(unverified.issuer.name)
        now = self._clock()
        self.verifications += 1
        if cache is None:  # an HS issuer: its secret is the key
            return verify(token, unverified, None, now)
        keys: KeySet | None = cache.keys(now)
        try:
            return verify(token, unverified, keys, now)
        except (UnknownKeyId, KeysUnavailable) as exc:
            await cache.refresh(
                "unknown_kid" if isinstance(exc, UnknownKeyId) else "keys_unavailable"
            )
            now = self._clock()
            fresh = cache.keys(now)
            if fresh is None or fresh is keys:
                raise
        self.verifications += 1
        return verify(token, unverified, fresh, now)
