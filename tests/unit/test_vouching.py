"""Principals are qualified by who vouched for them: what each issuer may assert (parsing, the
defaults, every problem with its path, the refusal), and static tokens as a namespace apart
from JWT services in policies and budgets."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import jwt
import pytest

from gateway_extproc.budgets.matching import applicable
from gateway_extproc.budgets.model import (
    Action,
    BudgetConfig,
    CalendarWindow,
    Match,
    Period,
    Scope,
    ScopeKind,
)
from gateway_extproc.config.gateway import load_document, merge, parse_config
from gateway_extproc.errors import ConfigError, Unauthenticated
from gateway_extproc.identity.authenticator import Authenticator
from gateway_extproc.identity.jwt_verify import TokenRejected, verify_token
from gateway_extproc.identity.model import (
    SHARED_SECRET_DEFAULT,
    UNRESTRICTED,
    Assertions,
    AuthMethod,
    Identity,
    IdentityConfig,
    Kind,
)
from gateway_extproc.identity.policy import parse_policies
from gateway_extproc.identity.settings import parse_identity
from gateway_extproc.identity.vouching import parse_asserts, refusal

CI_SECRET = "c" * 48
CORP_SECRET = "k" * 48  # both issuers are HS here only so the tests need no key server
DOCS_BOT = "static-docs-bot-secret"


def identity(
    kind: Kind = Kind.USER,
    *,
    user: str | None = None,
    service: str | None = None,
    groups: tuple[str, ...] = (),
) -> Identity:
    return Identity(
        kind=kind,
        auth_method=AuthMethod.JWT,
        user=user,
        service=service,
        groups=frozenset(groups),
        issuer="ci",
        attributes={},
        expires_at=None,
    )


def parsed(doc: object, *, shared_secret: bool = False) -> tuple[Assertions, list[str]]:
    problems: list[str] = []
    return parse_asserts(doc, "a", shared_secret=shared_secret, problems=problems), problems


# --- parsing ------------------------------------------------------------------------------------


def test_defaults_a_jwks_issuer_is_unrestricted_a_shared_secret_one_vouches_for_services() -> None:
    assert parsed(None) == (UNRESTRICTED, [])
    assert parsed(None, shared_secret=True) == (SHARED_SECRET_DEFAULT, [])
    assert SHARED_SECRET_DEFAULT.kinds == {Kind.SERVICE} and SHARED_SECRET_DEFAULT.groups == ()
    # Setting only some keys keeps the defaults of the others.
    found, _ = parsed({"service_prefixes": ["ci-"]}, shared_secret=True)
    assert found == Assertions(
        kinds=frozenset({Kind.SERVICE}), service_prefixes=("ci-",), groups=()
    )


def test_full_example() -> None:
    doc = {
        "kinds": ["user", "service"],
        "user_domains": ["example.com", "example.org"],
        "service_prefixes": ["ci-", "bot-"],
        "groups": ["ci-*", "bots"],
    }
    assert parsed(doc, shared_secret=True) == (
        Assertions(
            kinds=frozenset({Kind.USER, Kind.SERVICE}),
            user_domains=("example.com", "example.org"),
            service_prefixes=("ci-", "bot-"),
            groups=("ci-*", "bots"),
        ),
        [],
    )


def test_every_problem_at_once_with_its_path() -> None:
    doc = {
        "kind": ["user"],
        "kinds": ["user", "robot"],
        "user_domains": ["Example.com", "@example.com", ""],
        "service_prefixes": "ci-",
        "groups": [None],
    }
    assert parsed(doc)[1] == [
        "a.kind: unknown key (expected one of kinds, user_domains, service_prefixes, groups)",
        "a.kinds: must be a non-empty list of user, service (got ['user', 'robot'])",
        "a.user_domains[2]: must be a non-empty string (got '')",
        "a.user_domains[0]: must be a lower-case domain such as example.com (got 'Example.com')",
        "a.user_domains[1]: must be a lower-case domain such as example.com (got '@example.com')",
        "a.service_prefixes: must be a list of strings (got 'ci-')",
        "a.groups[0]: must be a non-empty string (got None)",
    ]
    assert parsed({"kinds": []})[1] == [
        "a.kinds: must be a non-empty list of user, service (got [])"
    ]
    assert parsed({"kinds": ["service"], "user_domains": ["example.com"]})[1] == [
        "a.user_domains: set, but kinds does not include user"
    ]
    assert parsed({"kinds": ["user"], "service_prefixes": ["x"]})[1] == [
        "a.service_prefixes: set, but kinds does not include service"
    ]
    assert parsed([1])[1] == [
        "a: must be a mapping with keys kinds, user_domains, service_prefixes, groups"
    ]


def test_identity_section_reports_asserts_problems_with_the_full_path() -> None:
    problems: list[str] = []
    doc = {
        "issuers": {
            "ci": {
                "issuer": "https://ci.example.com",
                "audiences": ["gw"],
                "hs_secret": {"env": "CI"},
                "asserts": {"kinds": ["admin"]},
            }
        },
        "static_tokens_share_service_namespace": "yes",
    }
    config = parse_identity(doc, {"CI": CI_SECRET}, problems)
    assert problems == [
        "identity.issuers.ci.asserts.kinds: must be a non-empty list of user, service "
        "(got ['admin'])",
        "identity.static_tokens_share_service_namespace: must be true or false (got 'yes')",
    ]
    assert config.issuers[0].asserts == SHARED_SECRET_DEFAULT


# --- the refusal --------------------------------------------------------------------------------

SERVICES_ONLY = Assertions(kinds=frozenset({Kind.SERVICE}))


@pytest.mark.parametrize(
    ("asserts", "who", "message"),
    [
        (
            SERVICES_ONLY,
            identity(user="alice@example.com"),
            "issuer ci may not assert a user (it may assert services)",
        ),
        (
            Assertions(kinds=frozenset({Kind.USER})),
            identity(Kind.SERVICE, service="ci-build"),
            "issuer ci may not assert a service (it may assert users)",
        ),
        (
            Assertions(user_domains=("example.com",)),
            identity(user="alice@evil.example"),
            "issuer ci may not assert this user: it vouches only for e-mail addresses in "
            "example.com",
        ),
        (  # a subdomain is another domain
            Assertions(user_domains=("example.com",)),
            identity(user="alice@mail.example.com"),
            "issuer ci may not assert this user: it vouches only for e-mail addresses in "
            "example.com",
        ),
        (  # a user name that is not an e-mail address
            Assertions(user_domains=("example.com",)),
            identity(user="alice"),
            "issuer ci may not assert this user: it vouches only for e-mail addresses in "
            "example.com",
        ),
        (
            Assertions(service_prefixes=("ci-",)),
            identity(Kind.SERVICE, service="docs-bot"),
            "issuer ci may not assert this service: it vouches only for names starting with ci-",
        ),
        (
            Assertions(groups=("ci-*",)),
            identity(Kind.SERVICE, service="ci-x", groups=("ci-a", "ml-team")),
            "issuer ci may not assert this group membership: it vouches only for groups "
            "matching ci-*",
        ),
        (
            SHARED_SECRET_DEFAULT,
            identity(Kind.SERVICE, service="ci-x", groups=("ci",)),
            "issuer ci may not assert this group membership: it vouches only for groups "
            "matching none",
        ),
    ],
)
def test_what_an_issuer_may_not_assert_is_refused(
    asserts: Assertions, who: Identity, message: str
) -> None:
    assert refusal(who, "ci", asserts) == message


@pytest.mark.parametrize(
    ("asserts", "who"),
    [
        (UNRESTRICTED, identity(user="anyone@anywhere.test", groups=("admins",))),
        (UNRESTRICTED, identity(Kind.SERVICE, service="anything")),
        (Assertions(user_domains=("example.com",)), identity(user="Alice@EXAMPLE.COM")),
        (Assertions(user_domains=("example.com",)), identity(Kind.SERVICE, service="svc")),
        (Assertions(service_prefixes=("ci-", "cd-")), identity(Kind.SERVICE, service="cd-deploy")),
        (
            Assertions(groups=("ci-*", "bots")),
            identity(Kind.SERVICE, service="x", groups=("bots",)),
        ),
        (SHARED_SECRET_DEFAULT, identity(Kind.SERVICE, service="ci-build")),
    ],
)
def test_what_an_issuer_may_assert_is_admitted(asserts: Assertions, who: Identity) -> None:
    assert refusal(who, "ci", asserts) is None


# --- through verification: the cross-issuer impersonation ---------------------------------------


def two_issuers(**ci_extra: Any) -> IdentityConfig:
    problems: list[str] = []
    config = parse_identity(
        {
            "issuers": {
                "corp": {
                    "issuer": "https://login.example.com",
                    "audiences": ["gw"],
                    "hs_secret": {"env": "CORP"},
                    "asserts": {"kinds": ["user", "service"], "groups": ["*"]},
                },
                "ci": {
                    "issuer": "https://ci.example.com",
                    "audiences": ["gw"],
                    "hs_secret": {"env": "CI"},
                    **ci_extra,
                },
            },
            "static_tokens": {
                "docs-bot": {"sha256": hashlib.sha256(DOCS_BOT.encode()).hexdigest()}
            },
        },
        {"CI": CI_SECRET, "CORP": CORP_SECRET},
        problems,
    )
    assert problems == []
    return config


def mint(iss: str, secret: str, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": iss, "aud": "gw", "iat": now, "exp": now + 300, **claims}
    return jwt.encode(body, secret, algorithm="HS256")


def test_the_ci_issuer_cannot_mint_a_user_token_for_alice() -> None:
    config = two_issuers()
    issuers = {i.issuer: i for i in config.issuers}
    alice = mint(
        "https://login.example.com", CORP_SECRET, email="alice@example.com", email_verified=True
    )
    assert verify_token(alice, issuers, {}, time.time()).user == "alice@example.com"
    forged = mint(
        "https://ci.example.com", CI_SECRET, email="alice@example.com", email_verified=True
    )
    with pytest.raises(TokenRejected) as info:
        verify_token(forged, issuers, {}, time.time())
    assert (info.value.reason, info.value.message) == (
        "not_vouched",
        "issuer ci may not assert a user (it may assert services)",
    )
    # A service token from CI is fine; a group it may not assert is not.
    build = mint("https://ci.example.com", CI_SECRET, client_id="ci-build")
    assert verify_token(build, issuers, {}, time.time()).service == "ci-build"
    grouped = mint("https://ci.example.com", CI_SECRET, client_id="ci-build", groups=["ml-team"])
    with pytest.raises(TokenRejected, match="group membership"):
        verify_token(grouped, issuers, {}, time.time())


async def test_the_authenticator_answers_401_and_caches_nothing() -> None:
    auth = Authenticator(two_issuers(asserts={"service_prefixes": ["ci-"]}))
    forged = mint("https://ci.example.com", CI_SECRET, client_id="docs-bot")
    with pytest.raises(Unauthenticated) as info:
        await auth.authenticate({"authorization": f"Bearer {forged}"})
    assert info.value.status == 401
    assert info.value.message == (
        "issuer ci may not assert this service: it vouches only for names starting with ci-"
    )
    assert auth.refused["not_vouched"] == 1 and auth.cache_size == 0


# --- static tokens are not JWT services ---------------------------------------------------------


async def test_a_jwt_service_named_like_a_static_token_is_another_principal() -> None:
    auth = Authenticator(two_issuers())
    static = await auth.authenticate({"x-api-key": DOCS_BOT})
    jwt_bot = await auth.authenticate(
        {
            "authorization": "Bearer "
            + mint("https://ci.example.com", CI_SECRET, client_id="docs-bot")
        }
    )
    assert (static.service, static.static_token) == (None, "docs-bot")
    assert (jwt_bot.service, jwt_bot.static_token) == ("docs-bot", None)

    problems: list[str] = []
    policies = parse_policies(
        {
            "default": {"allow": ["gpt-4o-mini"]},
            "rules": [
                {"static_tokens": ["docs-bot"], "allow": ["gpt-4o"]},
                {"services": ["docs-bot"], "allow": ["o1"]},
            ],
        },
        problems,
    )
    assert problems == []
    assert policies.allows(static, "gpt-4o") and not policies.allows(static, "o1")
    assert policies.allows(jwt_bot, "o1") and not policies.allows(jwt_bot, "gpt-4o")
    assert policies.explain(static, "o1") == "static token docs-bot allows only gpt-4o"

    def budget(name: str, scope: Scope, match: Match | None = None) -> BudgetConfig:
        window = CalendarWindow(Period.MONTH)
        return BudgetConfig(name, scope, 1_000_000, window, Action.BLOCK, match or Match())

    budgets = [
        budget("per-static", Scope(ScopeKind.STATIC_TOKEN)),
        budget("bot-static", Scope(ScopeKind.STATIC_TOKEN, value="docs-bot")),
        budget("per-service", Scope(ScopeKind.SERVICE)),
        budget("g-static", Scope(ScopeKind.GLOBAL), Match(static_tokens=frozenset({"docs-bot"}))),
        budget("g-service", Scope(ScopeKind.GLOBAL), Match(services=frozenset({"docs-bot"}))),
    ]

    def charged(who: Identity) -> list[str]:
        found = applicable(budgets, identity=who, model="gpt-4o", provider="openai")
        return [f"{a.budget.name}:{a.scope_value}" for a in found]

    assert charged(static) == ["per-static:docs-bot", "bot-static:docs-bot", "g-static:*"]
    assert charged(jwt_bot) == ["per-service:docs-bot", "g-service:*"]


def config_with(extra: dict[str, Any]) -> dict[str, Any]:
    digest = hashlib.sha256(DOCS_BOT.encode()).hexdigest()
    base = {"identity": {"static_tokens": {"docs-bot": {"sha256": digest}}}}
    return merge(merge(load_document(None), base), extra)


def test_a_static_token_named_under_services_is_a_config_error_unless_namespaces_are_shared() -> (
    None
):
    extra = {
        "policies": {"rules": [{"services": ["ci", "docs-bot"], "allow": ["*"]}]},
        "budgets": [
            {
                "name": "bot",
                "scope": {"kind": "service", "value": "docs-bot"},
                "match": {"services": ["docs-bot"]},
                "limit_usd": 1,
                "window": {"type": "calendar", "period": "day"},
                "action": "block",
            }
        ],
    }
    with pytest.raises(ConfigError) as info:
        parse_config(config_with(extra), {})
    hint = (
        "'docs-bot' is a static token, and static tokens are not JWT services; name it under "
        "static_tokens (budget scope kind static_token), or set "
        "identity.static_tokens_share_service_namespace: true"
    )
    assert info.value.problems == [
        f"policies.rules[0].services[1]: {hint}",
        f"budgets[0].match.services: {hint}",
        f"budgets[0].scope.value: {hint}",
    ]
    shared = merge(extra, {"identity": {"static_tokens_share_service_namespace": True}})
    config = parse_config(config_with(shared), {})
    assert config.identity.static_tokens_share_service_namespace is True
