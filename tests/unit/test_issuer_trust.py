"""Trust is scoped per issuer: an unverified e-mail never names a user, several issuers cannot
all vouch for everyone, signing keys never come over plain http (except loopback), and the
development issuer is refused outside `gatewayctl run` unless deliberately allowed."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway_extproc.config.gateway import load_document, merge, parse_config
from gateway_extproc.errors import ConfigError
from gateway_extproc.identity.devissuer import ALLOW_ENV
from gateway_extproc.identity.jwks import JwksError, KeySet, http_fetch, insecure_url
from gateway_extproc.identity.jwt_verify import TokenRejected, verify_token
from gateway_extproc.identity.model import Assertions, ClaimMapping, IssuerConfig, Kind
from gateway_extproc.identity.settings import parse_identity
from gateway_extproc.identity.vouching import several_unrestricted

NOW = 1_800_000_000.0
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
CORP = IssuerConfig(
    name="corp",
    issuer="https://login.example.com",
    audiences=("llm-gateway",),
    algorithms=("RS256",),
    jwks_url="https://login.example.com/certs",
)
KEYS = {
    "corp": KeySet.from_jwks(
        {"keys": [{**jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key(), as_dict=True)}]},
        source="corp",
    )
}
ALICE = "alice@example.com"
ABSENT = object()


def token(**claims: Any) -> str:
    body = {"iss": CORP.issuer, "aud": "llm-gateway", "iat": int(NOW), "exp": int(NOW) + 300}
    body.update({k: v for k, v in claims.items() if v is not ABSENT})
    return jwt.encode(body, KEY, algorithm="RS256")


def user_of(issuer: IssuerConfig, **claims: Any) -> str | None:
    return verify_token(token(**claims), {issuer.issuer: issuer}, KEYS, NOW).user


# -- an unverified e-mail never names a user ---------------------------------------------------


@pytest.mark.parametrize(
    ("email_verified", "trusted", "user"),
    [
        pytest.param(True, False, ALICE, id="verified"),
        pytest.param("true", False, ALICE, id="verified_as_a_string"),
        pytest.param(" TRUE ", False, ALICE, id="verified_as_a_string_any_case"),
        pytest.param(False, False, "u-mallory", id="unverified_is_the_sub"),
        pytest.param(ABSENT, False, "u-mallory", id="no_claim_is_unverified"),
        pytest.param("false", False, "u-mallory", id="false_string"),
        pytest.param(1, False, "u-mallory", id="one_is_not_true"),
        pytest.param("yes", False, "u-mallory", id="yes_is_not_true"),
        pytest.param(None, False, "u-mallory", id="null"),
        pytest.param(ABSENT, True, ALICE, id="trusted_issuer_without_the_claim"),
        pytest.param(False, True, ALICE, id="trusted_issuer_even_when_false"),
    ],
)
def test_the_email_names_the_user_only_when_verified_or_trusted(
    email_verified: object, trusted: bool, user: str
) -> None:
    issuer = dataclasses.replace(CORP, trust_unverified_email=trusted)
    got = user_of(issuer, sub="u-mallory", email=ALICE, email_verified=email_verified)
    assert got == user


def test_other_user_claims_are_not_email_and_need_no_verification() -> None:
    assert user_of(CORP, sub="u-1", preferred_username="alice") == "alice"
    first = dataclasses.replace(CORP, claims=ClaimMapping(user=("preferred_username", "email")))
    assert user_of(first, sub="u-1", preferred_username="alice", email=ALICE) == "alice"
    # The e-mail path is skipped for sub, never for the next path or a service (azp)
    assert user_of(CORP, sub="u-1", email=ALICE, preferred_username="alice", azp="web") == "u-1"


@pytest.mark.parametrize(
    ("issuer", "claims", "message"),
    [
        pytest.param(
            CORP,
            {"email": ALICE},
            "token e-mail is not verified (email_verified is not true) and the token has no "
            "sub to name the user by",
            id="no_sub",
        ),
        pytest.param(
            CORP,
            {"email": ALICE, "sub": "  "},
            "token e-mail is not verified (email_verified is not true) and the token has no "
            "sub to name the user by",
            id="blank_sub",
        ),
        pytest.param(
            dataclasses.replace(CORP, asserts=Assertions(user_domains=("example.com",))),
            {"email": ALICE, "sub": "u-1", "email_verified": False},
            "token e-mail is not verified (email_verified is not true) and issuer corp vouches "
            "only for users with e-mail addresses in example.com",
            id="domain_restricted_issuer",
        ),
    ],
)
def test_an_unverified_email_without_a_fallback_is_refused(
    issuer: IssuerConfig, claims: dict[str, Any], message: str
) -> None:
    with pytest.raises(TokenRejected) as info:
        user_of(issuer, **claims)
    assert (info.value.reason, info.value.message) == ("email_unverified", message)


def test_a_services_only_issuer_is_refused_for_asserting_a_user_at_all() -> None:
    services = dataclasses.replace(CORP, asserts=Assertions(kinds=frozenset({Kind.SERVICE})))
    for claims in ({"email": ALICE}, {"email": ALICE, "sub": "u-1"}):
        with pytest.raises(TokenRejected) as info:
            user_of(services, **claims)
        assert (info.value.reason, info.value.message) == (
            "not_vouched",
            "issuer corp may not assert a user (it may assert services)",
        )


def test_trust_unverified_email_is_parsed_per_issuer() -> None:
    problems: list[str] = []
    doc = {
        "issuers": {
            "corp": {"issuer": "a", "audiences": ["x"], "jwks_url": "https://a/certs"},
            "entra": {
                "issuer": "b",
                "audiences": ["x"],
                "jwks_url": "https://b/certs",
                "trust_unverified_email": True,
                "asserts": {"user_domains": ["example.com"]},
            },
        }
    }
    config = parse_identity(doc, {}, problems)
    assert problems == []
    assert [i.trust_unverified_email for i in config.issuers] == [False, True]


# -- several issuers cannot all vouch for everyone ---------------------------------------------


def issuer(name: str, asserts: Assertions | None = None, **kw: Any) -> IssuerConfig:
    base = dataclasses.replace(CORP, name=name, issuer=f"https://{name}")
    return dataclasses.replace(base, asserts=asserts or Assertions(), **kw)


@pytest.mark.parametrize(
    ("issuers", "unrestricted"),
    [
        pytest.param([issuer("a")], None, id="one_alone"),
        pytest.param([issuer("a"), issuer("b")], "a, b", id="two"),
        pytest.param([issuer("a"), issuer("b"), issuer("c")], "a, b, c", id="three"),
        pytest.param(
            [issuer("a"), issuer("b", Assertions(user_domains=("b.com",)))], None, id="domains"
        ),
        pytest.param(
            [issuer("a"), issuer("b", Assertions(kinds=frozenset({Kind.SERVICE})))],
            None,
            id="services_only",
        ),
        pytest.param(
            [issuer("a"), issuer("b", Assertions(service_prefixes=("ci-",)))], None, id="prefix"
        ),
        pytest.param([issuer("a"), issuer("b", Assertions(groups=("ci-*",)))], None, id="groups"),
        pytest.param(
            [issuer("a"), issuer("b", Assertions(groups=("ci-*", "*")))],
            "a, b",
            id="a_star_restricts_no_group",
        ),
    ],
)
def test_at_most_one_issuer_may_vouch_for_everyone(
    issuers: list[IssuerConfig], unrestricted: str | None
) -> None:
    problem = several_unrestricted(issuers)
    if unrestricted is None:
        assert problem is None
    else:
        assert problem is not None and problem.startswith(f"{unrestricted} may each vouch")


def test_several_unrestricted_issuers_are_refused_at_load() -> None:
    two = {
        "issuers": {
            "corp": {"issuer": "a", "audiences": ["x"], "jwks_url": "https://a/certs"},
            "partner": {"issuer": "b", "audiences": ["x"], "jwks_url": "https://b/certs"},
            "ci": {"issuer": "c", "audiences": ["x"], "hs_secret": {"env": "CI"}},
        }
    }
    problems: list[str] = []
    parse_identity(two, {"CI": "c" * 32}, problems)
    assert problems == [
        "identity.issuers: corp, partner may each vouch for any user, service and group (no "
        "asserts restricts them), so each could impersonate the other's users: give all but "
        "one of them an asserts (user_domains, service_prefixes, groups or kinds) saying what "
        "it vouches for"
    ]
    # Spelling out "everything" is not a restriction either
    two["issuers"]["partner"]["asserts"] = {"kinds": ["user", "service"]}
    problems.clear()
    parse_identity(two, {"CI": "c" * 32}, problems)
    assert len(problems) == 1
    two["issuers"]["partner"]["asserts"] = {"user_domains": ["partner.net"]}
    problems.clear()
    parse_identity(two, {"CI": "c" * 32}, problems)
    assert problems == []


# -- signing keys never travel over plain http, except on loopback ------------------------------


@pytest.mark.parametrize(
    ("url", "secure"),
    [
        ("https://login.example.com/certs", True),
        ("http://127.0.0.1:8080/jwks", True),
        ("http://127.1.2.3/jwks", True),
        ("http://localhost/jwks", True),
        ("http://LOCALHOST:9/jwks", True),
        ("http://[::1]:8080/jwks", True),
        ("http://login.example.com/certs", False),
        ("http://keycloak.auth.svc:8080/certs", False),
        ("http://10.0.0.1/jwks", False),
        ("http://localhost.example.com/jwks", False),
        ("http://[::2]/jwks", False),
        ("http://0.0.0.0/jwks", False),
        ("ftp://127.0.0.1/jwks", False),
    ],
)
def test_http_is_allowed_only_to_loopback(url: str, secure: bool) -> None:
    assert (insecure_url(url) is None) is secure


def test_http_jwks_url_is_refused_at_load() -> None:
    problems: list[str] = []
    doc = {"issuers": {"corp": {"issuer": "a", "audiences": ["x"], "jwks_url": "http://a/c"}}}
    parse_identity(doc, {}, problems)
    assert problems == [
        "identity.issuers.corp.jwks_url: must use https: signing keys fetched over plain http "
        "can be replaced in transit (http:// is allowed only to a loopback address such as "
        "127.0.0.1 or localhost)"
    ]


class Redirector:
    """A loopback server answering every GET with a redirect to `target`."""

    def __init__(self, target: str) -> None:
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                if self.path == "/jwks.json":
                    body = b'{"keys": []}'
                    self.send_response(200)
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_response(302)
                self.send_header("location", target)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def redirector() -> Iterator[Redirector]:
    # 192.0.2.1 (TEST-NET-1) is never reached: the redirect is refused before any request.
    server = Redirector("http://192.0.2.1/jwks.json")
    yield server
    server.close()


def test_a_redirect_to_plain_http_is_refused_before_it_is_followed(
    redirector: Redirector,
) -> None:
    with pytest.raises(JwksError, match=r"refused http://192\.0\.2\.1/jwks\.json: must use https"):
        asyncio.run(http_fetch(redirector.base + "/start"))
    assert redirector.hits == 1


def test_a_redirect_on_loopback_is_followed() -> None:
    loop_server = Redirector("/jwks.json")  # relative: same loopback origin
    try:
        assert asyncio.run(http_fetch(loop_server.base + "/start")) == b'{"keys": []}'
        assert loop_server.hits == 2
    finally:
        loop_server.close()


def test_a_fetch_refuses_plain_http_itself() -> None:
    with pytest.raises(JwksError, match="must use https"):
        asyncio.run(http_fetch("http://192.0.2.1/jwks.json"))


# -- the development issuer outside gatewayctl run ----------------------------------------------


def test_dev_issuer_is_refused_unless_allowed() -> None:
    doc = merge(load_document(None), {"identity": {"dev_issuer": True}})
    with pytest.raises(ConfigError) as info:
        parse_config(doc, {})
    assert (
        "identity.dev_issuer: the local development issuer is for gatewayctl run (make run) "
        "only: anyone who can read its key directory can mint any identity. Remove it, or set "
        f"{ALLOW_ENV}=1 in the environment to allow it deliberately"
    ) in info.value.problems
    for value in ("0", "true", "yes", ""):
        with pytest.raises(ConfigError):
            parse_config(doc, {ALLOW_ENV: value})
    assert parse_config(doc, {ALLOW_ENV: "1"}).dev_issuer
    assert not parse_config(load_document(None), {}).dev_issuer  # off: nothing to allow
