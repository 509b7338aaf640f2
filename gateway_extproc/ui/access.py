"""Who sees what on the spend page: the admin API's authorisation, decided once per request. Pure.

- An **admin** view for a caller whose groups meet `admin_api.read_groups` (or `write_groups`)
  and whose credential the admin API itself would take: an admin token (its own audience), or
  a sign-in through an issuer the admin API admits (`admin_api.issuers`; by default every
  issuer with a JWKS). A data-plane token is never an admin credential, whatever its groups,
  exactly as on the admin API.
- Everyone else with a verified identity gets **their own** view: the spend filter on their
  principal (user, else service, else static token) is forced server-side, replacing any filter
  a query names on that dimension, and the budgets shown are those whose scope covers them.
"""

from __future__ import annotations

import dataclasses
import enum

from gateway_extproc.admin.settings import AdminApiConfig
from gateway_extproc.budgets.model import GLOBAL_SCOPE_VALUE, BudgetConfig, ScopeKind
from gateway_extproc.identity.model import Identity


class Source(enum.StrEnum):
    ADMIN_TOKEN = "admin_token"  # Authorization: Bearer, an admin API credential
    DATA_TOKEN = "data_token"  # Authorization: Bearer, a data-plane credential
    SESSION = "session"  # the sign-in's session cookie


@dataclasses.dataclass(frozen=True)
class Viewer:
    identity: Identity
    admin: bool
    source: Source

    @property
    def own_filter(self) -> tuple[str, str] | None:
        """The (dimension, value) every spend query of this viewer is held to; None: admin."""
        if self.admin:
            return None
        return principal(self.identity)


def principal(identity: Identity) -> tuple[str, str]:
    if identity.user:
        return ("user", identity.user)
    if identity.service:
        return ("service", identity.service)
    if identity.static_token:
        return ("static_token", identity.static_token)
    raise ValueError("an identity without a principal has no own view")


def may_admin(identity: Identity, source: Source, admin: AdminApiConfig) -> bool:
    """Whether the admin API would let this caller read (see the module's rules)."""
    if source is Source.DATA_TOKEN:
        return False
    if (
        source is Source.SESSION
        and admin.issuers is not None
        and identity.issuer not in (admin.issuers)
    ):
        return False
    return bool(identity.groups & (admin.read_groups | admin.write_groups))


def viewer(identity: Identity, source: Source, admin: AdminApiConfig) -> Viewer:
    return Viewer(identity, may_admin(identity, source, admin), source)


def own_scope_values(budget: BudgetConfig, identity: Identity) -> list[str]:
    """The scope values of `budget` whose counters count this identity's spend (its user, its
    groups, its service, its attributes, the global one), as far as the budget's own match on
    principals allows; model and provider scopes count everyone's spend and are not shown."""
    match, scope = budget.match, budget.scope
    if match.groups is not None and not identity.groups & match.groups:
        return []
    if match.users is not None and identity.user not in match.users:
        return []
    if match.services is not None and identity.service not in match.services:
        return []
    if match.static_tokens is not None and identity.static_token not in match.static_tokens:
        return []
    kind = scope.kind
    values: list[str] = []
    if kind is ScopeKind.GLOBAL:
        values = [GLOBAL_SCOPE_VALUE]
    elif kind is ScopeKind.USER and identity.user:
        values = [identity.user]
    elif kind is ScopeKind.GROUP:
        values = sorted(identity.groups)
    elif kind is ScopeKind.SERVICE and identity.service:
        values = [identity.service]
    elif kind is ScopeKind.STATIC_TOKEN and identity.static_token:
        values = [identity.static_token]
    elif kind is ScopeKind.ATTRIBUTE and scope.attribute in identity.attributes:
        values = [identity.attributes[scope.attribute or ""]]
    if scope.value is not None:
        values = [v for v in values if v == scope.value]
    return values
