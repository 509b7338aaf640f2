"""The spend page's reconciliation view (admins only) as values: a query string in, the
GetReconciliation request, the day blocks the template shows and the CSV out. Pure (no Redis,
no clock: `today` is passed).

    /ui/reconciliation?since=2026-12-01&until=2026-12-08&provider=openai
    /ui/reconciliation.csv?<the same query>

`since` / `until` are UTC dates, `until` exclusive (default: the 7 days before today, the days
the schedule reconciles); `provider` (repeat it) keeps only those configured providers. The
numbers are GetReconciliation's (`admin/recon_api.reconciled`, `day_pb`), the CSV is
`gatewayctl reconcile --format csv`'s (`admin/recon_output`), and a day is highlighted when the
drift alert itself would fire for it (`reconcile/results.drifts`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlencode

from gateway_extproc.admin._generated.gateway.admin.v1 import admin_pb2 as pb
from gateway_extproc.admin.recon_api import day_pb
from gateway_extproc.admin.recon_output import TOKEN_KINDS, records, render_reconciliation
from gateway_extproc.catalog.pricing import format_usd
from gateway_extproc.reconcile.results import DayResult, drifts
from gateway_extproc.reconcile.settings import AlertThresholds
from gateway_extproc.spend.query import QueryError

PATH = "/ui/reconciliation"
DEFAULT_DAYS = 7
MAX_DAYS = 92  # one page, one quarter at most
MAX_PROVIDERS = 10
# The table's money columns, as recon_output's records name them.
MONEY = ("gateway_usd", "provider_usd")
PARTS = ("outside_usd", "estimates_usd", "rounding_usd", "unexplained_usd")


@dataclasses.dataclass(frozen=True)
class ReconQuery:
    since: dt.date
    until: dt.date  # exclusive
    providers: tuple[str, ...] = ()

    def params(self) -> list[tuple[str, str]]:
        out = [("since", self.since.isoformat()), ("until", self.until.isoformat())]
        return out + [("provider", p) for p in self.providers]

    def link(self, path: str = PATH) -> str:
        return f"{path}?{urlencode(self.params())}"

    def request(self) -> pb.GetReconciliationRequest:
        out = pb.GetReconciliationRequest(providers=list(self.providers))
        out.dates.since, out.dates.until = self.since.isoformat(), self.until.isoformat()
        return out

    @property
    def last(self) -> dt.date:
        return self.until - dt.timedelta(days=1)


def parse_query(params: Iterable[tuple[str, str]], today: dt.date) -> ReconQuery:
    """Raises QueryError naming the parameter at fault."""
    dates: dict[str, dt.date] = {}
    providers: list[str] = []
    for key, value in params:
        if key in ("since", "until"):
            if value == "":  # the page's own form sends its empty date fields
                continue
            try:
                dates[key] = dt.date.fromisoformat(value)
            except ValueError:
                raise QueryError(f"{key}: a date YYYY-MM-DD (got {value!r})") from None
        elif key == "provider":
            if value and value not in providers:
                providers.append(value)
        else:
            raise QueryError(f"{key}: unknown parameter (since, until, provider)")
    if ("since" in dates) != ("until" in dates):
        raise QueryError("since and until go together (until is exclusive)")
    since = dates.get("since", today - dt.timedelta(days=DEFAULT_DAYS))
    until = dates.get("until", today)
    if until <= since:
        raise QueryError(f"until {until} must be after since {since}")
    if (until - since).days > MAX_DAYS:
        raise QueryError(f"at most {MAX_DAYS} days at a time")
    if len(providers) > MAX_PROVIDERS:
        raise QueryError(f"at most {MAX_PROVIDERS} providers")
    return ReconQuery(since, until, tuple(providers))


@dataclasses.dataclass(frozen=True)
class DayBlock:
    """One provider's UTC day: its models, then its total (model `*`), or never reconciled."""

    provider: str
    day: str
    reconciled_at: str | None  # "2026-12-07 02:31 UTC"; None: never reconciled
    rows: list[list[str]]  # cells (ROW_HEADERS), the models then the total
    drifts: list[str]  # the alert thresholds the day crosses, for people; []: none

    @property
    def over(self) -> bool:
        return bool(self.drifts)


ROW_HEADERS = (
    "model",
    "gateway",
    "provider",
    "capture",
    "outside",
    "estimates",
    "rounding",
    "unexplained",
    *(f"{kind.replace('_', ' ')} tokens" for kind in TOKEN_KINDS),
)


def _dollars(usd: str) -> str:
    """recon_output's USD text with its sign before the dollar sign: `-$0.001500`."""
    return f"-${usd[1:]}" if usd.startswith("-") else f"${usd}"


def cells(record: dict[str, Any]) -> list[str]:
    """A recon_output record as the table shows it: dollars, the capture rate, then each token
    kind as `gateway / provider` (and what the provider counted outside the gateway)."""
    out = [str(record["model"])]
    out += [_dollars(record[k]) for k in MONEY]
    out.append(record["capture_rate"] or "-")
    out += [_dollars(record[k]) for k in PARTS]
    for kind in TOKEN_KINDS:
        gateway = record[f"gateway_{kind}_tokens"]
        provider = record[f"provider_{kind}_tokens"]
        outside = record[f"outside_{kind}_tokens"]
        text = f"{gateway:,} / {provider:,}"
        out.append(f"{text} (+{outside:,} outside)" if outside else text)
    return out


def thresholds(alert: AlertThresholds) -> str:
    """The drift alert's thresholds, for people ("" when none is set)."""
    out = []
    if alert.unexplained_pct is not None:
        out.append(f"unexplained above {alert.unexplained_pct} % of the provider's bill")
    if alert.unexplained_micros is not None:
        out.append(f"unexplained above ${format_usd(alert.unexplained_micros)} a day")
    if alert.outside_micros is not None:
        out.append(f"spend outside the gateway above ${format_usd(alert.outside_micros)} a day")
    return ", ".join(out)


def _stamp(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def blocks(
    results: Sequence[DayResult],
    missing: Sequence[tuple[str, dt.date]],
    alert: AlertThresholds,
) -> list[DayBlock]:
    """Every provider and day asked for, by day then provider: reconciled or said not to be."""
    out = []
    for result in results:
        found = [
            f"{d.kind} ${format_usd(d.amount_micros)} over {d.threshold}"
            for d in drifts(result, alert)
        ]
        rows = [cells(r) for r in records([day_pb(result)])]
        out.append(
            DayBlock(
                result.provider,
                result.day.isoformat(),
                _stamp(result.reconciled_at),
                rows,
                found,
            )
        )
    out += [DayBlock(p, d.isoformat(), None, [], []) for p, d in missing]
    return sorted(out, key=lambda b: (b.day, b.provider))


def recon_csv(results: Sequence[DayResult]) -> str:
    """`gatewayctl reconcile --format csv` of these results, byte for byte."""
    return render_reconciliation([day_pb(r) for r in results], [], "csv") + "\n"
