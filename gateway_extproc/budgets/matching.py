"""Which budgets (and rate limits: the same grammar) apply to a request, and which of their
counters (scope values) it charges. Pure.

A budget applies when every `match` filter holds and the identity has a value for the budget's
scope: a user budget does not apply to a service token, an attribute budget not to an identity
without that attribute. An "each value" scope charges one counter per value the request has: a
user in three groups charges three counters of an each-group budget. A fixed-value scope applies
only when the request has that value. A global budget has the single counter `*`.

Static tokens and JWT services are separate namespaces: `services` and `scope.kind: service` name
JWT services (and static tokens only with `identity.static_tokens_share_service_namespace`, which
sets a static token's `service`); `static_tokens` and `scope.kind: static_token` name static
tokens. The Identity carries this, so nothing here needs the setting.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import Generic, NamedTuple, Protocol, TypeVar

from gateway_extproc.budgets.model import GLOBAL_SCOPE_VALUE, Match, Scope, ScopeKind
from gateway_extproc.identity.model import Identity


class Scoped(Protocol):
    """What matching needs of a budget or a rate limit."""

    @property
    def name(self) -> str: ...

    @property
    def scope(self) -> Scope: ...

    @property
    def match(self) -> Match: ...


S = TypeVar("S", bound=Scoped)


class Applicable(NamedTuple, Generic[S]):
    budget: S  # a budget or a rate limit
    scope_value: str  # the counter this request charges


def applicable(
    budgets: Iterable[S], *, identity: Identity, model: str, provider: str
) -> list[Applicable[S]]:
    """Every (budget, scope value) this request charges, in configuration order."""
    out: list[Applicable[S]] = []
    for budget in budgets:
        if not matches(budget.match, identity=identity, model=model, provider=provider):
            continue
        values = scope_values(budget, identity=identity, model=model, provider=provider)
        fixed = budget.scope.value
        if fixed is not None:
            values = [fixed] if fixed in values else []
        out.extend(Applicable(budget, value) for value in values)
    return out


def for_entry(
    items: Iterable[S], *, identity: Identity, served: str, requested: str, provider: str
) -> list[tuple[S, str]]:
    """Every (budget or rate limit, scope value) a request for catalog model `served`, asked
    for as `requested` (an alias, or the same name), charges. Filters see both names; a
    model-scoped counter is always keyed by the catalog name, so an alias and its model share
    one counter."""
    names = [requested] if requested == served else [requested, served]
    seen: set[tuple[str, str]] = set()
    out: list[tuple[S, str]] = []
    for name in names:
        for item, value in applicable(items, identity=identity, model=name, provider=provider):
            value = served if item.scope.kind is ScopeKind.MODEL else value
            if (item.name, value) not in seen:
                seen.add((item.name, value))
                out.append((item, value))
    return out


def matches(match: Match, *, identity: Identity, model: str, provider: str) -> bool:
    """Whether every filter that is set holds for this request."""
    if match.groups is not None and not match.groups & identity.groups:
        return False
    if match.models is not None and not any(fnmatch.fnmatchcase(model, p) for p in match.models):
        return False
    if match.providers is not None and provider not in match.providers:
        return False
    if match.users is not None and identity.user not in match.users:
        return False
    if match.static_tokens is not None and identity.static_token not in match.static_tokens:
        return False
    return match.services is None or identity.service in match.services


def scope_values(budget: Scoped, *, identity: Identity, model: str, provider: str) -> list[str]:
    """The identity's values for the budget's scope dimension (empty: the budget does not apply)."""
    kind = budget.scope.kind
    single: str | None
    if kind is ScopeKind.GROUP:
        return sorted(identity.groups)
    if kind is ScopeKind.USER:
        single = identity.user
    elif kind is ScopeKind.SERVICE:
        single = identity.service
    elif kind is ScopeKind.STATIC_TOKEN:
        single = identity.static_token
    elif kind is ScopeKind.MODEL:
        single = model
    elif kind is ScopeKind.PROVIDER:
        single = provider
    elif kind is ScopeKind.ATTRIBUTE:
        assert budget.scope.attribute is not None
        single = identity.attributes.get(budget.scope.attribute)
    else:
        single = GLOBAL_SCOPE_VALUE
    return [single] if single else []
