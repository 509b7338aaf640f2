"""What one request adds to the spend rollups, and where. Pure (no Redis, no clock).

A rollup is one Redis hash per day (in the configured rollup timezone):

    P:{T}:spend:<YYYY-MM-DD>    field "<row>|<metric>" -> integer

`<row>` is the canonical JSON of the request's dimensions (user, groups, service, static token,
served model, provider, verified attributes), `<metric>` one of `METRICS`. A billed request adds
its usage and cost; a cache hit or a refusal (outcome.py) adds one count of what happened, on the
row of the model asked for (nothing was served). A report reads the
days it covers and groups and filters the rows in Python (`query.py`), so any dimension can be
grouped by or filtered on without a hash per dimension. The settle script writes the fields
with HINCRBY and sets the day's TTL (the end of the day plus the retention) in the same call.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import zoneinfo
from collections.abc import Mapping

import orjson

from gateway_extproc.identity.model import Identity
from gateway_extproc.spend.outcome import OUTCOME_METRICS, Outcome
from gateway_extproc.tokens import Usage

# metric -> what it counts (integers; money in micro-dollars)
METRICS: Mapping[str, str] = {
    "n": "requests",
    "in": "input_tokens",
    "ci": "cached_input_tokens",
    "cw": "cache_write_input_tokens",
    "cw1h": "cache_write_1h_input_tokens",
    "out": "output_tokens",
    "rs": "reasoning_tokens",
    "c": "cost_micros",
    "ce": "estimated_cost_micros",  # the part of c that was estimated, not provider-reported
    # Requests the gateway answered itself (outcome.py): never in n, never in c.
    "h": "cache_hits",
    "hs": "cache_saved_micros",  # what the hits would have cost at the model's price
    "rg": "refused_guardrail",
    "rr": "refused_rate_limit",
    "rb": "refused_budget",
    "rp": "refused_policy",
}
DEFAULT_RETENTION_DAYS = 400


@dataclasses.dataclass(frozen=True, slots=True)
class Dimensions:
    """Who and what a request's spend is attributed to."""

    user: str | None = None
    groups: tuple[str, ...] = ()  # sorted
    service: str | None = None
    static_token: str | None = None
    model: str | None = None  # the catalog model served (after any downgrade)
    provider: str | None = None
    attributes: tuple[tuple[str, str], ...] = ()  # sorted (name, value)

    @classmethod
    def of(cls, identity: Identity | None, model: str | None, provider: str | None) -> Dimensions:
        if identity is None:
            return cls(model=model, provider=provider)
        return cls(
            user=identity.user,
            groups=tuple(sorted(identity.groups)),
            service=identity.service,
            static_token=identity.static_token,
            model=model,
            provider=provider,
            attributes=tuple(sorted(identity.attributes.items())),
        )

    def encode(self) -> str:
        doc = [
            self.user,
            list(self.groups),
            self.service,
            self.static_token,
            self.model,
            self.provider,
            [list(pair) for pair in self.attributes],
        ]
        return orjson.dumps(doc).decode()

    @classmethod
    def decode(cls, text: str) -> Dimensions:
        user, groups, service, token, model, provider, attrs = orjson.loads(text)
        return cls(
            user=user,
            groups=tuple(groups),
            service=service,
            static_token=token,
            model=model,
            provider=provider,
            attributes=tuple((str(k), str(v)) for k, v in attrs),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class UsageRecord:
    """One request as the rollups count it: billed (usage and cost, from the settle path), or
    answered by the gateway itself (`outcome`: a cache hit, a refusal; from `answered`)."""

    arrived: float  # unix time the request arrived (its day)
    dimensions: Dimensions
    usage: Usage
    cost_micros: int
    estimated: bool  # the usage was estimated (stream cut short, no provider report)
    outcome: Outcome = Outcome.BILLED
    saved_micros: int = 0  # a cache hit: what the answer would have cost

    @classmethod
    def answered(
        cls, arrived: float, dimensions: Dimensions, outcome: Outcome, saved_micros: int = 0
    ) -> UsageRecord:
        """A request the gateway answered itself: no usage, no cost."""
        if outcome is Outcome.BILLED:
            raise ValueError("a billed request is rolled up with its usage")
        return cls(arrived, dimensions, Usage(), 0, False, outcome, saved_micros)

    def metrics(self) -> list[tuple[str, int]]:
        """(metric, amount) pairs to add; zero amounts left out (they cost memory)."""
        if self.outcome is not Outcome.BILLED:
            pairs = [(OUTCOME_METRICS[self.outcome], 1)]
            if self.outcome is Outcome.CACHE_HIT:
                pairs.append(("hs", self.saved_micros))
            return [(m, v) for m, v in pairs if v]
        u = self.usage
        values = (
            ("n", 1),
            ("in", u.input_tokens),
            ("ci", u.cached_input_tokens),
            ("cw", u.cache_write_input_tokens),
            ("cw1h", u.cache_write_1h_input_tokens),
            ("out", u.output_tokens),
            ("rs", u.reasoning_tokens),
            ("c", self.cost_micros),
            ("ce", self.cost_micros if self.estimated else 0),
        )
        return [(m, v) for m, v in values if v]

    def to_json(self) -> dict[str, object]:
        """For the journal (settles owed across a restart)."""
        doc: dict[str, object] = {
            "arrived": self.arrived,
            "row": self.dimensions.encode(),
            "usage": self.usage.as_dict(),
            "cost": self.cost_micros,
            "estimated": self.estimated,
        }
        if self.outcome is not Outcome.BILLED:  # absent: billed (journals written before)
            doc["outcome"] = self.outcome.value
            doc["saved"] = self.saved_micros
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, object]) -> UsageRecord:
        usage = doc["usage"]
        assert isinstance(usage, Mapping)
        return cls(
            arrived=float(str(doc["arrived"])),
            dimensions=Dimensions.decode(str(doc["row"])),
            usage=Usage(**{str(k): int(v) for k, v in usage.items()}),
            cost_micros=int(str(doc["cost"])),
            estimated=bool(doc["estimated"]),
            outcome=Outcome(str(doc.get("outcome", Outcome.BILLED.value))),
            saved_micros=int(str(doc.get("saved", 0))),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class RollupSettings:
    timezone: str = "UTC"
    retention_days: int = DEFAULT_RETENTION_DAYS

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)


def day_of(ts: float, zone: dt.tzinfo) -> dt.date:
    return dt.datetime.fromtimestamp(ts, zone).date()


def day_start(day: dt.date, zone: dt.tzinfo) -> float:
    return dt.datetime.combine(day, dt.time(), zone).timestamp()


def day_key(base: str, day: dt.date) -> str:
    """The rollup hash of `day` under a store's key base (`P:{T}`)."""
    return f"{base}:spend:{day.isoformat()}"


def expire_at_ms(day: dt.date, settings: RollupSettings) -> int:
    """When a day's rollup is deleted: the end of the day plus the retention."""
    end = day_start(day + dt.timedelta(days=1), settings.zone)
    return int(end * 1000) + settings.retention_days * 86_400_000


@dataclasses.dataclass(frozen=True, slots=True)
class RollupDay:
    """A rollup day in the rollups' timezone: `[start, end)` in unix seconds, its expiry."""

    day: dt.date
    start: float
    end: float
    expire_at_ms: int

    @classmethod
    def of(cls, ts: float, settings: RollupSettings) -> RollupDay:
        zone = settings.zone
        day = day_of(ts, zone)
        start = day_start(day, zone)
        end = day_start(day + dt.timedelta(days=1), zone)
        return cls(day, start, end, expire_at_ms(day, settings))

    def holds(self, ts: float) -> bool:
        return self.start <= ts < self.end


def script_args(
    record: UsageRecord, settings: RollupSettings, day: RollupDay | None = None
) -> list[str | int]:
    """The trailing ARGV of a settle or record script: expiry ms, row, then metric pairs.
    `day`: the record's RollupDay when the caller has it."""
    if day is None or not day.holds(record.arrived):
        day = RollupDay.of(record.arrived, settings)
    args: list[str | int] = [day.expire_at_ms, record.dimensions.encode()]
    for metric, value in record.metrics():
        args += [metric, value]
    return args
