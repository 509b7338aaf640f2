"""JWKS fetching and caching against a real HTTP server on 127.0.0.1 whose key set can be
changed, broken and stopped: rotation through the unknown-kid refresh, its rate limit,
single-flight, the endpoint down at start and mid-run, bad documents; key parsing; files."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, OKPAlgorithm, RSAAlgorithm

from gateway_extproc.errors import Unauthenticated
from gateway_extproc.identity import jwks
from gateway_extproc.identity.authenticator import Authenticator
from gateway_extproc.identity.jwks import JwksCache, JwksError, KeySet
from gateway_extproc.identity.model import IdentityConfig, IssuerConfig

NOW = 1_800_000_000.0
KEY_A = ec.generate_private_key(ec.SECP256R1())
KEY_B = ec.generate_private_key(ec.SECP256R1())
ISS = "https://login.example.com"


def jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    return {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "use": "sig"}


def token(key: ec.EllipticCurvePrivateKey, kid: str, user: str = "alice@example.com") -> str:
    claims = {
        "iss": ISS,
        "aud": "llm-gateway",
        "iat": int(NOW),
        "exp": int(NOW) + 3600,
        "email": user,
        "email_verified": True,
    }
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})


def bearer(tok: str) -> dict[str, str]:
    return {"authorization": f"Bearer {tok}"}


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class JwksServer:
    """Serves `doc` (or `body`, or `status`) at /certs; counts requests; can hold them."""

    def __init__(self) -> None:
        self.doc: dict[str, Any] = {"keys": [jwk(KEY_A, "a")]}
        self.body: bytes | None = None
        self.status = 200
        self.hits = 0
        self.gate: asyncio.Event | None = None
        self.held = asyncio.Event()  # set when a request waits on the gate
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        if self.gate is not None:
            self.held.set()
            await self.gate.wait()
        body = self.body if self.body is not None else json.dumps(self.doc).encode()
        return web.Response(body=body, status=self.status, content_type="application/json")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/certs", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/certs"


@pytest.fixture
async def server() -> AsyncIterator[JwksServer]:
    srv = JwksServer()
    await srv.start()
    yield srv
    if srv.gate is not None:
        srv.gate.set()
    await srv.stop()


def issuer(url: str, **kw: Any) -> IssuerConfig:
    settings: dict[str, Any] = {
        "jwks_cache_ttl_s": 300,
        "jwks_refresh_min_interval_s": 30,
        "jwks_max_stale_s": 3600,
        **kw,
    }
    return IssuerConfig(
        name="corp",
        issuer=ISS,
        audiences=("llm-gateway",),
        algorithms=("ES256",),
        jwks_url=url,
        **settings,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def started(config: IssuerConfig, clock: Clock) -> Authenticator:
    auth = Authenticator(IdentityConfig(issuers=(config,)), clock=clock)
    await auth.start()
    return auth


async def refused(auth: Authenticator, tok: str) -> str:
    with pytest.raises(Unauthenticated) as info:
        await auth.authenticate(bearer(tok))
    return info.value.message


# --- rotation and its refresh -----------------------------------------------------------------


async def test_rotation_picked_up_by_unknown_kid_refresh(server: JwksServer, clock: Clock) -> None:
    auth = await started(issuer(server.url), clock)
    try:
        assert (await auth.authenticate(bearer(token(KEY_A, "a")))).user == "alice@example.com"
        server.doc = {"keys": [jwk(KEY_A, "a"), jwk(KEY_B, "b")]}  # the IdP rotates
        assert (await auth.authenticate(bearer(token(KEY_B, "b")))).user == "alice@example.com"
        cache = auth.jwks["corp"]
        assert (server.hits, cache.fetch_ok, cache.unknown_kid_refresh) == (2, 2, 1)
    finally:
        await auth.close()


async def test_unknown_kid_refresh_is_rate_limited(server: JwksServer, clock: Clock) -> None:
    auth = await started(issuer(server.url), clock)
    try:
        for kid in ("x", "y"):
            message = await refused(auth, token(KEY_B, kid))
            assert message == "unknown signing key for issuer corp"
        assert server.hits == 2  # start + one refresh: the second unknown kid fetched nothing
        assert auth.jwks["corp"].refresh_suppressed == 1
        clock.now += 30
        server.doc = {"keys": [jwk(KEY_B, "y")]}
        assert (await auth.authenticate(bearer(token(KEY_B, "y")))).user == "alice@example.com"
        assert server.hits == 3
    finally:
        await auth.close()


async def test_single_flight_under_50_concurrent_callers(server: JwksServer, clock: Clock) -> None:
    auth = await started(issuer(server.url), clock)
    try:
        server.doc = {"keys": [jwk(KEY_B, "b")]}
        server.gate = asyncio.Event()
        cache, joined = auth.jwks["corp"], 0
        refresh = cache.refresh

        async def counted(reason: Any) -> bool:
            nonlocal joined
            joined += 1  # before its first await: it has started the fetch or joined it
            return await refresh(reason)

        cache.refresh = counted  # type: ignore[method-assign]
        tokens = [token(KEY_B, "b", user=f"user{i}@example.com") for i in range(50)]
        calls = [asyncio.ensure_future(auth.authenticate(bearer(t))) for t in tokens]
        await server.held.wait()
        for _ in range(1000):  # until every caller waits on the one fetch (10 s at most)
            if joined == 50:
                break
            await asyncio.sleep(0.01)
        assert joined == 50, f"{joined} of 50 callers reached the refresh"
        server.gate.set()
        identities = await asyncio.gather(*calls)
        assert {i.user for i in identities} == {f"user{i}@example.com" for i in range(50)}
        assert server.hits == 2
        assert auth.jwks["corp"].unknown_kid_refresh == 1
    finally:
        await auth.close()


async def test_single_flight_for_direct_refreshes(server: JwksServer, clock: Clock) -> None:
    cache = JwksCache(issuer(server.url), clock=clock)
    server.gate = asyncio.Event()
    calls = [asyncio.ensure_future(cache.refresh("ttl")) for _ in range(50)]
    await server.held.wait()
    server.gate.set()
    assert await asyncio.gather(*calls) == [True] * 50
    assert (server.hits, cache.fetch_ok) == (1, 1)
    await cache.close()


# --- the endpoint down ----------------------------------------------------------------------


async def test_endpoint_down_at_start_then_up_without_restart(
    server: JwksServer, clock: Clock
) -> None:
    await server.stop()
    auth = await started(issuer(server.url), clock)  # not fatal
    try:
        tok = token(KEY_A, "a")
        assert await refused(auth, tok) == "signing keys unavailable for issuer corp"
        cache = auth.jwks["corp"]
        assert cache.fetch_failed == 2  # at start, and the on-demand retry for that request
        await server.start()
        assert await refused(auth, tok) == "signing keys unavailable for issuer corp"
        assert server.hits == 0  # rate limited: no fetch within the minimum interval
        clock.now += 30
        assert (await auth.authenticate(bearer(tok))).user == "alice@example.com"
        assert (server.hits, cache.fetch_ok) == (1, 1)
    finally:
        await auth.close()


async def test_endpoint_down_mid_run_serves_last_keys_until_max_stale(
    server: JwksServer, clock: Clock
) -> None:
    config = issuer(server.url, jwks_cache_ttl_s=60, jwks_max_stale_s=600)
    auth = await started(config, clock)
    cache = auth.jwks["corp"]
    try:
        tok = token(KEY_A, "a")
        await auth.authenticate(bearer(tok))
        await server.stop()
        clock.now += 60
        assert await cache.refresh("ttl") is False  # the background refresh fails
        assert cache.next_refresh_in() == 30  # and retries sooner
        clock.now += 500  # 560 s after the last success
        assert (await auth.authenticate(bearer(token(KEY_A, "a", "bob@x")))).user == "bob@x"
        assert cache.stale_served >= 1
        clock.now += 41  # 601 s: too stale, keys dropped
        assert (
            await refused(auth, token(KEY_A, "a", "dave@x"))
            == "signing keys unavailable for issuer corp"
        )
        # a token verified before the outage stays admitted from the cache until its exp
        assert (await auth.authenticate(bearer(tok))).user == "alice@example.com"
        await server.start()
        clock.now += 30
        assert (await auth.authenticate(bearer(token(KEY_A, "a", "carol@x")))).user == "carol@x"
        assert cache.fetch_failed == 2
    finally:
        await auth.close()


async def test_hanging_endpoint_times_out(
    server: JwksServer, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jwks, "FETCH_TIMEOUT_S", 0.2)
    server.gate = asyncio.Event()  # never set while fetching
    cache = JwksCache(issuer(server.url), clock=clock)
    assert await cache.refresh("start") is False
    assert (cache.fetch_failed, cache.keys(NOW)) == (1, None)


# --- bad documents ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param(b"<html>not json</html>", 200, id="html"),
        pytest.param(b"\xff\xfe garbage", 200, id="binary"),
        pytest.param(b"[1, 2]", 200, id="json_list"),
        pytest.param(b'{"keys": []}', 200, id="no_keys"),
        pytest.param(b'{"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB"}]}', 200, id="bad_key"),
        pytest.param(b'{"keys": "x"}', 200, id="keys_not_a_list"),
        pytest.param(b"x" * (jwks.MAX_JWKS_BYTES + 1), 200, id="oversized"),
        pytest.param(
            b'{"keys": [' + b'{"kty":"oct","k":"AAAA"},' * 50_000 + b"{}]}", 200, id="big"
        ),
        pytest.param(b'{"error": "down"}', 503, id="http_503"),
    ],
)
async def test_bad_jwks_keeps_the_last_good_keys(
    server: JwksServer, clock: Clock, body: bytes, status: int
) -> None:
    cache = JwksCache(issuer(server.url), clock=clock)
    assert await cache.refresh("start") is True
    good = cache.keys(NOW)
    server.body, server.status = body, status
    assert await cache.refresh("ttl") is False
    assert cache.keys(NOW) is good
    assert (cache.fetch_ok, cache.fetch_failed) == (1, 1)


def test_unusable_keys_are_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    rsa_1024 = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    ed = ed25519.Ed25519PrivateKey.generate()
    private = ECAlgorithm.to_jwk(KEY_B, as_dict=True)
    doc = {
        "keys": [
            jwk(KEY_A, "good-ec"),
            {**OKPAlgorithm.to_jwk(ed.public_key(), as_dict=True), "kid": "good-ed"},
            {**HMACAlgorithm.to_jwk(b"s" * 32, as_dict=True), "kid": "oct"},
            {**jwk(KEY_B, "enc"), "use": "enc"},
            {**private, "kid": "private"},
            {**RSAAlgorithm.to_jwk(rsa_1024.public_key(), as_dict=True), "kid": "short"},
            {"kty": "XYZ", "kid": "unknown-kty"},
            {"kty": "EC", "crv": "P-256", "x": "!!", "y": "??", "kid": "garbage"},
            {**jwk(KEY_B, "bad-alg"), "alg": "RSA-OAEP"},
            "not an object",
        ]
    }
    keys = KeySet.from_jwks(doc, source="corp")
    assert [k.kid for k in keys.keys] == ["good-ec", "good-ed"]
    skipped = [r.getMessage() for r in caplog.records if "skipped JWKS key" in r.getMessage()]
    assert len(skipped) == 8
    assert not any(private["d"] in message for message in caplog.messages)


def test_keyset_errors() -> None:
    with pytest.raises(JwksError, match="not valid JSON"):
        KeySet.from_json(b"{", source="corp")
    with pytest.raises(JwksError, match="no usable signing key"):
        KeySet.from_json(b'{"keys": [{"kty": "oct", "k": "AAAA"}]}', source="corp")


# --- jwks_file --------------------------------------------------------------------------------


async def test_jwks_file_loaded_at_start_and_on_refresh(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk(KEY_A, "a")]}))
    config = IssuerConfig(
        name="corp",
        issuer=ISS,
        audiences=("llm-gateway",),
        algorithms=("ES256",),
        jwks_file=str(path),
    )
    auth = await started(config, clock)
    try:
        assert (await auth.authenticate(bearer(token(KEY_A, "a")))).user == "alice@example.com"
        path.write_text(json.dumps({"keys": [jwk(KEY_B, "b")]}))
        assert (await auth.authenticate(bearer(token(KEY_B, "b")))).user == "alice@example.com"
        path.unlink()
        clock.now += 30
        assert await refused(auth, token(KEY_A, "c")) == "unknown signing key for issuer corp"
        assert auth.jwks["corp"].fetch_failed == 1
    finally:
        await auth.close()
