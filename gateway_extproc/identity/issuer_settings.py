"""The `identity.issuers` settings: one entry per JWT issuer (its `iss`, audiences, where its keys
come from - a JWKS URL or file, or a shared `hs_secret` read here from the environment or a file -,
allowed algorithms, claim mapping, what it may assert, cache timings). See `settings` for the
whole section."""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from gateway_extproc.identity.jwks import insecure_url
from gateway_extproc.identity.jwt_verify import ASYMMETRIC_ALGORITHMS, HMAC_ALGORITHMS
from gateway_extproc.identity.model import ClaimMapping, IssuerConfig
from gateway_extproc.identity.reader import SectionReader
from gateway_extproc.identity.vouching import parse_asserts, several_unrestricted

__all__ = ["DEFAULT_ALGORITHMS", "parse_issuers"]

# Every asymmetric algorithm; HS* only when an issuer has an hs_secret (then HS256 by default).
_RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
DEFAULT_ALGORITHMS = (*_RSA_ALGORITHMS, "ES256", "ES384", "ES512", "EdDSA")
_HMAC_MIN_SECRET = {"HS256": 32, "HS384": 48, "HS512": 64}  # bytes: the hash's output size

_ISSUER_KEYS = frozenset(f.name for f in dataclasses.fields(IssuerConfig)) - {"name"}
_CLAIMS_KEYS = frozenset(f.name for f in dataclasses.fields(ClaimMapping))
_SECRET_KEYS = frozenset({"env", "file"})

_NAME = re.compile(r"[A-Za-z0-9_-]+")
_CLAIM_PATH = re.compile(r"[^.\s]+(\.[^.\s]+)*")


def _claims(r: SectionReader) -> ClaimMapping:
    sub = r.mapping("claims")
    default = ClaimMapping()
    if sub is None:
        return default
    sub.unknown_keys(_CLAIMS_KEYS)
    attributes: dict[str, str] = {}
    attr = sub.mapping("attributes")
    if attr is not None:
        for name, path in attr.doc.items():
            if not isinstance(name, str) or not name:
                attr.problems.append(f"{attr.path}: attribute names must be non-empty strings")
            elif not isinstance(path, str) or not _CLAIM_PATH.fullmatch(path):
                attr.problem(name, f"must be a claim path such as org.cost_center (got {path!r})")
            else:
                attributes[name] = path
    return ClaimMapping(
        user=sub.strings("user", default.user, pattern=_CLAIM_PATH),
        groups=sub.strings("groups", default.groups, pattern=_CLAIM_PATH),
        service=sub.strings("service", default.service, pattern=_CLAIM_PATH),
        attributes=attributes,
    )


def _hs_secret(r: SectionReader, environ: Mapping[str, str]) -> bytes | None:
    """`hs_secret: {env: VAR}` or `{file: /path}`, read now. A trailing newline is dropped."""
    sub = r.mapping("hs_secret")
    if sub is None:
        return None
    sub.unknown_keys(_SECRET_KEYS)
    env, file = sub.string("env"), sub.string("file")
    if (env is None) == (file is None):
        r.problem("hs_secret", "set exactly one of env, file")
        return None
    if env is not None:
        value = environ.get(env, "")
        if not value:
            sub.problem("env", f"environment variable {env} is not set or empty")
            return None
        return value.encode()
    assert file is not None
    try:
        secret = Path(file).read_bytes().rstrip(b"\r\n")
    except OSError as exc:
        sub.problem("file", f"cannot read {file}: {exc.strerror or exc}")
        return None
    if not secret:
        sub.problem("file", f"{file} is empty")
        return None
    return secret


def _algorithms(r: SectionReader, hs_secret: bool) -> tuple[str, ...]:
    default = ("HS256",) if hs_secret else DEFAULT_ALGORITHMS
    if "algorithms" not in r.doc:
        return default
    raw = r.doc["algorithms"]
    if not isinstance(raw, list) or not raw:
        r.problem("algorithms", f"must be a non-empty list of algorithms (got {raw!r})")
        return default
    known = sorted(ASYMMETRIC_ALGORITHMS | HMAC_ALGORITHMS)
    out: list[str] = []
    for item in raw:
        alg = str(item)
        if alg.lower() == "none":
            r.problem("algorithms", "'none' is never allowed")
        elif alg not in ASYMMETRIC_ALGORITHMS and alg not in HMAC_ALGORITHMS:
            r.problem("algorithms", f"unknown algorithm {item!r} (known: {', '.join(known)})")
        elif alg in HMAC_ALGORITHMS and not hs_secret:
            r.problem("algorithms", f"{alg} needs hs_secret (and is never allowed with a JWKS)")
        elif alg in ASYMMETRIC_ALGORITHMS and hs_secret:
            r.problem("algorithms", f"{alg} needs a JWKS; an issuer with hs_secret allows only HS*")
        elif alg not in out:
            out.append(alg)
    return tuple(out) or default


def _jwks_url(r: SectionReader) -> str | None:
    url = r.string("jwks_url")
    if url is None:
        return None
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - ValueError for a bad port
    except ValueError:
        parts = urllib.parse.urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        r.problem("jwks_url", f"must be an http(s) URL (got {url!r})")
    elif parts.fragment:
        r.problem("jwks_url", "must not carry a fragment")
    else:
        problem = insecure_url(url)
        if problem is not None:
            r.problem("jwks_url", problem)
    return url


def _issuer(
    name: str, doc: object, path: str, environ: Mapping[str, str], problems: list[str]
) -> IssuerConfig | None:
    if not isinstance(doc, Mapping):
        problems.append(f"{path}: must be a mapping")
        return None
    r = SectionReader(doc, path, problems)
    r.unknown_keys(_ISSUER_KEYS)
    iss = r.string("issuer")
    if iss is None:
        r.problem("issuer", "required: the exact iss claim of this issuer's tokens")
    audiences = r.strings("audiences", ())
    if "audiences" not in doc:
        r.problem("audiences", "required: at least one audience")
    elif doc["audiences"] == []:
        r.problem("audiences", "must name at least one audience")
    jwks_url = _jwks_url(r)
    jwks_file = r.string("jwks_file")
    if jwks_file is not None and not Path(jwks_file).is_file():
        r.problem("jwks_file", f"no such file: {jwks_file}")
    secret_set = doc.get("hs_secret") is not None
    hs_secret = _hs_secret(r, environ)
    sources = [s for s, v in (("jwks_url", jwks_url), ("jwks_file", jwks_file)) if v] + (
        ["hs_secret"] if secret_set else []
    )
    if len(sources) != 1:
        got = f" (got {', '.join(sources)})" if sources else ""
        problems.append(f"{path}: set exactly one of jwks_url, jwks_file, hs_secret{got}")
    algorithms = _algorithms(r, secret_set)
    if hs_secret is not None:
        for alg in algorithms:
            need = _HMAC_MIN_SECRET.get(alg, 0)
            if len(hs_secret) < need:
                r.problem("hs_secret", f"must be at least {need} bytes for {alg}")
    ttl = r.integer("jwks_cache_ttl_s", 300, 10, 86_400)
    max_stale = r.integer("jwks_max_stale_s", 3600, 0, 7 * 86_400)
    if "jwks_max_stale_s" in doc and max_stale < ttl:
        r.problem("jwks_max_stale_s", f"must be at least jwks_cache_ttl_s ({ttl})")
    return IssuerConfig(
        name=name,
        issuer=iss or "",
        audiences=audiences,
        algorithms=algorithms,
        jwks_url=jwks_url,
        jwks_file=jwks_file,
        hs_secret=hs_secret,
        leeway_s=r.integer("leeway_s", 30, 0, 600),
        required_claims=r.strings("required_claims", ("exp", "iat")),
        jwks_cache_ttl_s=ttl,
        jwks_refresh_min_interval_s=r.integer("jwks_refresh_min_interval_s", 30, 1, 3600),
        jwks_max_stale_s=max_stale,
        claims=_claims(r),
        asserts=parse_asserts(
            doc.get("asserts"), r.at("asserts"), shared_secret=secret_set, problems=problems
        ),
        trust_unverified_email=r.boolean("trust_unverified_email", False),
    )


def parse_issuers(
    doc: Mapping[object, object], environ: Mapping[str, str], problems: list[str]
) -> tuple[IssuerConfig, ...]:
    raw = doc.get("issuers")
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        problems.append("identity.issuers: must be a mapping of issuer name to settings")
        return ()
    out: list[IssuerConfig] = []
    seen: dict[str, str] = {}  # iss -> name
    for name, idoc in raw.items():
        path = f"identity.issuers.{name}"
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            problems.append(f"{path}: name must be letters, digits, - and _")
            continue
        if name == "static":
            problems.append(f"{path}: the name 'static' is reserved for static tokens")
            continue
        issuer = _issuer(name, idoc, path, environ, problems)
        if issuer is None:
            continue
        if issuer.issuer and issuer.issuer in seen:
            problems.append(f"{path}.issuer: same iss as identity.issuers.{seen[issuer.issuer]}")
        elif issuer.issuer:
            seen[issuer.issuer] = name
        out.append(issuer)
    problem = several_unrestricted(out)
    if problem is not None:
        problems.append(f"identity.issuers: {problem}")
    return tuple(out)
