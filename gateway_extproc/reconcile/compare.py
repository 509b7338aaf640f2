"""Gateway spend vs a provider's bill, per provider, UTC day and model. Pure; integers only.

The gateway side is the spend rollups (spend/rollup.py: the served catalog model and provider of
every request, tokens by kind, `cost_micros` and its estimated part `estimated_cost_micros`),
grouped with `spend.query.aggregate`. The provider side is its reports' rows (rows.py), models
mapped to catalog names by the caller's `canonical` (the catalog's alias lookup), split into the
gateway's own projects / keys and the rest.

The difference (gateway - provider, micro-dollars) is explained, in this order, by:

1. `outside`: provider spend in projects / keys the gateway never served (leaked keys, other
   tools) - the gateway cannot have seen it (negative: it lowers the gateway's side);
2. `estimates`: endings the gateway could only bound (cut streams, no usage reported) were charged
   their upper bound; of what remains, a positive part up to `estimated_cost_micros` is that
   over-charge;
3. `rounding`: the gateway rounds each request to the micro-dollar (half up), the provider's total
   is rounded once: at most half a micro-dollar per gateway request, plus one;

and the rest is `unexplained` (a price the catalog missed, a dropped report, a metering bug).
The capture rate is gateway / provider dollars, as a decimal string to 0.1 % (None when the
provider billed nothing).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from fractions import Fraction

from gateway_extproc.reconcile.rows import ProviderRow, Tokens
from gateway_extproc.reconcile.settings import ProviderReports
from gateway_extproc.spend.query import Dimension, SpendRow, aggregate

# Providers whose usage report shows cache writes inside input (rows.Tokens.folded).
FOLDS_CACHE_WRITES = frozenset({"openai"})


@dataclasses.dataclass(frozen=True, slots=True)
class GatewaySide:
    tokens: Tokens = dataclasses.field(default_factory=Tokens)
    requests: int = 0
    cost_micros: int = 0
    estimated_cost_micros: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class ProviderSide:
    tokens: Tokens = dataclasses.field(default_factory=Tokens)  # the gateway's projects / keys only
    requests: int | None = 0
    cost_micros: int = 0  # everything the provider billed for the model that day
    # projects / keys the gateway never served
    outside_tokens: Tokens = dataclasses.field(default_factory=Tokens)
    outside_cost_micros: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Explained:
    outside: int = 0
    estimates: int = 0
    rounding: int = 0
    unexplained: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Comparison:
    provider: str
    day: dt.date
    model: str
    gateway: GatewaySide
    reported: ProviderSide
    difference_micros: int  # gateway - provider
    capture_rate: str | None  # "100.0 %"
    explained: Explained

    @property
    def token_differences(self) -> dict[str, int]:
        """Gateway - provider (the gateway's projects / keys), by kind."""
        g, p = self.gateway.tokens.as_dict(), self.reported.tokens.as_dict()
        return {kind: g[kind] - p[kind] for kind in g}


def capture_rate(gateway_micros: int, provider_micros: int) -> str | None:
    """gateway / provider as a percentage with one decimal, rounded half up; None for /0."""
    if provider_micros <= 0:
        return None
    tenths = Fraction(gateway_micros * 1000, provider_micros)
    rounded = int(tenths + Fraction(1, 2)) if tenths >= 0 else -int(-tenths + Fraction(1, 2))
    sign = "-" if rounded < 0 else ""
    whole, tenth = divmod(abs(rounded), 10)
    return f"{sign}{whole}.{tenth} %"


def explain(difference: int, outside: int, estimated: int, requests: int) -> Explained:
    """Split `difference` (gateway - provider) into its explained parts and the rest."""
    rest = difference + outside  # outside spend lowered the gateway's side by `outside`
    estimates = min(rest, estimated) if rest > 0 and estimated > 0 else 0
    rest -= estimates
    bound = (requests + 1) // 2 + 1
    rounding = rest if abs(rest) <= bound else 0
    return Explained(-outside, estimates, rounding, rest - rounding)


def gateway_sides(
    days: Mapping[dt.date, Mapping[str, str]], provider: str
) -> dict[tuple[dt.date, str], GatewaySide]:
    """The rollups of `days` (raw day hashes, as spend_reader reads them) for `provider`, per
    (day, catalog model)."""
    rows: Sequence[SpendRow] = aggregate(
        days,
        [Dimension("day"), Dimension("model")],
        [(Dimension("provider"), provider)],
    )
    out: dict[tuple[dt.date, str], GatewaySide] = {}
    for row in rows:
        day, model = row.key
        t = row.totals
        tokens = Tokens(
            input=t["input_tokens"],
            cached_input=t["cached_input_tokens"],
            cache_write=t["cache_write_input_tokens"],
            cache_write_1h=t["cache_write_1h_input_tokens"],
            output=t["output_tokens"],
        )
        out[(dt.date.fromisoformat(day), model)] = GatewaySide(
            tokens, t["requests"], t["cost_micros"], t["estimated_cost_micros"]
        )
    return out


def provider_sides(
    rows: Iterable[ProviderRow], settings: ProviderReports, canonical: Callable[[str], str]
) -> dict[tuple[dt.date, str], ProviderSide]:
    """The provider's rows per (day, catalog model), split into the gateway's and the rest."""
    acc: dict[tuple[dt.date, str], dict[str, object]] = {}
    for row in rows:
        key = (row.day, canonical(row.model))
        side = acc.setdefault(
            key,
            {"tokens": Tokens(), "requests": 0, "cost": 0, "out_tokens": Tokens(), "out_cost": 0},
        )
        shares = row.keys or ()
        for share in shares:
            if settings.is_gateways(row.project, share.api_key_id):
                side["tokens"] = _tokens(side["tokens"]) + share.tokens
                side["requests"] = _sum_requests(side["requests"], share.requests)
            else:
                side["out_tokens"] = _tokens(side["out_tokens"]) + share.tokens
        side["cost"] = _int(side["cost"]) + row.cost_micros
        if row.project not in settings.projects:
            side["out_cost"] = _int(side["out_cost"]) + row.cost_micros
    return {
        key: ProviderSide(
            _tokens(v["tokens"]),
            _requests(v["requests"]),
            _int(v["cost"]),
            _tokens(v["out_tokens"]),
            _int(v["out_cost"]),
        )
        for key, v in acc.items()
    }


def _tokens(value: object) -> Tokens:
    assert isinstance(value, Tokens)
    return value


def _int(value: object) -> int:
    assert isinstance(value, int)
    return value


def _requests(value: object) -> int | None:
    assert value is None or isinstance(value, int)
    return value


def _sum_requests(a: object, b: int | None) -> int | None:
    return None if a is None or b is None else _int(a) + b


def compare(
    gateway: Mapping[tuple[dt.date, str], GatewaySide],
    reported: Mapping[tuple[dt.date, str], ProviderSide],
    provider: str,
) -> list[Comparison]:
    """One comparison per (day, model) either side has, sorted by day then model."""
    out = []
    for day, model in sorted(set(gateway) | set(reported)):
        g = gateway.get((day, model), GatewaySide())
        p = reported.get((day, model), ProviderSide())
        if provider in FOLDS_CACHE_WRITES:
            g = dataclasses.replace(g, tokens=g.tokens.folded())
        difference = g.cost_micros - p.cost_micros
        out.append(
            Comparison(
                provider=provider,
                day=day,
                model=model,
                gateway=g,
                reported=p,
                difference_micros=difference,
                capture_rate=capture_rate(g.cost_micros, p.cost_micros),
                explained=explain(
                    difference, p.outside_cost_micros, g.estimated_cost_micros, g.requests
                ),
            )
        )
    return out


def reconcile_day(
    days: Mapping[dt.date, Mapping[str, str]],
    rows: Iterable[ProviderRow],
    settings: ProviderReports,
    canonical: Callable[[str], str],
) -> list[Comparison]:
    """The whole comparison for one provider: rollup day hashes and its pulled rows in."""
    return compare(
        gateway_sides(days, settings.provider),
        provider_sides(rows, settings, canonical),
        settings.provider,
    )


def totals(comparisons: Iterable[Comparison]) -> Comparison | None:
    """The comparisons of one provider and day summed (model `*`); None when there are none."""
    items = list(comparisons)
    if not items:
        return None
    g = GatewaySide(
        sum((c.gateway.tokens for c in items), Tokens()),
        sum(c.gateway.requests for c in items),
        sum(c.gateway.cost_micros for c in items),
        sum(c.gateway.estimated_cost_micros for c in items),
    )
    requests: int | None = 0
    for c in items:
        requests = _sum_requests(requests, c.reported.requests)
    p = ProviderSide(
        sum((c.reported.tokens for c in items), Tokens()),
        requests,
        sum(c.reported.cost_micros for c in items),
        sum((c.reported.outside_tokens for c in items), Tokens()),
        sum(c.reported.outside_cost_micros for c in items),
    )
    e = Explained(
        *(
            sum(getattr(c.explained, f) for c in items)
            for f in ("outside", "estimates", "rounding", "unexplained")
        )
    )
    first = items[0]
    return Comparison(
        first.provider,
        first.day,
        "*",
        g,
        p,
        g.cost_micros - p.cost_micros,
        capture_rate(g.cost_micros, p.cost_micros),
        e,
    )
