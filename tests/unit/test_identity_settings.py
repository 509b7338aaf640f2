"""The `identity:` config section: a full example, defaults, secrets read from env and files,
and every validation problem reported at once with its path."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway_extproc.identity.issuer_settings import DEFAULT_ALGORITHMS
from gateway_extproc.identity.model import (
    ClaimMapping,
    IdentityConfig,
    IssuerConfig,
    StaticToken,
)
from gateway_extproc.identity.settings import parse_identity

DIGEST = hashlib.sha256(b"docs-bot-secret").hexdigest()
SECRET = "s" * 48


def parse(doc: object, environ: dict[str, str] | None = None) -> tuple[IdentityConfig, list[str]]:
    problems: list[str] = []
    config = parse_identity(doc, environ or {}, problems)
    return config, problems


def parse_ok(doc: object, environ: dict[str, str] | None = None) -> IdentityConfig:
    config, problems = parse(doc, environ)
    assert problems == []
    return config


EXAMPLE = """
allow_anonymous: false
max_token_bytes: 8192
verified_cache_size: 10000
metadata_header: X-Gateway-Metadata
issuers:
  corp:
    issuer: https://login.example.com/realms/corp
    audiences: [llm-gateway]
    jwks_url: https://login.example.com/realms/corp/protocol/openid-connect/certs
    algorithms: [RS256, ES256]
    leeway_s: 30
    required_claims: [exp, iat]
    jwks_cache_ttl_s: 300
    jwks_refresh_min_interval_s: 30
    jwks_max_stale_s: 3600
    claims:
      user: [email, preferred_username]
      groups: [groups, realm_access.roles]
      service: [client_id, azp]
      attributes: {department: department, cost_center: org.cost_center}
  ci:
    issuer: https://token.actions.githubusercontent.com
    audiences: [llm-gateway, llm-gateway-staging]
    jwks_url: http://127.0.0.1:8080/jwks
    claims: {service: [repository]}
    asserts: {kinds: [service]}
static_tokens:
  docs-bot: {sha256: "%s", groups: [bots], attributes: {cost_center: "42", tier: 3}}
static_tokens_file: null
"""


def test_full_example() -> None:
    config = parse_ok(yaml.safe_load(EXAMPLE % DIGEST.upper()))
    corp, ci = config.issuers
    assert corp == IssuerConfig(
        name="corp",
        issuer="https://login.example.com/realms/corp",
        audiences=("llm-gateway",),
        algorithms=("RS256", "ES256"),
        jwks_url="https://login.example.com/realms/corp/protocol/openid-connect/certs",
        claims=ClaimMapping(
            user=("email", "preferred_username"),
            groups=("groups", "realm_access.roles"),
            service=("client_id", "azp"),
            attributes={"department": "department", "cost_center": "org.cost_center"},
        ),
    )
    assert ci.algorithms == DEFAULT_ALGORITHMS
    assert ci.audiences == ("llm-gateway", "llm-gateway-staging")
    assert ci.claims == ClaimMapping(service=("repository",))
    assert config.static_tokens == (
        StaticToken(
            service="docs-bot",
            sha256=bytes.fromhex(DIGEST),
            groups=frozenset({"bots"}),
            attributes={"cost_center": "42", "tier": "3"},
        ),
    )
    assert (config.allow_anonymous, config.metadata_header) == (False, "x-gateway-metadata")


@pytest.mark.parametrize("doc", [None, {}])
def test_absent_or_empty_section_is_the_default(doc: object) -> None:
    assert parse_ok(doc) == IdentityConfig()


def test_default_algorithms_have_no_hmac_and_no_none() -> None:
    assert "none" not in DEFAULT_ALGORITHMS
    assert not any(alg.startswith("HS") for alg in DEFAULT_ALGORITHMS)
    assert set(DEFAULT_ALGORITHMS) >= {"RS256", "PS256", "ES256", "EdDSA"}


def hs_issuer(secret: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {
        "issuers": {
            "internal": {
                "issuer": "https://auth.internal",
                "audiences": ["gw"],
                "hs_secret": secret,
                **kw,
            }
        }
    }


def test_hs_secret_from_env() -> None:
    config = parse_ok(hs_issuer({"env": "GW_HS"}), {"GW_HS": SECRET})
    (issuer,) = config.issuers
    assert (issuer.hs_secret, issuer.algorithms) == (SECRET.encode(), ("HS256",))
    assert SECRET not in repr(issuer)


def test_hs_secret_from_file_drops_the_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "hs.secret"
    path.write_text(SECRET + "\n")
    doc = hs_issuer({"file": str(path)}, algorithms=["HS256", "HS384"])
    (issuer,) = parse_ok(doc).issuers
    assert (issuer.hs_secret, issuer.algorithms) == (SECRET.encode(), ("HS256", "HS384"))


def test_static_tokens_file(tmp_path: Path) -> None:
    other = hashlib.sha256(b"ci-secret").hexdigest()
    path = tmp_path / "static-tokens.yaml"
    path.write_text(yaml.safe_dump({"ci": {"sha256": other, "groups": ["ci"]}}))
    doc = {"static_tokens": {"docs-bot": {"sha256": DIGEST}}, "static_tokens_file": str(path)}
    config = parse_ok(doc)
    assert [(t.service, t.sha256.hex(), t.groups) for t in config.static_tokens] == [
        ("docs-bot", DIGEST, frozenset()),
        ("ci", other, frozenset({"ci"})),
    ]


def test_static_tokens_file_not_yaml(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text("a: [unclosed")
    (problem,) = parse({"static_tokens_file": str(path)})[1]
    assert problem.startswith(f"identity.static_tokens_file: {path} is not valid YAML")


def test_jwks_file(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text('{"keys": []}')
    doc = {
        "issuers": {"dev": {"issuer": "http://dev", "audiences": ["gw"], "jwks_file": str(path)}}
    }
    assert parse_ok(doc).issuers[0].jwks_file == str(path)


def test_every_problem_at_once_with_its_path(tmp_path: Path) -> None:
    bad_file = tmp_path / "tokens.yaml"
    bad_file.write_text(yaml.safe_dump({"docs-bot": {"sha256": DIGEST}, "x": {"sha256": "00"}}))
    doc = {
        "allow_anonymous": "yes",
        "max_token_bytes": 10,
        "verified_cache_size": -1,
        "metadata_header": "bad header",
        "isuers": {},
        "issuers": {
            "corp": {
                "issuer": "https://login.example.com",
                "audiences": [],
                "jwks_url": "ftp://login.example.com/certs",
                "algorithms": ["RS256", "none", "HS256", "XS999"],
                "leeway_s": -5,
                "jwks_cache_ttl_s": 600,
                "jwks_max_stale_s": 60,
                "jwks_refresh_min_interval_s": 0,
                "required_claims": "exp",
                "audience": "typo",
                "trust_unverified_email": "no",
                "claims": {
                    "user": ["email", "bad..path"],
                    "roles": ["x"],
                    "attributes": {"dept": ["not", "a", "path"]},
                },
            },
            "copy": {
                "issuer": "https://login.example.com",
                "audiences": ["gw"],
                "jwks_url": "https://a.example.com/certs",
                "jwks_file": str(tmp_path / "missing.json"),
            },
            "none": {"audiences": ["gw"]},
            "plain": {
                "issuer": "https://plain.example.com",
                "audiences": ["gw"],
                "jwks_url": "http://plain.example.com/certs",
                "asserts": {"user_domains": ["example.com"]},
            },
            "hs": {
                "issuer": "https://hs.example.com",
                "audiences": ["gw"],
                "hs_secret": {"env": "UNSET_VAR"},
                "algorithms": ["HS256", "ES256"],
            },
            "short": {
                "issuer": "https://short.example.com",
                "audiences": ["gw"],
                "hs_secret": {"env": "SHORT", "file": "/x"},
            },
            "weak": {
                "issuer": "https://weak.example.com",
                "audiences": ["gw"],
                "hs_secret": {"env": "SHORT"},
                "algorithms": ["HS512"],
            },
            "static": {"issuer": "https://static", "audiences": ["gw"], "jwks_url": "https://s"},
            "bad name!": {},
            "notamap": "https://x",
        },
        "static_tokens": {
            "docs-bot": {"sha256": "abc", "group": ["x"]},
            "dup": {"sha256": DIGEST, "attributes": {"ok": "1", "bad": [1]}},
            "dup2": {"sha256": DIGEST},
        },
        "static_tokens_file": str(bad_file),
    }
    config, problems = parse(doc, {"SHORT": "tooshort"})
    expected = [
        "identity.isuers: unknown key (expected one of allow_anonymous, issuers, "
        "max_token_bytes, metadata_header, static_tokens, static_tokens_file, "
        "static_tokens_share_service_namespace, verified_cache_size)",
        "identity.metadata_header: must be an HTTP header name (got 'bad header')",
        "identity.issuers.corp.audience: unknown key (expected one of algorithms, asserts, "
        "audiences, claims, hs_secret, issuer, jwks_cache_ttl_s, jwks_file, jwks_max_stale_s, "
        "jwks_refresh_min_interval_s, jwks_url, leeway_s, required_claims, "
        "trust_unverified_email)",
        "identity.issuers.corp.trust_unverified_email: must be true or false (got 'no')",
        "identity.issuers.corp.audiences: must name at least one audience",
        "identity.issuers.corp.jwks_url: must be an http(s) URL "
        "(got 'ftp://login.example.com/certs')",
        "identity.issuers.corp.algorithms: 'none' is never allowed",
        "identity.issuers.corp.algorithms: HS256 needs hs_secret "
        "(and is never allowed with a JWKS)",
        "identity.issuers.corp.algorithms: unknown algorithm 'XS999' (known: ES256, ES384, "
        "ES512, EdDSA, HS256, HS384, HS512, PS256, PS384, PS512, RS256, RS384, RS512)",
        "identity.issuers.corp.jwks_max_stale_s: must be at least jwks_cache_ttl_s (600)",
        "identity.issuers.corp.leeway_s: must be an integer in [0, 600] (got -5)",
        "identity.issuers.corp.required_claims: must be a list of strings (got 'exp')",
        "identity.issuers.corp.jwks_refresh_min_interval_s: must be an integer in [1, 3600] "
        "(got 0)",
        "identity.issuers.corp.claims.roles: unknown key (expected one of attributes, "
        "groups, service, user)",
        "identity.issuers.corp.claims.attributes.dept: must be a claim path such as "
        "org.cost_center (got ['not', 'a', 'path'])",
        "identity.issuers.corp.claims.user[1]: not a valid entry (got 'bad..path')",
        f"identity.issuers.copy.jwks_file: no such file: {tmp_path / 'missing.json'}",
        "identity.issuers.copy: set exactly one of jwks_url, jwks_file, hs_secret "
        "(got jwks_url, jwks_file)",
        "identity.issuers.copy.issuer: same iss as identity.issuers.corp",
        "identity.issuers.none.issuer: required: the exact iss claim of this issuer's tokens",
        "identity.issuers.none: set exactly one of jwks_url, jwks_file, hs_secret",
        "identity.issuers.plain.jwks_url: must use https: signing keys fetched over plain "
        "http can be replaced in transit (http:// is allowed only to a loopback address such "
        "as 127.0.0.1 or localhost)",
        "identity.issuers: corp, copy, none may each vouch for any user, service and group "
        "(no asserts restricts them), so each could impersonate the other's users: give all "
        "but one of them an asserts (user_domains, service_prefixes, groups or kinds) saying "
        "what it vouches for",
        "identity.issuers.hs.hs_secret.env: environment variable UNSET_VAR is not set or empty",
        "identity.issuers.hs.algorithms: ES256 needs a JWKS; an issuer with hs_secret "
        "allows only HS*",
        "identity.issuers.short.hs_secret: set exactly one of env, file",
        "identity.issuers.weak.hs_secret: must be at least 64 bytes for HS512",
        "identity.issuers.static: the name 'static' is reserved for static tokens",
        "identity.issuers.bad name!: name must be letters, digits, - and _",
        "identity.issuers.notamap: must be a mapping",
        "identity.static_tokens.docs-bot.group: unknown key (expected one of attributes, "
        "groups, sha256)",
        "identity.static_tokens.docs-bot.sha256: must be the token's SHA-256 digest: "
        "64 hex characters",
        "identity.static_tokens.dup.attributes.bad: must be a string or a number (got [1])",
        "identity.static_tokens_file.x.sha256: must be the token's SHA-256 digest: "
        "64 hex characters",
        "identity.static_tokens_file.docs-bot: also defined in identity.static_tokens",
        "identity.static_tokens.dup2.sha256: same digest as dup",
        "identity.allow_anonymous: must be true or false (got 'yes')",
        "identity.max_token_bytes: must be an integer in [256, 65536] (got 10)",
        "identity.verified_cache_size: must be an integer in [0, 10000000] (got -1)",
    ]
    assert sorted(problems) == sorted(expected)
    # best effort: the parts that parsed are there
    assert [i.name for i in config.issuers] == [
        *("corp", "copy", "none", "plain", "hs", "short", "weak")
    ]
    assert config.issuers[0].algorithms == ("RS256",)
    assert [t.service for t in config.static_tokens] == ["dup"]


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        pytest.param("yes", "identity: must be a mapping (got 'yes')", id="not_a_mapping"),
        pytest.param(
            {"issuers": ["corp"]},
            "identity.issuers: must be a mapping of issuer name to settings",
            id="issuers_list",
        ),
        pytest.param(
            {"static_tokens": ["x"]},
            "identity.static_tokens: must be a mapping of token name to sha256",
            id="static_list",
        ),
        pytest.param(
            {"static_tokens_file": "/nonexistent/tokens.yaml"},
            "identity.static_tokens_file: cannot read /nonexistent/tokens.yaml: "
            "No such file or directory",
            id="static_file_missing",
        ),
        pytest.param(
            {
                "issuers": {
                    "c": {
                        "issuer": "https://c",
                        "audiences": ["gw"],
                        "hs_secret": {"file": "/nonexistent/hs"},
                    }
                }
            },
            "identity.issuers.c.hs_secret.file: cannot read /nonexistent/hs: "
            "No such file or directory",
            id="hs_file_missing",
        ),
        pytest.param(
            {"issuers": {"c": {"issuer": "https://c", "jwks_url": "https://c/k"}}},
            "identity.issuers.c.audiences: required: at least one audience",
            id="no_audiences",
        ),
        pytest.param(
            {
                "issuers": {
                    "c": {
                        "issuer": "https://c",
                        "audiences": ["gw"],
                        "jwks_url": "https://c:99999/k",
                    }
                }
            },
            "identity.issuers.c.jwks_url: must be an http(s) URL (got 'https://c:99999/k')",
            id="bad_port",
        ),
        pytest.param(
            {
                "issuers": {
                    "c": {
                        "issuer": "https://c",
                        "audiences": ["gw"],
                        "jwks_url": "https://c/k",
                        "algorithms": [],
                    }
                }
            },
            "identity.issuers.c.algorithms: must be a non-empty list of algorithms (got [])",
            id="empty_algorithms",
        ),
        pytest.param(
            {"static_tokens": {"bad name": {"sha256": DIGEST}}},
            "identity.static_tokens.bad name: name must be letters, digits, '.', '@', '-', '_'",
            id="static_name",
        ),
        pytest.param(
            {"static_tokens": {"bot": "abc"}},
            "identity.static_tokens.bot: must be a mapping with sha256",
            id="static_not_a_mapping",
        ),
    ],
)
def test_single_problem(doc: object, problem: str) -> None:
    assert parse(doc)[1] == [problem]
