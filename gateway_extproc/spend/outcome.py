"""How a request ended, as the spend rollups count it. Pure.

A billed request adds its usage and cost (rollup.py's `n`, tokens, `c`, `ce`). A request the
gateway answered itself adds one count of what happened instead: a cache hit (and the cost the
hit saved), or a refusal by kind. Refusals are told apart by the stable error code the client
got (the `error_code` of the audit record; the README lists them), so this module needs none of
the classes that raise them. Other endings (a malformed request, an unknown model, a failed
upstream call, an unauthenticated caller) are not counted: they are in the audit log only.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class Outcome(enum.StrEnum):
    BILLED = "billed"
    CACHE_HIT = "cache_hit"
    REFUSED_GUARDRAIL = "refused_guardrail"
    REFUSED_RATE_LIMIT = "refused_rate_limit"
    REFUSED_BUDGET = "refused_budget"
    REFUSED_POLICY = "refused_policy"


# error code the client got -> the refusal it counts as
REFUSAL_CODES: Mapping[str, Outcome] = {
    "guardrail_blocked": Outcome.REFUSED_GUARDRAIL,  # errors.GuardrailBlocked (400)
    "rate_limited": Outcome.REFUSED_RATE_LIMIT,  # budgets.ratelimits.report.RateLimited (429)
    "budget_exceeded": Outcome.REFUSED_BUDGET,  # budgets.refusals.BudgetExceeded (429)
    "model_not_allowed": Outcome.REFUSED_POLICY,  # errors.Forbidden (403)
}

# outcome -> its rollup metric (the one-count metric; a hit also adds "hs", the cost saved)
OUTCOME_METRICS: Mapping[Outcome, str] = {
    Outcome.CACHE_HIT: "h",
    Outcome.REFUSED_GUARDRAIL: "rg",
    Outcome.REFUSED_RATE_LIMIT: "rr",
    Outcome.REFUSED_BUDGET: "rb",
    Outcome.REFUSED_POLICY: "rp",
}


def answered_outcome(error_code: str | None, *, cache_hit: bool) -> Outcome | None:
    """The outcome of a request the gateway answered itself (None: not counted)."""
    if cache_hit:
        return Outcome.CACHE_HIT
    if error_code is None:
        return None
    return REFUSAL_CODES.get(error_code)
