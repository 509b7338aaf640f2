"""The authenticator: which header carries the credential, static service tokens, anonymous
access, the size limit, and the verified-token cache (hits skip the verify, entries die at exp).
The JWKS fetch and the clock are injected."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from gateway_extproc.errors import Unauthenticated
from gateway_extproc.identity.authenticator import Authenticator, credential
from gateway_extproc.identity.jwt_verify import TokenRejected
from gateway_extproc.identity.model import (
    ANONYMOUS,
    AuthMethod,
    Identity,
    IdentityConfig,
    IssuerConfig,
    Kind,
    StaticToken,
)

NOW = 1_800_000_000.0
KEY = ec.generate_private_key(ec.SECP256R1())
JWKS = {"keys": [{**ECAlgorithm.to_jwk(KEY.public_key(), as_dict=True), "kid": "k1"}]}
ISSUER = IssuerConfig(
    name="corp",
    issuer="https://login.example.com",
    audiences=("llm-gateway",),
    algorithms=("ES256",),
    jwks_url="https://login.example.com/certs",
)
DOCS_BOT = "gw_docs_bot_0123456789abcdef"
CI = "gw_ci_fedcba9876543210"


def static(service: str, secret: str, **kw: Any) -> StaticToken:
    return StaticToken(service=service, sha256=hashlib.sha256(secret.encode()).digest(), **kw)


STATIC = (
    static("docs-bot", DOCS_BOT, groups=frozenset({"bots"}), attributes={"cost_center": "42"}),
    static("ci", CI),
)


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def fetch(url: str) -> bytes:
    return json.dumps(JWKS).encode()


def token(user: str = "alice@example.com", exp: float = NOW + 300, **extra: Any) -> str:
    claims = {
        "iss": ISSUER.issuer,
        "aud": "llm-gateway",
        "iat": int(NOW),
        "exp": int(exp),
        "email": user,
        "email_verified": True,
        **extra,
    }
    return jwt.encode(claims, KEY, algorithm="ES256", headers={"kid": "k1"})


def bearer(tok: str) -> dict[str, str]:
    return {"authorization": f"Bearer {tok}"}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def auth(clock: Clock) -> Any:
    config = IdentityConfig(issuers=(ISSUER,), static_tokens=STATIC)
    authenticator = Authenticator(config, clock=clock, fetch=fetch)
    await authenticator.start()
    yield authenticator
    await authenticator.close()


# --- which header ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({"authorization": "Bearer abc"}, "abc", id="bearer"),
        pytest.param({"authorization": "bearer abc"}, "abc", id="bearer_lower_case"),
        pytest.param({"authorization": "BEARER   abc  "}, "abc", id="bearer_upper_spaces"),
        pytest.param({"x-api-key": "abc"}, "abc", id="x_api_key"),
        pytest.param({"authorization": "Bearer a", "x-api-key": "b"}, "a", id="bearer_first"),
        pytest.param({"authorization": "Basic Zm9v", "x-api-key": "b"}, "b", id="basic_and_key"),
        pytest.param({}, None, id="none"),
        pytest.param({"authorization": "  ", "x-api-key": ""}, None, id="blank"),
        pytest.param({"x-other": "abc"}, None, id="other_header"),
        # what the AzureOpenAI SDK sends, read on Azure's paths only
        pytest.param(
            {":path": "/openai/deployments/d/chat/completions", "api-key": "k"}, "k", id="azure"
        ),
        pytest.param({":path": "/openai/v1/responses", "api-key": " k "}, "k", id="azure_v1"),
        pytest.param({":path": "/v1/chat/completions", "api-key": "k"}, None, id="api_key_off"),
        pytest.param(
            {":path": "/openai/v1/embeddings", "api-key": "k", "authorization": "Bearer t"},
            "t",
            id="azure_bearer_first",
        ),
    ],
)
def test_credential(headers: dict[str, str], expected: str | None) -> None:
    assert credential(headers) == expected


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        pytest.param({"authorization": "Basic YWxpY2U6cHc="}, "wrong_scheme", id="basic"),
        pytest.param({"authorization": "Digest username=x"}, "wrong_scheme", id="digest"),
        pytest.param({"authorization": "abc.def.ghi"}, "wrong_scheme", id="no_scheme"),
        pytest.param({"authorization": "Bearer"}, "malformed", id="empty_bearer"),
    ],
)
def test_credential_refused(headers: dict[str, str], reason: str) -> None:
    with pytest.raises(TokenRejected) as info:
        credential(headers)
    assert (info.value.reason, info.value.error) == (reason, "invalid_request")


async def test_basic_is_a_401_saying_bearer_is_required(auth: Authenticator) -> None:
    with pytest.raises(Unauthenticated) as info:
        await auth.authenticate({"authorization": "Basic YWxpY2U6cHc="})
    assert "Bearer" in info.value.message
    assert info.value.status == 401
    assert auth.refused["wrong_scheme"] == 1


async def test_jwt_via_bearer_and_x_api_key(auth: Authenticator) -> None:
    tok = token()
    by_bearer = await auth.authenticate(bearer(tok))
    by_key = await auth.authenticate({"x-api-key": tok})
    assert by_bearer == by_key
    assert (by_bearer.kind, by_bearer.user, by_bearer.issuer) == (
        Kind.USER,
        "alice@example.com",
        "corp",
    )


# --- anonymous ------------------------------------------------------------------------------


async def test_missing_credential_refused_when_anonymous_not_allowed(auth: Authenticator) -> None:
    with pytest.raises(Unauthenticated) as info:
        await auth.authenticate({})
    assert info.value.message == "missing credential: send Authorization: Bearer <token>"
    assert info.value.headers == {"www-authenticate": 'Bearer realm="llm-gateway"'}


async def test_anonymous_allowed() -> None:
    auth = Authenticator(IdentityConfig(issuers=(ISSUER,), allow_anonymous=True), fetch=fetch)
    assert await auth.authenticate({}) is ANONYMOUS
    # a credential that is sent must still be valid
    with pytest.raises(Unauthenticated):
        await auth.authenticate(bearer("not-a-token"))
    await auth.close()


# --- static tokens ---------------------------------------------------------------------------


async def test_static_token(auth: Authenticator) -> None:
    identity = await auth.authenticate({"x-api-key": DOCS_BOT})
    assert identity == Identity(
        kind=Kind.SERVICE,
        auth_method=AuthMethod.STATIC_TOKEN,
        user=None,
        service=None,  # static tokens are a namespace apart from JWT services
        groups=frozenset({"bots"}),
        issuer="static",
        attributes={"cost_center": "42"},
        expires_at=None,
        static_token="docs-bot",
    )
    assert (await auth.authenticate(bearer(CI))).static_token == "ci"
    assert auth.verifications == 0


async def test_static_tokens_may_share_the_service_namespace(clock: Clock) -> None:
    config = IdentityConfig(static_tokens=STATIC, static_tokens_share_service_namespace=True)
    identity = await Authenticator(config, clock=clock).authenticate({"x-api-key": DOCS_BOT})
    assert (identity.service, identity.static_token, identity.subject) == ("docs-bot",) * 3


async def test_static_token_compared_with_every_digest(
    auth: Authenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    await auth.authenticate({"x-api-key": DOCS_BOT})  # the first of two: no early exit
    assert len(calls) == len(STATIC)


@pytest.mark.parametrize(
    "wrong", [DOCS_BOT + "x", DOCS_BOT[:-1], DOCS_BOT.upper(), " ", "gw_"], ids=repr
)
async def test_wrong_static_token_refused(auth: Authenticator, wrong: str) -> None:
    with pytest.raises(Unauthenticated):
        await auth.authenticate({"x-api-key": wrong})


async def test_static_token_revoked_by_a_config_without_it(clock: Clock) -> None:
    before = Authenticator(IdentityConfig(static_tokens=STATIC), clock=clock)
    assert (await before.authenticate({"x-api-key": DOCS_BOT})).static_token == "docs-bot"
    after = Authenticator(IdentityConfig(static_tokens=STATIC[1:]), clock=clock)
    with pytest.raises(Unauthenticated) as info:
        await after.authenticate({"x-api-key": DOCS_BOT})
    assert info.value.message == "malformed token"
    assert (await after.authenticate({"x-api-key": CI})).static_token == "ci"


# --- size limit ------------------------------------------------------------------------------


async def test_16_kib_token_refused_without_parsing(auth: Authenticator) -> None:
    big = token(padding="x" * 16_384)
    assert len(big) > 16_384
    with pytest.raises(Unauthenticated) as info:
        await auth.authenticate(bearer(big))
    assert info.value.message == "token is larger than 8192 bytes"
    assert auth.verifications == 0
    assert auth.cached(bearer(big), NOW) is None


async def test_token_at_the_limit_is_verified(clock: Clock) -> None:
    tok = token()
    config = IdentityConfig(issuers=(ISSUER,), max_token_bytes=len(tok))
    auth = Authenticator(config, clock=clock, fetch=fetch)
    assert (await auth.authenticate(bearer(tok))).user == "alice@example.com"
    too_big = IdentityConfig(issuers=(ISSUER,), max_token_bytes=len(tok) - 1)
    with pytest.raises(Unauthenticated):
        await Authenticator(too_big, clock=clock, fetch=fetch).authenticate(bearer(tok))


# --- the verified-token cache ----------------------------------------------------------------


async def test_cache_hit_skips_the_verify(auth: Authenticator) -> None:
    tok = token()
    assert auth.cached(bearer(tok), NOW) is None
    first = await auth.authenticate(bearer(tok))
    assert (auth.verifications, auth.cache_size) == (1, 1)
    assert await auth.authenticate(bearer(tok)) is first
    assert auth.cached({"x-api-key": tok}, NOW) is first
    assert (auth.verifications, auth.cache_hits) == (1, 2)
    assert auth.cached(bearer(token(user="bob@example.com")), NOW) is None


async def test_cached_fast_path_never_raises(auth: Authenticator) -> None:
    assert auth.cached({}, NOW) is None
    assert auth.cached({"authorization": "Basic x"}, NOW) is None
    assert auth.cached(bearer("garbage"), NOW) is None
    assert auth.cached({"x-api-key": DOCS_BOT}, NOW) is not None  # static tokens are as cheap


async def test_cache_entry_dies_at_exp(auth: Authenticator, clock: Clock) -> None:
    exp = NOW + 60
    tok = token(exp=exp)
    await auth.authenticate(bearer(tok))
    assert auth.cached(bearer(tok), exp - 1) is not None
    assert auth.cached(bearer(tok), exp) is None  # no leeway extension for cached entries
    assert auth.cache_size == 0
    clock.now = exp  # still within the verifier's leeway: verified again, not cached
    assert (await auth.authenticate(bearer(tok))).user == "alice@example.com"
    assert (auth.verifications, auth.cache_size) == (2, 0)
    clock.now = exp + ISSUER.leeway_s
    with pytest.raises(Unauthenticated) as info:
        await auth.authenticate(bearer(tok))
    assert info.value.message == "token has expired"


async def test_failures_are_not_cached(auth: Authenticator) -> None:
    bad = token(aud="someone-else")
    for _ in range(2):
        with pytest.raises(Unauthenticated):
            await auth.authenticate(bearer(bad))
    assert (auth.verifications, auth.cache_size, auth.refused["wrong_audience"]) == (2, 0, 2)


async def test_cache_is_bounded_lru(clock: Clock) -> None:
    config = IdentityConfig(issuers=(ISSUER,), verified_cache_size=2)
    auth = Authenticator(config, clock=clock, fetch=fetch)
    a, b, c = (token(user=u) for u in ("a@x", "b@x", "c@x"))
    await auth.authenticate(bearer(a))
    await auth.authenticate(bearer(b))
    await auth.authenticate(bearer(a))  # a is now the most recent
    await auth.authenticate(bearer(c))  # evicts b
    assert auth.cache_size == 2
    assert auth.cached(bearer(a), NOW) is not None
    assert auth.cached(bearer(b), NOW) is None
    assert auth.cached(bearer(c), NOW) is not None


async def test_cache_disabled_and_tokens_without_exp(clock: Clock) -> None:
    no_cache = Authenticator(
        IdentityConfig(issuers=(ISSUER,), verified_cache_size=0), clock=clock, fetch=fetch
    )
    await no_cache.authenticate(bearer(token()))
    assert no_cache.cache_size == 0
    lax = dataclasses.replace(ISSUER, required_claims=())
    auth = Authenticator(IdentityConfig(issuers=(lax,)), clock=clock, fetch=fetch)
    claims = {"iss": ISSUER.issuer, "aud": "llm-gateway", "email": "a@x", "email_verified": True}
    forever = jwt.encode(claims, KEY, algorithm="ES256", headers={"kid": "k1"})
    identity = await auth.authenticate(bearer(forever))
    assert (identity.expires_at, auth.cache_size) == (None, 0)


async def test_tokens_are_never_logged(
    auth: Authenticator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good, bad = token(), token(aud="x")
    await auth.authenticate(bearer(good))
    with pytest.raises(Unauthenticated):
        await auth.authenticate(bearer(bad))
    with pytest.raises(Unauthenticated):
        await auth.authenticate({"x-api-key": DOCS_BOT + "x"})
    assert "authentication refused (wrong_audience)" in caplog.text
    for secret in (good, bad, good.split(".")[1], bad.split(".")[2], DOCS_BOT):
        assert secret not in caplog.text
