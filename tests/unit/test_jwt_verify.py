"""JWT verification: every attack from the issue refused with a clear message, valid tokens of
every supported algorithm admitted, claim mapping, leeway boundaries at a fixed `now`.

Pure cases call `verify_token`; the cases that live at the request level (no or the wrong
credential, a 16 KB token, signing keys unavailable) go through an `Authenticator` whose JWKS
fetch is injected."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from gateway_extproc.errors import Unauthenticated
from gateway_extproc.identity.authenticator import Authenticator
from gateway_extproc.identity.issuer_settings import DEFAULT_ALGORITHMS
from gateway_extproc.identity.jwks import KeySet
from gateway_extproc.identity.jwt_verify import (
    TokenRejected,
    UnknownKeyId,
    claim_at,
    verify_token,
)
from gateway_extproc.identity.model import (
    AuthMethod,
    ClaimMapping,
    Identity,
    IdentityConfig,
    IssuerConfig,
    Kind,
)

NOW = 1_800_000_000.0
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PS_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
PARTNER_EC = ec.generate_private_key(ec.SECP256R1())
ATTACKER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
HS_SECRET = b"0123456789abcdef0123456789abcdef"  # 32 bytes: HS256's minimum

Private = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def public_jwk(key: Private, kid: str, alg: str | None = None) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "use": "sig", **({"alg": alg} if alg else {})}


CORP = IssuerConfig(
    name="corp",
    issuer="https://login.example.com/realms/corp",
    audiences=("llm-gateway",),
    algorithms=DEFAULT_ALGORITHMS,
    jwks_url="https://login.example.com/realms/corp/certs",
    claims=ClaimMapping(
        user=("email", "preferred_username"),
        groups=("groups", "realm_access.roles"),
        service=("client_id", "azp"),
        attributes={"department": "department", "cost_center": "org.cost_center"},
    ),
)
PARTNER = IssuerConfig(
    name="partner",
    issuer="https://partner.example.net",
    audiences=("gateway-a", "gateway-b"),
    algorithms=("ES256",),
    jwks_file="/unused/jwks.json",
)
HS = IssuerConfig(
    name="internal",
    issuer="https://auth.internal",
    audiences=("llm-gateway",),
    algorithms=("HS256",),
    hs_secret=HS_SECRET,
)
ISSUERS = {i.issuer: i for i in (CORP, PARTNER, HS)}
CORP_JWKS = {
    "keys": [
        public_jwk(RSA_KEY, "rsa-1"),
        public_jwk(PS_KEY, "ps-1", "PS256"),
        public_jwk(EC_KEY, "ec-1"),
        public_jwk(ED_KEY, "ed-1"),
    ]
}
KEYS: dict[str, KeySet | None] = {
    "corp": KeySet.from_jwks(CORP_JWKS, source="corp"),
    "partner": KeySet.from_jwks({"keys": [public_jwk(PARTNER_EC, "p-1")]}, source="partner"),
}


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": CORP.issuer,
        "aud": "llm-gateway",
        "sub": "f3c1",
        "iat": int(NOW) - 10,
        "exp": int(NOW) + 300,
        "email": "alice@example.com",
        "email_verified": True,
        "groups": ["eng"],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(
    payload: Mapping[str, Any],
    key: Private | bytes = RSA_KEY,
    alg: str = "RS256",
    kid: str | None = "rsa-1",
) -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(dict(payload), key, algorithm=alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: Mapping[str, Any], payload: bytes | Mapping[str, Any], signature: bytes) -> str:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return f"{b64(json.dumps(header).encode())}.{b64(body)}.{b64(signature)}"


def rs256_raw(header: Mapping[str, Any], payload: bytes) -> str:
    """A correctly RS256-signed JWS whose payload is arbitrary bytes."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(payload)}".encode()
    signature = RSA_KEY.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input.decode()}.{b64(signature)}"


def key_confusion() -> str:
    """HS256 'signed' with the issuer's RSA public key (PEM) as the HMAC secret."""
    pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims()).encode())}"
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def tampered() -> str:
    header, _, signature = sign(claims()).split(".")
    evil = b64(json.dumps(claims(email="root@example.com", groups=["admins"])).encode())
    return f"{header}.{evil}.{signature}"


# --- every attack, one case each ------------------------------------------------------------

ATTACKS: list[tuple[str, Callable[[], str], str, str]] = [
    (
        "alg_none",
        lambda: forge({"alg": "none", "typ": "JWT"}, claims(), b""),
        "alg_none",
        "unsigned tokens (alg none) are never accepted",
    ),
    (
        "alg_None_mixed_case",
        lambda: forge({"alg": "NoNe"}, claims(), b""),
        "alg_none",
        "unsigned tokens (alg none) are never accepted",
    ),
    (
        "hs256_signed_with_issuer_public_key",
        key_confusion,
        "key_confusion",
        "HMAC-signed tokens (HS256) are not accepted for issuer corp",
    ),
    (
        "hs256_random_secret_against_jwks_issuer",
        lambda: sign(claims(), b"x" * 32, "HS256"),
        "key_confusion",
        "HMAC-signed tokens (HS256) are not accepted for issuer corp",
    ),
    (
        "expired",
        lambda: sign(claims(exp=int(NOW) - 31)),
        "expired",
        "token has expired",
    ),
    (
        "not_yet_valid_nbf",
        lambda: sign(claims(nbf=int(NOW) + 31)),
        "not_yet_valid",
        "token is not yet valid",
    ),
    (
        "issued_in_the_future",
        lambda: sign(claims(iat=int(NOW) + 31)),
        "not_yet_valid",
        "token is issued in the future",
    ),
    (
        "wrong_issuer",
        lambda: sign(claims(iss="https://evil.example.com")),
        "wrong_issuer",
        "token issuer is not trusted",
    ),
    (
        "no_issuer",
        lambda: sign(claims(iss=None)),
        "wrong_issuer",
        "token names no issuer",
    ),
    (
        "trusted_iss_signed_by_another_key_same_kid",
        lambda: sign(claims(), ATTACKER),
        "bad_signature",
        "token signature is invalid",
    ),
    (
        "wrong_audience",
        lambda: sign(claims(aud="another-service")),
        "wrong_audience",
        "token audience is not accepted",
    ),
    (
        "no_audience",
        lambda: sign(claims(aud=None)),
        "missing_claim",
        "token lacks the required claim aud",
    ),
    (
        "unknown_kid",
        lambda: sign(claims(), ATTACKER, kid="rotated-2"),
        "unknown_kid",
        "unknown signing key for issuer corp",
    ),
    (
        "tampered_payload",
        tampered,
        "bad_signature",
        "token signature is invalid",
    ),
    (
        "truncated_signature",
        lambda: sign(claims())[:-2],  # 255 of 256 signature bytes
        "bad_signature",
        "token signature is invalid",
    ),
    (
        "truncated_to_two_segments",
        lambda: sign(claims()).rsplit(".", 1)[0],
        "malformed",
        "malformed token",
    ),
    (
        "truncated_mid_payload",
        lambda: sign(claims())[:60],
        "malformed",
        "malformed token",
    ),
    (
        "non_json_payload",
        lambda: rs256_raw({"alg": "RS256", "kid": "rsa-1"}, b"this is not json"),
        "malformed",
        "malformed token",
    ),
    (
        "json_payload_not_an_object",
        lambda: rs256_raw({"alg": "RS256", "kid": "rsa-1"}, b"[1, 2, 3]"),
        "malformed",
        "malformed token",
    ),
    ("not_a_jwt", lambda: "sk-not-a-jwt-at-all", "malformed", "malformed token"),
    ("garbage_segments", lambda: "a.b.c", "malformed", "malformed token"),
    ("empty", lambda: "", "malformed", "malformed token"),
    (
        "kid_not_a_string",
        lambda: forge({"alg": "RS256", "kid": 7}, claims(), b"sig"),
        "malformed",
        "malformed token",
    ),
    (
        "no_alg",
        lambda: forge({"typ": "JWT"}, claims(), b"sig"),
        "malformed",
        "token header names no algorithm",
    ),
    (
        "unsupported_alg",
        lambda: forge({"alg": "ES256K", "kid": "ec-1"}, claims(), b"sig"),
        "alg_not_allowed",
        "token algorithm is not supported",
    ),
    (
        "alg_outside_issuer_allow_list",
        lambda: sign(claims(iss=PARTNER.issuer, aud="gateway-a"), RSA_KEY, "RS256", "p-1"),
        "alg_not_allowed",
        "algorithm RS256 is not allowed for issuer partner",
    ),
    (
        "asymmetric_alg_for_hs_issuer",
        lambda: sign(claims(iss=HS.issuer), RSA_KEY, "RS256"),
        "alg_not_allowed",
        "algorithm RS256 is not allowed for issuer internal",
    ),
    (
        "hs256_wrong_secret",
        lambda: sign(claims(iss=HS.issuer), b"y" * 32, "HS256", None),
        "bad_signature",
        "token signature is invalid",
    ),
    (
        "kid_of_an_ec_key_with_rs256",
        lambda: sign(claims(), RSA_KEY, "RS256", "ec-1"),
        "key_mismatch",
        "signing key ec-1 of issuer corp cannot verify RS256",
    ),
    (
        "declared_alg_mismatch_ps_key_rs256",
        lambda: sign(claims(), PS_KEY, "RS256", "ps-1"),
        "key_mismatch",
        "signing key ps-1 of issuer corp cannot verify RS256",
    ),
    (
        "no_kid_two_keys_fit",  # rsa-1 declares no alg, ps-1 declares PS256: both fit PS256
        lambda: sign(claims(), PS_KEY, "PS256", None),
        "ambiguous_key",
        "token names no key id and issuer corp has several PS256 keys",
    ),
    (
        "missing_required_exp",
        lambda: sign(claims(exp=None)),
        "missing_claim",
        "token lacks the required claim exp",
    ),
    (
        "exp_not_a_number",
        lambda: sign(claims(exp="4102444800")),
        "malformed",
        "token claim exp is not a number",
    ),
    (
        "names_no_principal",
        lambda: sign(claims(email=None)),
        "no_principal",
        "token names no user or service (claims tried: email, preferred_username, client_id, azp)",
    ),
]


@pytest.mark.parametrize(
    ("make", "reason", "message"),
    [pytest.param(make, reason, message, id=name) for name, make, reason, message in ATTACKS],
)
def test_attack_is_refused(make: Callable[[], str], reason: str, message: str) -> None:
    token = make()
    with pytest.raises(TokenRejected) as info:
        verify_token(token, ISSUERS, KEYS, NOW)
    assert (info.value.reason, info.value.message) == (reason, message)
    assert info.value.error == "invalid_token"
    if len(token) > 20:
        assert token not in info.value.message
        assert token.split(".")[0] not in str(info.value)


def test_unknown_kid_is_its_own_type_so_the_caller_can_refresh() -> None:
    with pytest.raises(UnknownKeyId):
        verify_token(sign(claims(), ATTACKER, kid="rotated-2"), ISSUERS, KEYS, NOW)
    # after rotation the refreshed set has the key: the same token verifies
    rotated = {"corp": KeySet.from_jwks({"keys": [public_jwk(ATTACKER, "rotated-2")]}, source="c")}
    token = sign(claims(), ATTACKER, kid="rotated-2")
    assert verify_token(token, ISSUERS, rotated, NOW).user == "alice@example.com"


def test_no_keys_for_a_jwks_issuer_is_refused() -> None:
    with pytest.raises(TokenRejected) as info:
        verify_token(sign(claims()), ISSUERS, {"corp": None}, NOW)
    assert info.value.message == "signing keys unavailable for issuer corp"


# --- request-level attacks, through the authenticator ------------------------------------


def fetch_corp_jwks(up: bool) -> Callable[[str], Any]:
    async def fetch(url: str) -> bytes:
        if not up:
            raise ConnectionRefusedError(111, "Connection refused")
        return json.dumps(CORP_JWKS).encode()

    return fetch


REQUEST_ATTACKS: list[tuple[str, dict[str, str], bool, str, str]] = [
    (
        "missing_authorization",
        {},
        True,
        "missing credential: send Authorization: Bearer <token>",
        'Bearer realm="llm-gateway"',
    ),
    (
        "basic_instead_of_bearer",
        {"authorization": "Basic YWxpY2U6c2VjcmV0"},
        True,
        "the Authorization header must use the Bearer scheme: Bearer <token>",
        'error="invalid_request"',
    ),
    (
        "token_of_16_kib",
        {"authorization": "Bearer " + sign(claims(padding="x" * 16_384))},
        True,
        "token is larger than 8192 bytes",
        'error="invalid_token"',
    ),
    (
        "jwks_endpoint_down",
        {"authorization": "Bearer " + sign(claims())},
        False,
        "signing keys unavailable for issuer corp",
        'error="invalid_token"',
    ),
]


@pytest.mark.parametrize(
    ("headers", "jwks_up", "message", "challenge"),
    [pytest.param(*case[1:], id=case[0]) for case in REQUEST_ATTACKS],
)
async def test_request_level_attack_is_refused(
    headers: dict[str, str], jwks_up: bool, message: str, challenge: str
) -> None:
    config = IdentityConfig(issuers=(CORP,))
    auth = Authenticator(config, clock=lambda: NOW, fetch=fetch_corp_jwks(jwks_up))
    await auth.start()
    try:
        with pytest.raises(Unauthenticated) as info:
            await auth.authenticate(headers)
    finally:
        await auth.close()
    assert info.value.status == 401
    assert info.value.message == message
    assert challenge in info.value.headers["www-authenticate"]
    assert auth.verifications == (1 if not jwks_up else 0)


# --- valid tokens ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "alg", "kid"),
    [
        pytest.param(RSA_KEY, "RS256", "rsa-1", id="RS256"),
        pytest.param(RSA_KEY, "RS512", "rsa-1", id="RS512"),
        pytest.param(PS_KEY, "PS256", "ps-1", id="PS256"),
        pytest.param(EC_KEY, "ES256", "ec-1", id="ES256"),
        pytest.param(ED_KEY, "EdDSA", "ed-1", id="EdDSA"),
    ],
)
def test_valid_token_is_admitted(key: Private, alg: str, kid: str) -> None:
    token = sign(claims(azp="web-console", department="ml"), key, alg, kid)
    assert verify_token(token, ISSUERS, KEYS, NOW) == Identity(
        kind=Kind.USER,
        auth_method=AuthMethod.JWT,
        user="alice@example.com",
        service=None,
        groups=frozenset({"eng"}),
        issuer="corp",
        attributes={"department": "ml"},
        expires_at=NOW + 300,
        client_id="web-console",
    )


def test_several_issuers_at_once() -> None:
    corp = sign(claims())
    partner = sign(
        claims(iss=PARTNER.issuer, aud=["other", "gateway-b"], email="bob@partner.net"),
        PARTNER_EC,
        "ES256",
        "p-1",
    )
    internal = sign(claims(iss=HS.issuer, email="carol@example.com"), HS_SECRET, "HS256", None)
    got = [verify_token(t, ISSUERS, KEYS, NOW) for t in (corp, partner, internal)]
    assert [(i.issuer, i.user) for i in got] == [
        ("corp", "alice@example.com"),
        ("partner", "bob@partner.net"),
        ("internal", "carol@example.com"),
    ]
    # a partner token is not verified with corp's keys, nor the other way round
    with pytest.raises(TokenRejected):
        verify_token(sign(claims(iss=PARTNER.issuer), EC_KEY, "ES256", "ec-1"), ISSUERS, KEYS, NOW)


@pytest.mark.parametrize(
    ("overrides", "admitted"),
    [
        pytest.param({"exp": int(NOW) - 29}, True, id="exp_within_leeway"),
        pytest.param({"exp": int(NOW) - 30}, False, id="exp_at_leeway"),
        pytest.param({"nbf": int(NOW) + 30}, True, id="nbf_at_leeway"),
        pytest.param({"nbf": int(NOW) + 31}, False, id="nbf_past_leeway"),
        pytest.param({"iat": int(NOW) + 30}, True, id="iat_at_leeway"),
        pytest.param({"iat": int(NOW) + 31}, False, id="iat_past_leeway"),
        pytest.param({"nbf": int(NOW)}, True, id="nbf_now"),
    ],
)
def test_time_claims_leeway_boundaries(overrides: dict[str, int], admitted: bool) -> None:
    token = sign(claims(**overrides))
    if admitted:
        assert verify_token(token, ISSUERS, KEYS, NOW).user == "alice@example.com"
    else:
        with pytest.raises(TokenRejected):
            verify_token(token, ISSUERS, KEYS, NOW)


def test_nested_claim_paths_and_attributes() -> None:
    token = sign(
        claims(
            groups=None,
            realm_access={"roles": ["ml-team", "offline_access", 7, None]},
            org={"cost_center": 4711},
            department=["not", "a", "string"],
        )
    )
    identity = verify_token(token, ISSUERS, KEYS, NOW)
    assert identity.groups == frozenset({"ml-team", "offline_access"})
    assert identity.attributes == {"cost_center": "4711"}


def test_groups_from_list_and_space_separated_string_are_merged() -> None:
    token = sign(claims(groups="eng  ml-team\tplatform", realm_access={"roles": ["eng", "ops"]}))
    assert verify_token(token, ISSUERS, KEYS, NOW).groups == frozenset(
        {"eng", "ml-team", "platform", "ops"}
    )


def test_client_credentials_token_is_a_service() -> None:
    token = sign(claims(email=None, sub="svc-7", client_id="ci-runner", azp="ci-runner"))
    identity = verify_token(token, ISSUERS, KEYS, NOW)
    assert (identity.kind, identity.user, identity.service, identity.client_id) == (
        Kind.SERVICE,
        None,
        "ci-runner",
        "ci-runner",
    )
    assert identity.subject == "ci-runner"


def test_service_from_azp_when_no_client_id() -> None:
    identity = verify_token(sign(claims(email=None, azp="agent-x")), ISSUERS, KEYS, NOW)
    assert (identity.kind, identity.service) == (Kind.SERVICE, "agent-x")


def test_user_from_the_second_path() -> None:
    token = sign(claims(email=None, preferred_username="alice", client_id="web"))
    identity = verify_token(token, ISSUERS, KEYS, NOW)
    assert (identity.kind, identity.user, identity.client_id) == (Kind.USER, "alice", "web")


def test_hs256_with_configured_secret_and_refused_against_jwks_issuer() -> None:
    ok = sign(claims(iss=HS.issuer), HS_SECRET, "HS256", None)
    assert verify_token(ok, ISSUERS, KEYS, NOW).issuer == "internal"
    # the same secret, but the token claims the JWKS issuer: key confusion, refused
    with pytest.raises(TokenRejected) as info:
        verify_token(sign(claims(), HS_SECRET, "HS256", None), ISSUERS, KEYS, NOW)
    assert info.value.reason == "key_confusion"


@pytest.mark.parametrize(
    ("key", "alg"),
    [pytest.param(EC_KEY, "ES256", id="ES256"), pytest.param(RSA_KEY, "RS256", id="RS256")],
)
def test_no_kid_with_exactly_one_fitting_key(key: Private, alg: str) -> None:
    token = sign(claims(), key, alg, None)
    assert verify_token(token, ISSUERS, KEYS, NOW).user == "alice@example.com"


def test_claim_at() -> None:
    doc = {"a": {"b": {"c": 1}}, "x": None}
    assert claim_at(doc, "a.b.c") == 1
    assert claim_at(doc, "a.b") == {"c": 1}
    assert claim_at(doc, "a.z") is None
    assert claim_at(doc, "a.b.c.d") is None
    assert claim_at(doc, "x") is None


_SEGMENT = st.binary(max_size=64).map(b64)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=200),
        st.lists(_SEGMENT, min_size=1, max_size=4).map(".".join),
        st.tuples(st.sampled_from(["RS256", "ES256", "HS256", "none", "EdDSA"]), _SEGMENT).map(
            lambda t: forge({"alg": t[0], "kid": "rsa-1"}, claims(), t[1].encode())
        ),
    )
)
def test_arbitrary_input_is_refused_not_crashed(token: str) -> None:
    with pytest.raises(TokenRejected):
        verify_token(token, ISSUERS, KEYS, NOW)
