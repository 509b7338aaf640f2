"""Static tokens and JWT services are separate principal namespaces: a cross-section check. Pure.

A JWT `client_id: docs-bot` is not the static token `docs-bot`. Policies (`services`) and budgets
(`match.services`, `scope.kind: service`) name JWT services; static tokens are named under
`static_tokens` (`scope.kind: static_token`). A configuration that names a static token under
`services` most likely predates the split, and would now silently give that rule or budget to
whoever can mint a JWT service of that name (while the static token escapes it): it is refused
at load, unless `identity.static_tokens_share_service_namespace: true` restores one namespace.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gateway_extproc.budgets.matching import Scoped
from gateway_extproc.budgets.model import ScopeKind
from gateway_extproc.identity.model import IdentityConfig

__all__ = ["namespace_problems"]


def _message(path: str, name: str) -> str:
    return (
        f"{path}: {name!r} is a static token, and static tokens are not JWT services; name it "
        "under static_tokens (budget scope kind static_token), or set "
        "identity.static_tokens_share_service_namespace: true"
    )


def namespace_problems(
    identity: IdentityConfig,
    policies_doc: object,
    budgets: Sequence[Scoped],
    section: str = "budgets",
) -> list[str]:
    """Every place that names a static token as a service, with its path."""
    if identity.static_tokens_share_service_namespace:
        return []
    static = {token.service for token in identity.static_tokens}
    if not static:
        return []
    out: list[str] = []
    rules = policies_doc.get("rules") if isinstance(policies_doc, Mapping) else None
    for i, rule in enumerate(rules if isinstance(rules, list) else []):
        services = rule.get("services") if isinstance(rule, Mapping) else None
        for j, name in enumerate(services if isinstance(services, list) else []):
            if name in static:
                out.append(_message(f"policies.rules[{i}].services[{j}]", name))
    for i, budget in enumerate(budgets):
        for name in sorted((budget.match.services or frozenset()) & static):
            out.append(_message(f"{section}[{i}].match.services", name))
        if budget.scope.kind is ScopeKind.SERVICE and budget.scope.value in static:
            out.append(_message(f"{section}[{i}].scope.value", budget.scope.value))
    return out
