"""Model access policies: precedence, deny, wildcards, requested names, explanations, validation,
and the memo checked against a naive reference implementation."""

from __future__ import annotations

import fnmatch
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_extproc.identity.model import ANONYMOUS, AuthMethod, Identity, Kind
from gateway_extproc.identity.policy import PolicySet, parse_policies


def who(
    user: str | None = None, service: str | None = None, groups: tuple[str, ...] = ()
) -> Identity:
    return Identity(
        kind=Kind.USER if user else Kind.SERVICE,
        auth_method=AuthMethod.JWT,
        user=user,
        service=service,
        groups=frozenset(groups),
        issuer="test",
        attributes={},
        expires_at=None,
    )


def compile_ok(doc: object, memo_size: int = 1024) -> PolicySet:
    problems: list[str] = []
    policies = parse_policies(doc, problems, memo_size=memo_size)
    assert problems == []
    return policies


def problems_of(doc: object) -> list[str]:
    problems: list[str] = []
    policies = parse_policies(doc, problems)
    assert not policies.allows(who("alice@example.com"), "gpt-4o")  # a broken set fails closed
    return problems


DOC: dict[str, Any] = {
    "default": {"allow": ["gpt-4o-mini", "gpt-5-nano"]},
    "anonymous": {"allow": ["gpt-5-nano"]},
    "rules": [
        {"groups": ["interns"], "allow": ["gpt-4o-mini"]},
        {"groups": ["ml-team"], "allow": ["claude-opus-*", "gpt-4o"]},
        {"groups": ["contractors"], "deny": ["claude-opus-*"]},
        {"services": ["ci-runner"], "allow": ["gpt-5*"], "deny": ["gpt-5-pro*"]},
        {"users": ["alice@example.com"], "allow": ["*"]},
        {"users": ["bob@example.com"], "groups": ["ops"], "allow": ["o3"]},
        {"groups": ["snapshots"], "allow": ["gpt-4o-2024-08-06"]},
    ],
}
POLICIES = compile_ok(DOC)

ALICE = who("alice@example.com", groups=("interns",))
BOB = who("bob@example.com", groups=("ml-team",))
CAROL = who("carol@example.com", groups=("eng",))
DAVE = who("dave@example.com", groups=("ops",))
INTERN = who("ivan@example.com", groups=("interns",))
INTERN_ML = who("ivy@example.com", groups=("interns", "ml-team"))
ML = who("mia@example.com", groups=("ml-team",))
ML_CONTRACTOR = who("max@example.com", groups=("ml-team", "contractors"))
CONTRACTOR = who("cy@example.com", groups=("contractors",))
CI = who(service="ci-runner", groups=("ml-team",))
SNAPSHOTS = who("sam@example.com", groups=("snapshots",))

ALLOWS = [
    # user rules beat service rules beat group rules beat default
    ("user beats group", ALICE, "gpt-5-pro", None, True),
    ("user beats service", who("alice@example.com", "ci-runner"), "gpt-5-pro", None, True),
    ("user rule replaces default", BOB, "o3", None, True),
    ("user rule replaces groups", BOB, "gpt-4o", None, False),
    ("user rule replaces default, not extends", BOB, "gpt-4o-mini", None, False),
    ("service beats group", CI, "claude-opus-4", None, False),
    ("service allows", CI, "gpt-5", None, True),
    (
        "service rule for a user identity",
        who("carol@example.com", "ci-runner"),
        "gpt-5",
        None,
        True,
    ),
    ("group", INTERN, "gpt-4o-mini", None, True),
    ("group replaces default", INTERN, "gpt-5-nano", None, False),
    ("group rule naming users too", DAVE, "o3", None, True),
    ("default when no rule names the identity", CAROL, "gpt-4o-mini", None, True),
    ("default allows only its list", CAROL, "gpt-4o", None, False),
    ("no groups at all gets default", who("zed@example.com"), "gpt-5-nano", None, True),
    # deny wins, within one rule and across rules of the deciding kind
    ("deny wins in one rule", CI, "gpt-5-pro", None, False),
    ("deny wins on a snapshot", CI, "gpt-5-pro-2025-10-06", None, False),
    ("deny wins across rules", ML_CONTRACTOR, "claude-opus-4-1", None, False),
    ("other allows survive a deny", ML_CONTRACTOR, "gpt-4o", None, True),
    ("deny-only kind allows nothing", CONTRACTOR, "gpt-4o-mini", None, False),
    # union across several groups
    ("union: first group", INTERN_ML, "gpt-4o-mini", None, True),
    ("union: second group", INTERN_ML, "claude-opus-4-1", None, True),
    ("union: neither", INTERN_ML, "gpt-5", None, False),
    ("union with a users+groups rule", who("d2@x", groups=("ops", "interns")), "o3", None, True),
    # wildcards are fnmatch, case-sensitive, whole-name
    ("wildcard", ML, "claude-opus-4-5", None, True),
    ("wildcard needs the prefix", ML, "claude-sonnet-4-5", None, False),
    ("case-sensitive", INTERN, "GPT-4o-mini", None, False),
    ("whole name, not a prefix", INTERN, "gpt-4o-mini-tts", None, False),
    # the requested name (alias or dated snapshot) counts too
    (
        "canonical allowed, snapshot requested",
        INTERN,
        "gpt-4o-mini",
        "gpt-4o-mini-2024-07-18",
        True,
    ),
    ("only the requested snapshot allowed", SNAPSHOTS, "gpt-4o", "gpt-4o-2024-08-06", True),
    ("the snapshot rule without it", SNAPSHOTS, "gpt-4o", None, False),
    ("requested equal to canonical", SNAPSHOTS, "gpt-4o", "gpt-4o", False),
    ("requested name denied", CI, "gpt-5", "gpt-5-pro-alias", False),
    ("canonical denied, requested allowed", CI, "gpt-5-pro", "gpt-5-fast", False),
    # anonymous callers get `anonymous`, never rules
    ("anonymous", ANONYMOUS, "gpt-5-nano", None, True),
    ("anonymous not default", ANONYMOUS, "gpt-4o-mini", None, False),
]


@pytest.mark.parametrize(
    ("identity", "model", "requested", "expected"),
    [case[1:] for case in ALLOWS],
    ids=[case[0] for case in ALLOWS],
)
def test_allows(identity: Identity, model: str, requested: str | None, expected: bool) -> None:
    assert POLICIES.allows(identity, model, requested) is expected
    assert POLICIES.allows(identity, model, requested) is expected  # memoised: same answer
    fresh = compile_ok(DOC, memo_size=0)
    assert fresh.allows(identity, model, requested) is expected


def test_anonymous_without_anonymous_policy_gets_default() -> None:
    policies = compile_ok({"default": {"allow": ["gpt-4o-mini"]}, "rules": DOC["rules"]})
    assert policies.allows(ANONYMOUS, "gpt-4o-mini")
    assert not policies.allows(ANONYMOUS, "gpt-5-nano")


def test_anonymous_ignores_rules_even_with_groups() -> None:
    odd = Identity(
        kind=Kind.ANONYMOUS,
        auth_method=AuthMethod.ANONYMOUS,
        user=None,
        service=None,
        groups=frozenset({"ml-team"}),
        issuer=None,
        attributes={},
        expires_at=None,
    )
    assert not POLICIES.allows(odd, "gpt-4o")
    assert POLICIES.allows(odd, "gpt-5-nano")


@pytest.mark.parametrize(
    ("doc", "model", "expected"),
    [
        (None, "anything-at-all", True),  # no policies section: everything
        ({}, "anything-at-all", True),  # no default: everything
        ({"rules": [{"groups": ["x"], "allow": ["a"]}]}, "b", True),
        ({"default": {"allow": []}}, "gpt-4o-mini", False),  # [] = nothing
        ({"default": {"allow": ["*"], "deny": ["o1-pro*"]}}, "o1-pro", False),
        ({"default": {"allow": ["*"], "deny": ["o1-pro*"]}}, "o1", True),
    ],
)
def test_default(doc: object, model: str, expected: bool) -> None:
    assert compile_ok(doc).allows(CAROL, model) is expected


EXPLAIN = [
    (INTERN, "gpt-4o", None, "group interns allows only gpt-4o-mini"),
    (
        INTERN_ML,
        "gpt-5",
        None,
        "groups interns, ml-team allow only gpt-4o-mini, claude-opus-*, gpt-4o",
    ),
    (CI, "gpt-5-pro", None, "service ci-runner denies gpt-5-pro*"),
    (CI, "gpt-5", "gpt-5-pro-alias", "service ci-runner denies gpt-5-pro*"),
    (CI, "claude-opus-4", None, "service ci-runner allows only gpt-5*"),
    (ML_CONTRACTOR, "claude-opus-4", None, "groups contractors, ml-team deny claude-opus-*"),
    (CONTRACTOR, "gpt-4o", None, "group contractors allows no models"),
    (CAROL, "gpt-4o", None, "the default policy allows only gpt-4o-mini, gpt-5-nano"),
    (ANONYMOUS, "gpt-4o", None, "the anonymous policy allows only gpt-5-nano"),
    (BOB, "gpt-4o", None, "user bob@example.com allows only o3"),
    (ALICE, "gpt-5", None, "user alice@example.com allows gpt-5"),
    (SNAPSHOTS, "gpt-4o", "gpt-4o-2024-08-06", "group snapshots allows gpt-4o"),
]


@pytest.mark.parametrize(("identity", "model", "requested", "message"), EXPLAIN)
def test_explain(identity: Identity, model: str, requested: str | None, message: str) -> None:
    assert POLICIES.explain(identity, model, requested) == message
    refused = any(word in message for word in (" deny ", " denies ", " only ", " no models"))
    assert POLICIES.allows(identity, model, requested) is not refused


def test_explain_shortens_long_lists() -> None:
    patterns = [f"m{i}" for i in range(13)]
    policies = compile_ok({"rules": [{"groups": ["g"], "allow": patterns}]})
    assert policies.explain(who("u", groups=("g",)), "x") == (
        "group g allows only m0, m1, m2, m3, m4, m5, m6, m7, m8, m9 and 3 more"
    )


def test_allowed_models() -> None:
    names = ["claude-opus-4-5", "gpt-4o", "gpt-4o-mini", "gpt-5", "gpt-5-nano", "gpt-5-pro", "o3"]
    assert POLICIES.allowed_models(INTERN, names) == ["gpt-4o-mini"]
    assert POLICIES.allowed_models(INTERN_ML, names) == ["claude-opus-4-5", "gpt-4o", "gpt-4o-mini"]
    assert POLICIES.allowed_models(CI, iter(names)) == ["gpt-5", "gpt-5-nano"]
    assert POLICIES.allowed_models(ALICE, names) == names
    assert POLICIES.allowed_models(CONTRACTOR, names) == []
    assert POLICIES.allowed_models(ANONYMOUS, names) == ["gpt-5-nano"]
    assert PolicySet.allow_all().allowed_models(ANONYMOUS, names) == names


def test_unmatched_patterns() -> None:
    names = ["gpt-4o", "gpt-4o-mini", "gpt-5", "gpt-5-nano", "claude-opus-4-5", "o3"]
    assert POLICIES.unmatched_patterns(names) == ["gpt-5-pro*", "gpt-4o-2024-08-06"]
    assert POLICIES.unmatched_patterns([*names, "gpt-5-pro", "gpt-4o-2024-08-06"]) == []
    typo = compile_ok(
        {
            "default": {"allow": ["gpt-4o-mnii"]},
            "rules": [{"groups": ["a"], "allow": ["gpt-4o-mnii", "GPT-4o"]}],
        }
    )
    assert typo.unmatched_patterns(iter(names)) == ["gpt-4o-mnii", "GPT-4o"]  # once each


def test_every_problem_reported_at_once_with_its_path() -> None:
    doc = {
        "default": {"allow": "gpt-4o", "permit": ["x"]},
        "anonymous": {"deny": ["*"]},
        "rulez": [],
        "rules": [
            {"groups": ["interns"], "allow": ["gpt-4o-mini", 42, "", " gpt-5 "]},
            {"allow": ["gpt-4o"]},
            {"groups": ["x"]},
            {"groups": ["x"], "allow": [], "deny": []},
            {"users": "alice", "group": ["x"], "allow": ["*"]},
            {"services": ["", None], "allow": ["*"], "deny": None},
            "interns: gpt-4o",
            {"groups": [], "users": [], "allow": ["*"]},
        ],
    }
    assert problems_of(doc) == [
        "policies.rulez: unknown key (expected one of default, anonymous, rules)",
        "policies.default.permit: unknown key (expected one of allow, deny)",
        "policies.default.allow: must be a list of model patterns (got 'gpt-4o')",
        "policies.anonymous.allow: required (allow: [] allows nothing)",
        "policies.rules[0].allow[1]: must be a non-empty string without surrounding spaces "
        "(got 42)",
        "policies.rules[0].allow[2]: must be a non-empty string without surrounding spaces "
        "(got '')",
        "policies.rules[0].allow[3]: must be a non-empty string without surrounding spaces "
        "(got ' gpt-5 ')",
        "policies.rules[1]: names no subject (set users, groups, services or static_tokens)",
        "policies.rules[2]: needs at least one allow or deny pattern (to allow nothing: "
        "deny: ['*'])",
        "policies.rules[3]: needs at least one allow or deny pattern (to allow nothing: "
        "deny: ['*'])",
        "policies.rules[4].group: unknown key (expected one of users, groups, services, "
        "static_tokens, allow, deny)",
        "policies.rules[4].users: must be a list of names (got 'alice')",
        "policies.rules[5].services[0]: must be a non-empty string without surrounding spaces "
        "(got '')",
        "policies.rules[5].services[1]: must be a non-empty string without surrounding spaces "
        "(got None)",
        "policies.rules[5].deny: must be a list of model patterns (got None)",
        "policies.rules[6]: must be a mapping with subjects and allow/deny (got 'interns: gpt-4o')",
        "policies.rules[7]: names no subject (set users, groups, services or static_tokens)",
    ]


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        (["default"], "policies: must be a mapping with keys default, anonymous, rules"),
        ({"rules": {"groups": ["x"]}}, "policies.rules: must be a list of rules"),
        (
            {"default": ["*"]},
            "policies.default: must be a mapping with allow (and optionally deny)",
        ),
    ],
)
def test_shape_problems(doc: object, problem: str) -> None:
    assert problems_of(doc)[0].startswith(problem)


def test_problems_are_appended_to_earlier_ones() -> None:
    problems = ["catalog: something"]
    parse_policies({"rules": [{"allow": ["*"]}]}, problems)
    assert problems == [
        "catalog: something",
        "policies.rules[0]: names no subject (set users, groups, services or static_tokens)",
    ]


def test_memo_is_bounded_and_shared_by_equivalent_identities() -> None:
    policies = compile_ok(DOC, memo_size=8)
    for i in range(100):
        assert not policies.allows(INTERN, f"model-{i}")
    assert len(policies._decisions.data) == 8  # internals: the bound holds
    # identities that differ only in groups no rule names share one decision
    policies = compile_ok(DOC, memo_size=8)
    policies.allows(who("a@x", groups=("interns", "eng")), "gpt-4o-mini")
    policies.allows(who("b@x", groups=("interns", "sales")), "gpt-4o-mini")
    assert len(policies._decisions.data) == 1


# --- the memo against a naive reference ------------------------------------------------------

USERS = ["alice", "bob", "carol"]
SERVICES = ["ci", "bot"]
GROUPS = ["eng", "ml", "interns", "ops"]
PATTERNS = ["*", "gpt-*", "gpt-5*", "*-mini", "claude-?pus-4", "[gc]*", "GPT-4o", "gpt-4o", "o[!1]"]
MODELS = ["gpt-4o", "gpt-4o-mini", "gpt-5", "gpt-5-pro", "claude-opus-4", "o1", "o3", "GPT-4o"]


def reference(doc: dict[str, Any], identity: Identity, model: str, requested: str | None) -> bool:
    """The precedence as the module docstring states it, with no index, regex or memo."""
    everything = {"allow": ["*"]}
    rules = doc.get("rules", [])
    if identity.kind is Kind.ANONYMOUS:
        deciding = [doc.get("anonymous") or doc.get("default") or everything]
    else:
        deciding = (
            [r for r in rules if identity.user is not None and identity.user in r.get("users", [])]
            or [
                r
                for r in rules
                if identity.service is not None and identity.service in r.get("services", [])
            ]
            or [r for r in rules if set(r.get("groups", [])) & identity.groups]
            or [doc.get("default") or everything]
        )
    names = [model] if requested is None else [model, requested]

    def hit(key: str) -> bool:
        return any(
            fnmatch.fnmatchcase(name, pattern)
            for rule in deciding
            for pattern in rule.get(key, [])
            for name in names
        )

    return hit("allow") and not hit("deny")


def _valid(rule: dict[str, list[str]]) -> bool:
    has_subject = any(rule.get(key) for key in ("users", "services", "groups"))
    return has_subject and bool(rule.get("allow") or rule.get("deny"))


def _lists(values: list[str]) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(values), max_size=3)


rules_st = st.fixed_dictionaries(
    {},
    optional={
        "users": _lists(USERS),
        "services": _lists(SERVICES),
        "groups": _lists(GROUPS),
        "allow": _lists(PATTERNS),
        "deny": _lists(PATTERNS),
    },
).filter(_valid)
policy_st = st.fixed_dictionaries({"allow": _lists(PATTERNS), "deny": _lists(PATTERNS)})
docs_st = st.fixed_dictionaries(
    {"rules": st.lists(rules_st, max_size=6)},
    optional={"default": policy_st, "anonymous": policy_st},
)
identities_st = st.one_of(
    st.just(ANONYMOUS),
    st.builds(
        who,
        user=st.none() | st.sampled_from([*USERS, "zed"]),
        service=st.none() | st.sampled_from([*SERVICES, "other"]),
        groups=st.lists(st.sampled_from([*GROUPS, "sales"]), max_size=3).map(tuple),
    ),
)
queries_st = st.lists(
    st.tuples(identities_st, st.sampled_from(MODELS), st.none() | st.sampled_from(MODELS)),
    min_size=1,
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(doc=docs_st, queries=queries_st)
def test_memoised_decisions_match_the_reference(
    doc: dict[str, Any], queries: list[tuple[Identity, str, str | None]]
) -> None:
    memo, tiny, none = compile_ok(doc), compile_ok(doc, memo_size=2), compile_ok(doc, memo_size=0)
    for _ in range(2):  # the second pass answers from the memo
        for identity, model, requested in queries:
            expected = reference(doc, identity, model, requested)
            assert memo.allows(identity, model, requested) is expected
            assert tiny.allows(identity, model, requested) is expected
            assert none.allows(identity, model, requested) is expected
    identity = queries[0][0]
    assert memo.allowed_models(identity, MODELS) == [
        m for m in MODELS if reference(doc, identity, m, None)
    ]
