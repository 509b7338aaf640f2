"""The `budget_store` section and the checks on budgets that need the catalog."""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping
from typing import Any

from gateway_extproc.apis import Api
from gateway_extproc.budgets.model import Action, BudgetConfig
from gateway_extproc.catalog.models import Catalog
from gateway_extproc.cost.bounds import UnseenInput
from gateway_extproc.translate.pairs import reaches


@dataclasses.dataclass(frozen=True)
class BudgetStoreConfig:
    redis_url: str = "redis://127.0.0.1:6379/0"
    cluster: bool = False
    key_prefix: str = "llmgw"
    deadline_ms: int = 250
    lease_s: int = 120
    reap_interval_s: float = 10.0
    breaker_failures: int = 5
    breaker_open_s: float = 5.0
    default_max_output_tokens: int = 8192
    unseen_input: UnseenInput = UnseenInput.RESERVE_CONTEXT_WINDOW
    max_inflight: int = 64
    queue_timeout_ms: int = 2000
    # GATEWAY_REDIS_PASSWORD (a mounted Secret in Kubernetes): kept out of the URL and of repr.
    redis_password: str | None = dataclasses.field(default=None, repr=False)


# field -> (type, lowest, highest) for the numeric settings
_NUMBERS: dict[str, tuple[type, float, float]] = {
    "deadline_ms": (int, 1, 60_000),
    "lease_s": (int, 5, 86_400),
    "reap_interval_s": (float, 0.1, 3600),
    "breaker_failures": (int, 1, 1000),
    "breaker_open_s": (float, 0.1, 3600),
    "default_max_output_tokens": (int, 1, 10_000_000),
    "max_inflight": (int, 1, 4096),
    "queue_timeout_ms": (int, 1, 60_000),
}
_RENAMED = {
    "estimate_max_output_tokens": "default_max_output_tokens (the cap is now injected into "
    "the upstream request when the client sets none, so the provider enforces it)",
}


def parse_budget_store(
    doc: Mapping[str, Any], environ: Mapping[str, str], problems: list[str]
) -> BudgetStoreConfig:
    """Read `budget_store` (unknown keys are reported by the caller); GATEWAY_REDIS_URL wins."""
    d = BudgetStoreConfig()
    values: dict[str, Any] = {"redis_password": environ.get("GATEWAY_REDIS_PASSWORD") or None}
    url = environ.get("GATEWAY_REDIS_URL") or doc.get("redis_url", d.redis_url)
    if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
        problems.append(
            f"budget_store.redis_url: must be a redis://, rediss:// or unix:// URL (got {url!r})"
        )
    else:
        values["redis_url"] = url
    prefix = doc.get("key_prefix", d.key_prefix)
    if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
        problems.append("budget_store.key_prefix: must be a non-empty string without braces")
    else:
        values["key_prefix"] = prefix
    cluster = doc.get("cluster", d.cluster)
    if not isinstance(cluster, bool):
        problems.append(f"budget_store.cluster: must be true or false (got {cluster!r})")
    else:
        values["cluster"] = cluster
    for old, new in _RENAMED.items():
        if old in doc:
            problems.append(f"budget_store.{old}: renamed to {new}")
    unseen = doc.get("unseen_input", d.unseen_input.value)
    try:
        values["unseen_input"] = UnseenInput(unseen)
    except ValueError:
        choices = ", ".join(u.value for u in UnseenInput)
        problems.append(f"budget_store.unseen_input: must be one of {choices} (got {unseen!r})")
    for name, (kind, lo, hi) in _NUMBERS.items():
        value = doc.get(name, getattr(d, name))
        ok_type = isinstance(value, int | float) if kind is float else isinstance(value, int)
        if isinstance(value, bool) or not ok_type or not lo <= value <= hi:
            what = "an integer" if kind is int else "a number"
            problems.append(
                f"budget_store.{name}: must be {what} in [{lo:g}, {hi:g}] (got {value!r})"
            )
        else:
            values[name] = kind(value)
    return dataclasses.replace(d, **values)


def downgrade_problems(budgets: tuple[BudgetConfig, ...], catalog: Catalog) -> list[str]:
    """A downgrade target must exist and be reachable from every model the budget can apply to:
    of the same API, or of one a client of that model's requests can be translated to
    (translate/pairs.py; a request whose own API cannot reach it is blocked, not downgraded)."""
    problems = []
    for i, budget in enumerate(budgets):
        if budget.action is not Action.DOWNGRADE:
            continue
        path = f"budgets[{i}].downgrade_to"
        target = catalog.lookup(budget.downgrade_to or "")
        if target is None:
            problems.append(f"{path}: {budget.downgrade_to!r} is not in the catalog")
            continue
        patterns = budget.match.models
        providers = budget.match.providers
        other = sorted(
            e.name
            for e in catalog.models()
            if not any(reaches(a, e.schema) and reaches(a, target.schema) for a in Api)
            and (patterns is None or any(fnmatch.fnmatchcase(e.name, p) for p in patterns))
            and (providers is None or e.provider in providers)
        )
        if other:
            shown = ", ".join(other[:5]) + (f" and {len(other) - 5} more" if len(other) > 5 else "")
            problems.append(
                f"{path}: {target.name} speaks the {target.schema.value} API, which no client of "
                f"{shown} can be translated to; restrict the budget with match.models or "
                "match.providers"
            )
    return problems
