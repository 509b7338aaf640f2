"""A reconciled day: one provider's comparisons of one UTC day (compare.Comparison per model),
as stored beside the rollups and served by the admin API; and the drift alert decision. Pure.

JSON, integers only: tokens by kind and micro-dollars on each side, the explained parts and the
unexplained rest, the capture rate as its decimal string.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from gateway_extproc.reconcile.compare import (
    Comparison,
    Explained,
    GatewaySide,
    ProviderSide,
    totals,
)
from gateway_extproc.reconcile.rows import Tokens
from gateway_extproc.reconcile.settings import AlertThresholds

UNEXPLAINED, OUTSIDE = "unexplained", "outside"  # the kinds of drift an alert is about


@dataclasses.dataclass(frozen=True, slots=True)
class DayResult:
    provider: str
    day: dt.date
    reconciled_at: float  # wall time, seconds
    comparisons: tuple[Comparison, ...]  # one per model, sorted

    @property
    def total(self) -> Comparison:
        """Every model summed (model `*`); zeros when neither side had anything."""
        found = totals(self.comparisons)
        if found is not None:
            return found
        return Comparison(
            self.provider,
            self.day,
            "*",
            GatewaySide(),
            ProviderSide(),
            0,
            None,
            Explained(),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "day": self.day.isoformat(),
            "reconciled_at": self.reconciled_at,
            "comparisons": [comparison_json(c) for c in self.comparisons],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> DayResult:
        provider, day = str(doc["provider"]), dt.date.fromisoformat(doc["day"])
        return cls(
            provider,
            day,
            float(doc["reconciled_at"]),
            tuple(comparison_from_json(c, provider, day) for c in doc["comparisons"]),
        )


def comparison_json(c: Comparison) -> dict[str, Any]:
    g, p, e = c.gateway, c.reported, c.explained
    return {
        "model": c.model,
        "gateway": {
            "tokens": g.tokens.as_dict(),
            "requests": g.requests,
            "cost_micros": g.cost_micros,
            "estimated_cost_micros": g.estimated_cost_micros,
        },
        "provider": {
            "tokens": p.tokens.as_dict(),
            "requests": p.requests,
            "cost_micros": p.cost_micros,
            "outside_tokens": p.outside_tokens.as_dict(),
            "outside_cost_micros": p.outside_cost_micros,
        },
        "difference_micros": c.difference_micros,
        "capture_rate": c.capture_rate,
        "explained": dataclasses.asdict(e),
    }


def comparison_from_json(doc: Mapping[str, Any], provider: str, day: dt.date) -> Comparison:
    g, p = doc["gateway"], doc["provider"]
    return Comparison(
        provider=provider,
        day=day,
        model=str(doc["model"]),
        gateway=GatewaySide(
            Tokens.from_dict(g["tokens"]),
            int(g["requests"]),
            int(g["cost_micros"]),
            int(g["estimated_cost_micros"]),
        ),
        reported=ProviderSide(
            Tokens.from_dict(p["tokens"]),
            None if p["requests"] is None else int(p["requests"]),
            int(p["cost_micros"]),
            Tokens.from_dict(p["outside_tokens"]),
            int(p["outside_cost_micros"]),
        ),
        difference_micros=int(doc["difference_micros"]),
        capture_rate=doc["capture_rate"],
        explained=Explained(**{k: int(v) for k, v in doc["explained"].items()}),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Drift:
    """One threshold crossing of a provider's day: what the webhook and the log say."""

    provider: str
    day: dt.date
    kind: str  # UNEXPLAINED or OUTSIDE
    amount_micros: int  # |unexplained| or the outside spend
    provider_cost_micros: int
    gateway_cost_micros: int
    capture_rate: str | None
    threshold: str  # which threshold it crossed, for people: "0.5 %", "$5.000000"
    models: tuple[tuple[str, int], ...]  # (model, its amount) for models with any


def _pct_over(amount: int, base: int, pct: Decimal) -> bool:
    if base <= 0:
        return amount > 0
    return Decimal(amount) * 100 > pct * base


def drifts(result: DayResult, alert: AlertThresholds) -> list[Drift]:
    """The thresholds `result` crosses (at most one Drift per kind)."""
    total = result.total
    out = []
    unexplained = abs(total.explained.unexplained)
    reasons = []
    if alert.unexplained_pct is not None and _pct_over(
        unexplained, total.reported.cost_micros, alert.unexplained_pct
    ):
        reasons.append(f"{alert.unexplained_pct} % of the provider's bill")
    if alert.unexplained_micros is not None and unexplained > alert.unexplained_micros:
        reasons.append(f"${Decimal(alert.unexplained_micros) / 1_000_000} a day")
    if reasons:
        models = [(c.model, c.explained.unexplained) for c in result.comparisons]
        out.append(_drift(result, UNEXPLAINED, unexplained, " and ".join(reasons), models))
    outside = total.reported.outside_cost_micros
    if alert.outside_micros is not None and outside > alert.outside_micros:
        models = [(c.model, c.reported.outside_cost_micros) for c in result.comparisons]
        threshold = f"${Decimal(alert.outside_micros) / 1_000_000} a day"
        out.append(_drift(result, OUTSIDE, outside, threshold, models))
    return out


def _drift(
    result: DayResult, kind: str, amount: int, threshold: str, models: list[tuple[str, int]]
) -> Drift:
    total = result.total
    return Drift(
        result.provider,
        result.day,
        kind,
        amount,
        total.reported.cost_micros,
        total.gateway.cost_micros,
        total.capture_rate,
        threshold,
        tuple((m, v) for m, v in models if v),
    )
