"""Which budgets, and which of their counters, a request charges."""

from __future__ import annotations

from gateway_extproc.budgets.matching import Applicable, applicable
from gateway_extproc.budgets.model import (
    Action,
    BudgetConfig,
    CalendarWindow,
    Match,
    Period,
    Scope,
    ScopeKind,
)
from gateway_extproc.identity.model import ANONYMOUS, AuthMethod, Identity, Kind

ALICE = Identity(
    kind=Kind.USER,
    auth_method=AuthMethod.JWT,
    user="alice@example.com",
    service=None,
    groups=frozenset({"engineering", "interns", "ml"}),
    issuer="corp",
    attributes={"cost_center": "cc-42"},
    expires_at=None,
)
CI = Identity(
    kind=Kind.SERVICE,
    auth_method=AuthMethod.STATIC_TOKEN,
    user=None,
    service="ci-runner",
    groups=frozenset(),
    issuer="static",
    attributes={},
    expires_at=None,
)


def budget(
    name: str,
    kind: ScopeKind,
    *,
    value: str | None = None,
    attribute: str | None = None,
    match: Match | None = None,
) -> BudgetConfig:
    return BudgetConfig(
        name=name,
        scope=Scope(kind, attribute=attribute, value=value),
        match=match or Match(),
        limit_micros=1_000_000,
        window=CalendarWindow(Period.MONTH),
        action=Action.BLOCK,
    )


def charged(budgets: list[BudgetConfig], who: Identity, model: str = "gpt-4o") -> list[str]:
    found = applicable(budgets, identity=who, model=model, provider="openai")
    return [f"{a.budget.name}:{a.scope_value}" for a in found]


def test_each_value_scopes() -> None:
    budgets = [
        budget("user", ScopeKind.USER),
        budget("group", ScopeKind.GROUP),
        budget("service", ScopeKind.SERVICE),
        budget("model", ScopeKind.MODEL),
        budget("provider", ScopeKind.PROVIDER),
        budget("cc", ScopeKind.ATTRIBUTE, attribute="cost_center"),
        budget("global", ScopeKind.GLOBAL),
    ]
    assert charged(budgets, ALICE) == [
        "user:alice@example.com",
        "group:engineering",  # one counter per group the user is in
        "group:interns",
        "group:ml",
        "model:gpt-4o",
        "provider:openai",
        "cc:cc-42",
        "global:*",
    ]
    # a service token has no user, no groups, no cost center: those budgets do not apply
    assert charged(budgets, CI) == [
        "service:ci-runner",
        "model:gpt-4o",
        "provider:openai",
        "global:*",
    ]
    assert charged(budgets, ANONYMOUS) == ["model:gpt-4o", "provider:openai", "global:*"]


def test_fixed_value_scopes_apply_only_to_that_value() -> None:
    budgets = [
        budget("interns", ScopeKind.GROUP, value="interns"),
        budget("ci", ScopeKind.SERVICE, value="ci-runner"),
        budget("bob", ScopeKind.USER, value="bob@example.com"),
        budget("cc", ScopeKind.ATTRIBUTE, attribute="cost_center", value="cc-42"),
        budget("other-cc", ScopeKind.ATTRIBUTE, attribute="cost_center", value="cc-7"),
        budget("mini", ScopeKind.MODEL, value="gpt-4o-mini"),
    ]
    assert charged(budgets, ALICE) == ["interns:interns", "cc:cc-42"]
    assert charged(budgets, CI) == ["ci:ci-runner"]
    assert charged(budgets, CI, model="gpt-4o-mini") == ["ci:ci-runner", "mini:gpt-4o-mini"]


def test_match_filters_all_must_hold() -> None:
    opus = budget("opus", ScopeKind.GLOBAL, match=Match(models=("claude-opus-*",)))
    engineers = budget("eng", ScopeKind.USER, match=Match(groups=frozenset({"engineering", "x"})))
    narrow = budget(
        "narrow",
        ScopeKind.USER,
        match=Match(
            groups=frozenset({"ml"}),
            models=("gpt-*", "o1*"),
            providers=frozenset({"openai"}),
            users=frozenset({"alice@example.com"}),
        ),
    )
    ci_only = budget("ci-only", ScopeKind.GLOBAL, match=Match(services=frozenset({"ci-runner"})))
    budgets = [opus, engineers, narrow, ci_only]
    assert charged(budgets, ALICE, "claude-opus-4-1") == ["opus:*", "eng:alice@example.com"]
    assert charged(budgets, ALICE, "gpt-4o") == [
        "eng:alice@example.com",
        "narrow:alice@example.com",
    ]
    assert charged(budgets, ALICE, "Claude-Opus-4") == ["eng:alice@example.com"]  # case-sensitive
    assert charged(budgets, CI, "claude-opus-4-1") == ["opus:*", "ci-only:*"]
    assert charged([narrow], ALICE, "o1-mini") == ["narrow:alice@example.com"]
    other_provider = applicable([narrow], identity=ALICE, model="gpt-4o", provider="azure")
    assert other_provider == []


def test_applicable_is_a_budget_and_scope_value_pair() -> None:
    user = budget("user", ScopeKind.USER)
    assert applicable([user], identity=ALICE, model="m", provider="p") == [
        Applicable(user, "alice@example.com")
    ]
    assert applicable([], identity=ALICE, model="m", provider="p") == []
