"""Verify a JWT and map its claims to an `Identity`. Pure: keys and `now` are passed in.

Order of checks (nothing from the token is trusted before its signature verifies, and the
token never chooses how it is verified):
1. `inspect`: parse the header and, unverified, the claims. Refuse `alg: none` and algorithms
   the gateway does not support; pick the issuer by the exact `iss`; refuse an algorithm not in
   that issuer's allow-list, and HS* unless the issuer has a shared secret (an issuer with a
   JWKS never accepts HMAC: no HS256-signed-with-the-public-key confusion).
2. `verify`: pick the key (by kid; without a kid only if exactly one key fits the algorithm),
   then `jwt.decode` with exactly that one algorithm, the issuer's audiences, `iss`, required
   claims; then exp/nbf/iat against `now` with the issuer's leeway.
3. `identity_from_claims`: user / groups / service / attributes by dotted claim paths (the
   standard `email` claim only with `email_verified: true`, else the user is `sub`), then
   what the issuer may vouch for (`vouching`): a kind, user domain, service name or group it
   may not assert is refused.

Every refusal is a `TokenRejected` with a short message fit for the client (it never echoes the
token or values taken from it) and a `reason` code for counting. `UnknownKeyId` lets the caller
refresh the issuer's JWKS and retry once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from gateway_extproc.identity.jwks import KeySet, PublicKey, SigningKey
from gateway_extproc.identity.model import AuthMethod, Identity, IssuerConfig, Kind
from gateway_extproc.identity.vouching import refusal

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "EMAIL_CLAIM",
    "HMAC_ALGORITHMS",
    "KeysUnavailable",
    "TokenRejected",
    "UnknownKeyId",
    "Unverified",
    "claim_at",
    "identity_from_claims",
    "inspect",
    "verify",
    "verify_token",
]

_EC_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "ES256": ec.SECP256R1,
    "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1,
}
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
ASYMMETRIC_ALGORITHMS = _RSA_ALGORITHMS | frozenset(_EC_CURVES) | {"EdDSA"}
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
_CLIENT_ID_CLAIMS = ("azp", "client_id")
EMAIL_CLAIM = "email"  # OIDC's standard claim, whose companion is `email_verified`


class TokenRejected(Exception):
    """The token is not admitted. `message` is for the client; `reason` is a stable code."""

    def __init__(self, message: str, *, reason: str, error: str = "invalid_token") -> None:
        super().__init__(message)
        self.message, self.reason, self.error = message, reason, error


class UnknownKeyId(TokenRejected):
    """No key in the issuer's set fits the token: refresh the JWKS and retry once."""

    def __init__(self, issuer: str) -> None:
        super().__init__(f"unknown signing key for issuer {issuer}", reason="unknown_kid")


class KeysUnavailable(TokenRejected):
    def __init__(self, issuer: str) -> None:
        super().__init__(f"signing keys unavailable for issuer {issuer}", reason="keys_unavailable")


@dataclasses.dataclass(frozen=True, slots=True)
class Unverified:
    """What the token says about how to verify it, already checked against policy."""

    issuer: IssuerConfig
    alg: str
    kid: str | None


def _malformed() -> TokenRejected:
    return TokenRejected("malformed token", reason="malformed")


def inspect(token: str, issuers: Mapping[str, IssuerConfig]) -> Unverified:
    """Step 1: header and unverified `iss`. `issuers` is keyed by the exact `iss` value."""
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except (jwt.PyJWTError, ValueError, TypeError):
        raise _malformed() from None
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        raise TokenRejected("token header names no algorithm", reason="malformed")
    if alg.lower() == "none":
        raise TokenRejected("unsigned tokens (alg none) are never accepted", reason="alg_none")
    if alg not in ASYMMETRIC_ALGORITHMS and alg not in HMAC_ALGORITHMS:
        raise TokenRejected("token algorithm is not supported", reason="alg_not_allowed")
    iss = claims.get("iss")
    if not isinstance(iss, str) or not iss:
        raise TokenRejected("token names no issuer", reason="wrong_issuer")
    issuer = issuers.get(iss)
    if issuer is None:
        raise TokenRejected("token issuer is not trusted", reason="wrong_issuer")
    if alg in HMAC_ALGORITHMS and issuer.hs_secret is None:
        raise TokenRejected(
            f"HMAC-signed tokens ({alg}) are not accepted for issuer {issuer.name}",
            reason="key_confusion",
        )
    if alg not in issuer.algorithms or (alg not in HMAC_ALGORITHMS and issuer.hs_secret):
        raise TokenRejected(
            f"algorithm {alg} is not allowed for issuer {issuer.name}", reason="alg_not_allowed"
        )
    kid = header.get("kid")  # PyJWT has checked it is a string if present
    return Unverified(issuer=issuer, alg=alg, kid=kid if isinstance(kid, str) else None)


def _fits(key: SigningKey, alg: str) -> bool:
    if key.alg is not None and key.alg != alg:
        return False
    k = key.key
    if alg in _RSA_ALGORITHMS:
        return isinstance(k, RSAPublicKey)
    if alg in _EC_CURVES:
        return isinstance(k, ec.EllipticCurvePublicKey) and isinstance(k.curve, _EC_CURVES[alg])
    if alg == "EdDSA":
        return isinstance(k, Ed25519PublicKey | Ed448PublicKey)
    return False


def _pick_key(u: Unverified, keys: KeySet | None) -> PublicKey:
    name = u.issuer.name
    if keys is None:
        raise KeysUnavailable(name)
    if u.kid is not None:
        named = keys.with_kid(u.kid)
        if not named:
            raise UnknownKeyId(name)
        fitting = [k for k in named if _fits(k, u.alg)]
        if not fitting:
            raise TokenRejected(
                f"signing key {u.kid} of issuer {name} cannot verify {u.alg}",
                reason="key_mismatch",
            )
        return fitting[0].key
    fitting = [k for k in keys.keys if _fits(k, u.alg)]
    if not fitting:
        raise UnknownKeyId(name)
    if len(fitting) > 1:
        raise TokenRejected(
            f"token names no key id and issuer {name} has several {u.alg} keys",
            reason="ambiguous_key",
        )
    return fitting[0].key


def _rejection(exc: jwt.PyJWTError) -> TokenRejected:
    """PyJWT's exception as a refusal with a fixed message (subclasses first)."""
    if isinstance(exc, jwt.InvalidSignatureError):
        return TokenRejected("token signature is invalid", reason="bad_signature")
    if isinstance(exc, jwt.InvalidAudienceError):
        return TokenRejected("token audience is not accepted", reason="wrong_audience")
    if isinstance(exc, jwt.InvalidIssuerError):
        return TokenRejected("token issuer is not trusted", reason="wrong_issuer")
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return TokenRejected(f"token lacks the required claim {exc.claim}", reason="missing_claim")
    if isinstance(exc, jwt.InvalidKeyError):
        return TokenRejected("signing key is unusable or too short", reason="weak_key")
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return TokenRejected("token algorithm is not allowed", reason="alg_not_allowed")
    if isinstance(exc, jwt.DecodeError):
        return _malformed()
    return TokenRejected("invalid token", reason="invalid")


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenRejected(f"token claim {name} is not a number", reason="malformed")
    return float(value)


def _check_times(claims: Mapping[str, Any], leeway: float, now: float) -> float | None:
    """PyJWT's rules with an explicit `now`; returns exp."""
    exp, nbf, iat = _number(claims, "exp"), _number(claims, "nbf"), _number(claims, "iat")
    if exp is not None and exp <= now - leeway:
        raise TokenRejected("token has expired", reason="expired")
    if nbf is not None and nbf > now + leeway:
        raise TokenRejected("token is not yet valid", reason="not_yet_valid")
    if iat is not None and iat > now + leeway:
        raise TokenRejected("token is issued in the future", reason="not_yet_valid")
    return exp


def verify(token: str, unverified: Unverified, keys: KeySet | None, now: float) -> Identity:
    """Step 2: the signature and claims, then the identity. `keys` is ignored for HS issuers."""
    issuer = unverified.issuer
    key: PublicKey | bytes = (
        issuer.hs_secret if issuer.hs_secret is not None else _pick_key(unverified, keys)
    )
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[unverified.alg],
            audience=list(issuer.audiences),
            issuer=issuer.issuer,
            options={
                "require": list(issuer.required_claims),
                "verify_exp": False,  # checked below against `now`
                "verify_nbf": False,
                "verify_iat": False,
                "enforce_minimum_key_length": True,
            },
        )
    except jwt.PyJWTError as exc:
        raise _rejection(exc) from None
    exp = _check_times(claims, issuer.leeway_s, now)
    return identity_from_claims(claims, issuer, expires_at=exp)


def verify_token(
    token: str,
    issuers: Mapping[str, IssuerConfig],
    keys: Mapping[str, KeySet | None],
    now: float,
) -> Identity:
    """Both steps; `keys` by issuer name."""
    unverified = inspect(token, issuers)
    return verify(token, unverified, keys.get(unverified.issuer.name), now)


_MISSING = object()


def claim_at(claims: Mapping[str, Any], path: str) -> object:
    """The value at a dotted path (`realm_access.roles`), or None."""
    value: object = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part, _MISSING)
        if value is _MISSING:
            return None
    return value


def _first_string(claims: Mapping[str, Any], paths: tuple[str, ...]) -> str | None:
    return _first_path(claims, paths)[0]


def _first_path(claims: Mapping[str, Any], paths: tuple[str, ...]) -> tuple[str | None, str]:
    """The first non-blank string among `paths`, and the path it came from."""
    for path in paths:
        value = claim_at(claims, path)
        if isinstance(value, str) and value.strip():
            return value, path
    return None, ""


def _email_verified(claims: Mapping[str, Any]) -> bool:
    """OIDC's `email_verified` is a boolean; some IdPs send the string "true"."""
    value = claims.get("email_verified")
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _user(claims: Mapping[str, Any], issuer: IssuerConfig) -> str | None:
    """The user claim. The standard `email` claim counts only when verified (or when the issuer
    is trusted with unverified addresses): an IdP that lets users edit their address would
    otherwise let anyone become anyone. An unverified address gives way to `sub`, which the
    IdP assigns."""
    user, path = _first_path(claims, issuer.claims.user)
    if path != EMAIL_CLAIM or issuer.trust_unverified_email or _email_verified(claims):
        return user
    if Kind.USER not in issuer.asserts.kinds:
        return user  # refused as a user by `refusal`, saying the issuer asserts no users
    domains = issuer.asserts.user_domains
    if domains is not None:
        raise TokenRejected(
            f"token e-mail is not verified (email_verified is not true) and issuer "
            f"{issuer.name} vouches only for users with e-mail addresses in "
            f"{', '.join(domains) or 'none'}",
            reason="email_unverified",
        )
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub.strip():
        raise TokenRejected(
            "token e-mail is not verified (email_verified is not true) and the token has no "
            "sub to name the user by",
            reason="email_unverified",
        )
    return sub


def identity_from_claims(
    claims: Mapping[str, Any], issuer: IssuerConfig, *, expires_at: float | None
) -> Identity:
    """Step 3. A user when a user path resolves, else a service; a token naming neither, or
    naming what its issuer may not assert, is refused."""
    mapping = issuer.claims
    groups: set[str] = set()
    for path in mapping.groups:
        value = claim_at(claims, path)
        if isinstance(value, str):
            groups.update(value.split())
        elif isinstance(value, list):
            groups.update(g for g in value if isinstance(g, str) and g)
    attributes: dict[str, str] = {}
    for name, path in mapping.attributes.items():
        value = claim_at(claims, path)
        if isinstance(value, str) or (
            isinstance(value, int | float) and not isinstance(value, bool)
        ):
            attributes[name] = str(value)
    user = _user(claims, issuer)
    service = None if user is not None else _first_string(claims, mapping.service)
    if user is None and service is None:
        paths = ", ".join(mapping.user + mapping.service)
        raise TokenRejected(
            f"token names no user or service (claims tried: {paths})", reason="no_principal"
        )
    identity = Identity(
        kind=Kind.USER if user is not None else Kind.SERVICE,
        auth_method=AuthMethod.JWT,
        user=user,
        service=service,
        groups=frozenset(groups),
        issuer=issuer.name,
        attributes=attributes,
        expires_at=expires_at,
        client_id=_first_string(claims, _CLIENT_ID_CLAIMS),
    )
    why = refusal(identity, issuer.name, issuer.asserts)
    if why is not None:
        raise TokenRejected(why, reason="not_vouched")
    return identity
