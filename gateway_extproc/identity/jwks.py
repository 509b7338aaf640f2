"""An issuer's signing keys: a parsed JWKS (`KeySet`) and the per-issuer cache that refreshes it.

`JwksCache` fetches the JWKS over HTTPS (plain HTTP only on loopback; `insecure_url`) or reads
`jwks_file`, and keeps it:
- refreshed every `jwks_cache_ttl_s` by `run()` (the authenticator's background task);
- refreshed on demand when a token names an unknown `kid` (key rotation) or when there are no
  keys at all, at most once per `jwks_refresh_min_interval_s`;
- single-flight: concurrent callers of `refresh` await the one fetch in progress;
- after fetch failures, the last good set is served until `jwks_max_stale_s` after the last
  success, then dropped (the issuer's tokens are refused until a fetch succeeds).

A JWKS that is not JSON, too large, or holds no usable key counts as a failed fetch; keys the
gateway cannot use (encryption keys, symmetric keys, private keys, short RSA keys, unknown
types) are skipped with a warning and never fail the whole set.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Literal

import aiohttp
import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from gateway_extproc.identity.model import IssuerConfig

__all__ = [
    "FETCH_TIMEOUT_S",
    "MAX_JWKS_BYTES",
    "Fetch",
    "JwksCache",
    "JwksError",
    "KeySet",
    "PublicKey",
    "RefreshReason",
    "SigningKey",
    "http_fetch",
    "insecure_url",
]

logger = logging.getLogger(__name__)

PublicKey = RSAPublicKey | EllipticCurvePublicKey | Ed25519PublicKey | Ed448PublicKey
Fetch = Callable[[str], Awaitable[bytes]]  # URL -> body; raises on any failure
RefreshReason = Literal["start", "ttl", "unknown_kid", "keys_unavailable"]

FETCH_TIMEOUT_S = 5.0
MAX_JWKS_BYTES = 1 << 20
MAX_REDIRECTS = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
MIN_RSA_BITS = 2048
_ON_DEMAND = frozenset({"unknown_kid", "keys_unavailable"})


class JwksError(Exception):
    """A JWKS could not be fetched or parsed. The message is safe to log."""


class SigningKey:
    """One usable public key. `alg` is the algorithm the JWK declares, None if it declares none."""

    __slots__ = ("alg", "key", "kid")

    def __init__(self, kid: str | None, alg: str | None, key: PublicKey) -> None:
        self.kid, self.alg, self.key = kid, alg, key

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r}, alg={self.alg!r}, type={type(self.key).__name__})"


def _signing_key(jwk: object) -> SigningKey:
    """The JWK as a usable verification key; ValueError saying why it is not."""
    if not isinstance(jwk, Mapping):
        raise ValueError("not a JSON object")
    kid, alg, use = jwk.get("kid"), jwk.get("alg"), jwk.get("use")
    if kid is not None and not isinstance(kid, str):
        raise ValueError("kid is not a string")
    if alg is not None and not isinstance(alg, str):
        raise ValueError("alg is not a string")
    if use not in (None, "sig"):
        raise ValueError(f"use is {use!r}, not sig")
    if jwk.get("kty") == "oct":
        raise ValueError("symmetric keys are never taken from a JWKS")
    if "d" in jwk:
        raise ValueError("it carries private key material")
    try:
        key = jwt.PyJWK(dict(jwk)).key
    except Exception as exc:  # PyJWT raises several types, and cryptography ValueError
        raise ValueError(f"unusable key ({type(exc).__name__})") from None
    if not isinstance(key, PublicKey):
        raise ValueError(f"unsupported key type {type(key).__name__}")
    if isinstance(key, RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise ValueError(f"RSA key of {key.key_size} bits is below {MIN_RSA_BITS}")
    return SigningKey(kid, alg, key)


class KeySet:
    """An issuer's usable signing keys, indexed by kid."""

    def __init__(self, keys: Iterable[SigningKey]) -> None:
        self.keys: tuple[SigningKey, ...] = tuple(keys)
        by_kid: dict[str | None, list[SigningKey]] = {}
        for key in self.keys:
            by_kid.setdefault(key.kid, []).append(key)
        self._by_kid = {kid: tuple(keys) for kid, keys in by_kid.items()}

    def __len__(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        return f"KeySet({list(self.keys)!r})"

    def with_kid(self, kid: str) -> tuple[SigningKey, ...]:
        return self._by_kid.get(kid, ())

    @classmethod
    def from_jwks(cls, doc: object, *, source: str) -> KeySet:
        """The usable keys of a JWKS document; JwksError if it is not one or none is usable.
        `source` names the issuer in warnings about skipped keys."""
        if not isinstance(doc, Mapping) or not isinstance(doc.get("keys"), list):
            raise JwksError("not a JWKS document (no keys list)")
        keys: list[SigningKey] = []
        for i, jwk in enumerate(doc["keys"]):
            try:
                keys.append(_signing_key(jwk))
            except ValueError as exc:
                kid = jwk.get("kid") if isinstance(jwk, Mapping) else None
                logger.warning("issuer %s: skipped JWKS key %d (kid %r): %s", source, i, kid, exc)
        if not keys:
            raise JwksError("the JWKS holds no usable signing key")
        return cls(keys)

    @classmethod
    def from_json(cls, body: bytes, *, source: str) -> KeySet:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise JwksError("the JWKS is not valid JSON") from None
        return cls.from_jwks(doc, source=source)


def insecure_url(url: str) -> str | None:
    """Why keys fetched from `url` could be replaced in transit, or None: http:// is allowed
    only to a loopback address (a JWKS proxy or test IdP on the same host)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        return None
    host = (parts.hostname or "").lower()
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parts.scheme == "http" and loopback:
        return None
    return (
        "must use https: signing keys fetched over plain http can be replaced in transit "
        "(http:// is allowed only to a loopback address such as 127.0.0.1 or localhost)"
    )


async def http_fetch(url: str) -> bytes:
    """GET a JWKS: 200 only, at most FETCH_TIMEOUT_S, at most MAX_JWKS_BYTES. Redirects are
    followed (at most MAX_REDIRECTS) only to URLs `insecure_url` accepts: an https URL that
    redirects to plain http is refused before the second request."""
    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
    headers = {"accept": "application/json, application/jwk-set+json"}
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for _ in range(MAX_REDIRECTS + 1):
            problem = insecure_url(url)
            if problem is not None:
                raise JwksError(f"refused {url}: {problem}")
            async with session.get(url, headers=headers, allow_redirects=False) as response:
                location = response.headers.get("location")
                if response.status in _REDIRECTS and location:
                    url = urllib.parse.urljoin(url, location)
                    continue
                return await _body(response)
    raise JwksError(f"more than {MAX_REDIRECTS} redirects")


async def _body(response: aiohttp.ClientResponse) -> bytes:
    if response.status != 200:
        raise JwksError(f"HTTP {response.status}")
    if (response.content_length or 0) > MAX_JWKS_BYTES:
        raise JwksError(f"the JWKS is larger than {MAX_JWKS_BYTES} bytes")
    body = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > MAX_JWKS_BYTES:
            raise JwksError(f"the JWKS is larger than {MAX_JWKS_BYTES} bytes")
    return bytes(body)


def _read_file(path: str) -> bytes:
    with Path(path).open("rb") as f:
        body = f.read(MAX_JWKS_BYTES + 1)
    if len(body) > MAX_JWKS_BYTES:
        raise JwksError(f"the JWKS is larger than {MAX_JWKS_BYTES} bytes")
    return body


def _describe(exc: BaseException) -> str:
    if isinstance(exc, JwksError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return f"timed out after {FETCH_TIMEOUT_S:g}s"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return type(exc).__name__


class JwksCache:
    """One issuer's keys. `clock` is wall time in seconds (the same clock tokens are checked
    against); `fetch` replaces the HTTP GET in tests."""

    def __init__(
        self,
        issuer: IssuerConfig,
        *,
        clock: Callable[[], float] = time.time,
        fetch: Fetch | None = None,
    ) -> None:
        if issuer.jwks_url is None and issuer.jwks_file is None:
            raise ValueError(f"issuer {issuer.name} has no jwks_url or jwks_file")
        self.issuer = issuer
        self._clock = clock
        self._fetch = fetch or http_fetch
        self._keys: KeySet | None = None
        self._last_success: float | None = None
        self._last_on_demand: float | None = None
        self._failing = False
        self._inflight: asyncio.Task[bool] | None = None
        self.fetch_ok = 0
        self.fetch_failed = 0
        self.unknown_kid_refresh = 0
        self.stale_served = 0
        self.refresh_suppressed = 0  # on-demand refreshes skipped by the minimum interval

    def keys(self, now: float) -> KeySet | None:
        """The current key set; None before the first success or once it is too stale."""
        if self._keys is None or self._last_success is None:
            return None
        age = now - self._last_success
        if age > self.issuer.jwks_max_stale_s:
            logger.error(
                "issuer %s: signing keys dropped: no successful JWKS fetch for %ds "
                "(jwks_max_stale_s %d); its tokens are refused until a fetch succeeds",
                self.issuer.name,
                int(age),
                self.issuer.jwks_max_stale_s,
            )
            self._keys = None
            return None
        if self._failing:
            self.stale_served += 1
        return self._keys

    def next_refresh_in(self) -> float:
        """Seconds until the next scheduled refresh: the TTL, sooner while fetches fail."""
        ttl = float(self.issuer.jwks_cache_ttl_s)
        if self._failing or self._keys is None:
            return min(ttl, float(max(1, self.issuer.jwks_refresh_min_interval_s)))
        return ttl

    async def refresh(self, reason: RefreshReason) -> bool:
        """Fetch the JWKS now; True if this fetch (or the one in flight it joined) succeeded.

        On-demand reasons (`unknown_kid`, `keys_unavailable`) are skipped, returning False, if
        another on-demand refresh started within `jwks_refresh_min_interval_s`."""
        if self._inflight is not None:
            return await asyncio.shield(self._inflight)
        if reason in _ON_DEMAND:
            now = self._clock()
            last = self._last_on_demand
            if last is not None and now - last < self.issuer.jwks_refresh_min_interval_s:
                self.refresh_suppressed += 1
                return False
            self._last_on_demand = now
            if reason == "unknown_kid":
                self.unknown_kid_refresh += 1
        task = asyncio.get_running_loop().create_task(self._load(reason))
        self._inflight = task
        task.add_done_callback(self._done)
        return await asyncio.shield(task)

    def _done(self, task: asyncio.Task[bool]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _load(self, reason: str) -> bool:
        name = self.issuer.name
        try:
            if self.issuer.jwks_url is not None:
                body = await self._fetch(self.issuer.jwks_url)
            else:
                assert self.issuer.jwks_file is not None
                body = await asyncio.to_thread(_read_file, self.issuer.jwks_file)
            keys = KeySet.from_json(body, source=name)
        except Exception as exc:  # every failure of the fetch is counted and survived
            self.fetch_failed += 1
            self._failing = True
            if self._keys is not None and self._last_success is not None:
                age = int(self._clock() - self._last_success)
                kept = f"serving the last good keys (fetched {age}s ago)"
            else:
                kept = "no signing keys: its tokens are refused until a fetch succeeds"
            logger.warning(
                "issuer %s: JWKS %s fetch failed: %s; %s", name, reason, _describe(exc), kept
            )
            return False
        changed = self._keys is None or {k.kid for k in keys.keys} != {
            k.kid for k in self._keys.keys
        }
        self._keys = keys
        self._last_success = self._clock()
        self._failing = False
        self.fetch_ok += 1
        if changed:
            kids = ", ".join(sorted(str(k.kid) for k in keys.keys))
            logger.info(
                "issuer %s: loaded %d signing keys (%s) on %s", name, len(keys), kids, reason
            )
        return True

    async def run(self) -> None:
        """Refresh forever on schedule; cancel to stop."""
        while True:
            await asyncio.sleep(self.next_refresh_in())
            await self.refresh("ttl")

    async def close(self) -> None:
        task = self._inflight
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
