"""The `identity:` section of the gateway config: issuers, static tokens, limits.

    identity:
      allow_anonymous: false
      max_token_bytes: 8192
      verified_cache_size: 10000
      metadata_header: x-gateway-metadata
      issuers:
        corp:
          issuer: https://login.example.com/realms/corp
          audiences: [llm-gateway]
          jwks_url: https://login.example.com/realms/corp/protocol/openid-connect/certs
          algorithms: [RS256, ES256]
          claims: {user: [email], groups: [groups, realm_access.roles]}
          asserts: {kinds: [user, service], user_domains: [example.com]}   # see vouching.py
          trust_unverified_email: false   # true: `email` names the user without email_verified
      static_tokens:
        docs-bot: {sha256: "<64 hex>", groups: [bots], attributes: {cost_center: "42"}}
      static_tokens_file: /run/secrets/static-tokens.yaml   # same mapping as static_tokens
      static_tokens_share_service_namespace: false   # true: a static token is also a `service`

`parse_identity` appends every problem, each with its path, to the caller's list and returns a
best-effort config; the caller raises `ConfigError` if any were found. Secrets (`hs_secret`,
`static_tokens_file`) are read here, once per (re)load, never at import time.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

import yaml

from gateway_extproc.identity.jwks import insecure_url
from gateway_extproc.identity.jwt_verify import ASYMMETRIC_ALGORITHMS, HMAC_ALGORITHMS
from gateway_extproc.identity.model import (
    ClaimMapping,
    IdentityConfig,
    IssuerConfig,
    StaticToken,
)
from gateway_extproc.identity.vouching import parse_asserts, several_unrestricted

__all__ = ["DEFAULT_ALGORITHMS", "parse_identity"]

# Every asymmetric algorithm; HS* only when an issuer has an hs_secret (then HS256 by default).
_RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
DEFAULT_ALGORITHMS = (*_RSA_ALGORITHMS, "ES256", "ES384", "ES512", "EdDSA")
_HMAC_MIN_SECRET = {"HS256": 32, "HS384": 48, "HS512": 64}  # bytes: the hash's output size

# The accepted keys are the dataclasses' fields, so a new field cannot be forgotten here.
_IDENTITY_KEYS = frozenset(f.name for f in dataclasses.fields(IdentityConfig)) | {
    "static_tokens_file"
}
_ISSUER_KEYS = frozenset(f.name for f in dataclasses.fields(IssuerConfig)) - {"name"}
_CLAIMS_KEYS = frozenset(f.name for f in dataclasses.fields(ClaimMapping))
_SECRET_KEYS = frozenset({"env", "file"})
_STATIC_KEYS = frozenset({"sha256", "groups", "attributes"})

_NAME = re.compile(r"[A-Za-z0-9_-]+")
_SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")
_HEADER = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")  # an RFC 9110 token, lower-cased
_CLAIM_PATH = re.compile(r"[^.\s]+(\.[^.\s]+)*")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


class _Reader:
    """One mapping at one path; every problem goes to the shared list."""

    def __init__(self, doc: Mapping[object, object], path: str, problems: list[str]) -> None:
        self.doc, self.path, self.problems = doc, path, problems

    def at(self, key: str) -> str:
        return f"{self.path}.{key}"

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{self.at(key)}: {message}")

    def unknown_keys(self, allowed: frozenset[str]) -> None:
        for key in sorted(map(str, set(self.doc) - allowed)):
            self.problem(key, f"unknown key (expected one of {', '.join(sorted(allowed))})")

    def integer(self, key: str, default: int, lo: int, hi: int) -> int:
        value = self.doc.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.problem(key, f"must be an integer in [{lo}, {hi}] (got {value!r})")
            return default
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.doc.get(key, default)
        if not isinstance(value, bool):
            self.problem(key, f"must be true or false (got {value!r})")
            return default
        return value

    def string(self, key: str) -> str | None:
        """An optional non-empty string: None when absent or null."""
        value = self.doc.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            self.problem(key, f"must be a non-empty string (got {value!r})")
            return None
        return value

    def strings(
        self, key: str, default: tuple[str, ...], *, pattern: re.Pattern[str] | None = None
    ) -> tuple[str, ...]:
        if key not in self.doc:
            return default
        raw = self.doc[key]
        if not isinstance(raw, list):
            self.problem(key, f"must be a list of strings (got {raw!r})")
            return default
        out: list[str] = []
        for i, item in enumerate(raw):
            bad = not isinstance(item, str) or not item or item != item.strip()
            if bad or (pattern is not None and not pattern.fullmatch(str(item))):
                self.problems.append(f"{self.at(key)}[{i}]: not a valid entry (got {item!r})")
            elif item not in out:
                out.append(item)
        return tuple(out)

    def mapping(self, key: str) -> _Reader | None:
        value = self.doc.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            self.problem(key, f"must be a mapping (got {value!r})")
            return None
        return _Reader(value, self.at(key), self.problems)


def _attributes(r: _Reader, key: str) -> dict[str, str]:
    """`{name: string-or-number}` for static tokens (numbers are written as strings)."""
    sub = r.mapping(key)
    if sub is None:
        return {}
    out: dict[str, str] = {}
    for name, value in sub.doc.items():
        if not isinstance(name, str) or not name:
            sub.problems.append(f"{sub.path}: attribute names must be non-empty strings")
        elif isinstance(value, str) or (
            isinstance(value, int | float) and not isinstance(value, bool)
        ):
            out[name] = str(value)
        else:
            sub.problem(name, f"must be a string or a number (got {value!r})")
    return out


def _claims(r: _Reader) -> ClaimMapping:
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


def _hs_secret(r: _Reader, environ: Mapping[str, str]) -> bytes | None:
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


def _algorithms(r: _Reader, hs_secret: bool) -> tuple[str, ...]:
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


def _jwks_url(r: _Reader) -> str | None:
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
    r = _Reader(doc, path, problems)
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


def _issuers(
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


class _StaticTokens:
    """Static tokens from `static_tokens` and `static_tokens_file`: names and digests unique."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        self.tokens: list[StaticToken] = []
        self._names: dict[str, str] = {}  # name -> the section defining it
        self._digests: dict[bytes, str] = {}  # digest -> name

    def add(self, entries: Mapping[object, object], path: str) -> None:
        for name, tdoc in entries.items():
            tpath = f"{path}.{name}"
            if not isinstance(name, str) or not _SERVICE_NAME.fullmatch(name):
                self.problems.append(f"{tpath}: name must be letters, digits, '.', '@', '-', '_'")
                continue
            if name in self._names:
                self.problems.append(f"{tpath}: also defined in {self._names[name]}")
                continue
            self._names[name] = path
            if not isinstance(tdoc, Mapping):
                self.problems.append(f"{tpath}: must be a mapping with sha256")
                continue
            r = _Reader(tdoc, tpath, self.problems)
            r.unknown_keys(_STATIC_KEYS)
            hexdigest = tdoc.get("sha256")
            if not isinstance(hexdigest, str) or not _HEX64.fullmatch(hexdigest):
                r.problem("sha256", "must be the token's SHA-256 digest: 64 hex characters")
                continue
            digest = bytes.fromhex(hexdigest)
            if digest in self._digests:
                r.problem("sha256", f"same digest as {self._digests[digest]}")
                continue
            self._digests[digest] = name
            groups, attributes = r.strings("groups", ()), _attributes(r, "attributes")
            self.tokens.append(StaticToken(name, digest, frozenset(groups), attributes))

    def add_file(self, file: object) -> None:
        path = "identity.static_tokens_file"
        if file is None:
            return
        if not isinstance(file, str) or not file:
            self.problems.append(f"{path}: must be a path or null (got {file!r})")
            return
        try:
            loaded = yaml.safe_load(Path(file).read_text())
        except OSError as exc:
            self.problems.append(f"{path}: cannot read {file}: {exc.strerror or exc}")
            return
        except yaml.YAMLError as exc:
            self.problems.append(f"{path}: {file} is not valid YAML: {exc}")
            return
        if isinstance(loaded, Mapping):
            self.add(loaded, path)
        elif loaded is not None:
            self.problems.append(f"{path}: {file} must hold a mapping of token name to sha256")


def _all_static_tokens(
    doc: Mapping[object, object], problems: list[str]
) -> tuple[StaticToken, ...]:
    tokens = _StaticTokens(problems)
    inline = doc.get("static_tokens")
    if isinstance(inline, Mapping):
        tokens.add(inline, "identity.static_tokens")
    elif inline is not None:
        problems.append("identity.static_tokens: must be a mapping of token name to sha256")
    tokens.add_file(doc.get("static_tokens_file"))
    return tuple(tokens.tokens)


def parse_identity(doc: object, environ: Mapping[str, str], problems: list[str]) -> IdentityConfig:
    """Parse the value of the `identity` key (None when the section is absent: the defaults)."""
    if doc is None:
        return IdentityConfig()
    if not isinstance(doc, Mapping):
        problems.append(f"identity: must be a mapping (got {doc!r})")
        return IdentityConfig()
    r = _Reader(doc, "identity", problems)
    r.unknown_keys(_IDENTITY_KEYS)
    default = IdentityConfig()
    header = doc.get("metadata_header", default.metadata_header)
    if not isinstance(header, str) or not _HEADER.fullmatch(header.lower()):
        r.problem("metadata_header", f"must be an HTTP header name (got {header!r})")
        header = default.metadata_header
    return IdentityConfig(
        issuers=_issuers(doc, environ, problems),
        static_tokens=_all_static_tokens(doc, problems),
        allow_anonymous=r.boolean("allow_anonymous", default.allow_anonymous),
        max_token_bytes=r.integer("max_token_bytes", default.max_token_bytes, 256, 65_536),
        verified_cache_size=r.integer(
            "verified_cache_size", default.verified_cache_size, 0, 10_000_000
        ),
        metadata_header=header.lower(),
        static_tokens_share_service_namespace=r.boolean(
            "static_tokens_share_service_namespace", default.static_tokens_share_service_namespace
        ),
    )
