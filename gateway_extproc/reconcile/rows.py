"""A provider's report of one UTC day, normalised. Pure values; integers only (money in
micro-dollars).

Token kinds are the gateway's (tokens.py): `input` is uncached input, disjoint from cache reads
(`cached_input`) and writes (`cache_write` 5-minute, `cache_write_1h`); `output` includes
reasoning. OpenAI reports no cache writes apart from input: its writes stay in `input`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

KINDS = ("input", "cached_input", "cache_write", "cache_write_1h", "output")


@dataclasses.dataclass(frozen=True, slots=True)
class Tokens:
    input: int = 0
    cached_input: int = 0
    cache_write: int = 0
    cache_write_1h: int = 0
    output: int = 0

    def __add__(self, other: Tokens) -> Tokens:
        return Tokens(*(getattr(self, k) + getattr(other, k) for k in KINDS))

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in KINDS}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Tokens:
        return cls(**{k: int(doc.get(k, 0)) for k in KINDS})

    def folded(self) -> Tokens:
        """Cache writes counted as input (how OpenAI's usage report shows them)."""
        return Tokens(
            self.input + self.cache_write + self.cache_write_1h,
            self.cached_input,
            0,
            0,
            self.output,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class KeyUsage:
    """One API key's share of a row (the usage reports group by key; the cost reports do not)."""

    api_key_id: str | None
    tokens: Tokens
    requests: int | None  # None: the report does not count requests (Anthropic)


@dataclasses.dataclass(frozen=True, slots=True)
class ProviderRow:
    """What a provider reports for one day, model (as the provider names it) and project
    (OpenAI) or workspace (Anthropic; None: the Default Workspace)."""

    provider: str
    day: dt.date
    model: str
    project: str | None
    tokens: Tokens
    requests: int | None
    cost_micros: int
    keys: tuple[KeyUsage, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "day": self.day.isoformat(),
            "model": self.model,
            "project": self.project,
            "tokens": self.tokens.as_dict(),
            "requests": self.requests,
            "cost_micros": self.cost_micros,
            "keys": [
                {"api_key_id": k.api_key_id, "tokens": k.tokens.as_dict(), "requests": k.requests}
                for k in self.keys
            ],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ProviderRow:
        return cls(
            provider=str(doc["provider"]),
            day=dt.date.fromisoformat(doc["day"]),
            model=str(doc["model"]),
            project=doc["project"],
            tokens=Tokens.from_dict(doc["tokens"]),
            requests=doc["requests"],
            cost_micros=int(doc["cost_micros"]),
            keys=tuple(
                KeyUsage(k["api_key_id"], Tokens.from_dict(k["tokens"]), k["requests"])
                for k in doc["keys"]
            ),
        )


def _add_requests(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a + b


def merge(
    provider: str,
    day: dt.date,
    usage: Iterable[tuple[str, str | None, KeyUsage]],
    costs: Mapping[tuple[str, str | None], int],
) -> list[ProviderRow]:
    """Rows of one day from the usage report's (model, project, key share) entries and the cost
    report's micro-dollars per (model, project); sorted, so a day pulled twice is equal."""
    keys: dict[tuple[str, str | None], dict[str | None, KeyUsage]] = {}
    for model, project, share in usage:
        by_key = keys.setdefault((model, project), {})
        seen = by_key.get(share.api_key_id)
        if seen is not None:
            share = KeyUsage(
                share.api_key_id,
                seen.tokens + share.tokens,
                _add_requests(seen.requests, share.requests),
            )
        by_key[share.api_key_id] = share
    rows = []
    for model, project in sorted(set(keys) | set(costs), key=lambda k: (k[0], k[1] or "")):
        shares = sorted(keys.get((model, project), {}).values(), key=lambda s: s.api_key_id or "")
        tokens = sum((s.tokens for s in shares), Tokens())
        # no usage row at all (a cost without usage): the request count is unknown
        requests: int | None = 0 if shares else None
        for s in shares:
            requests = _add_requests(requests, s.requests)
        rows.append(
            ProviderRow(
                provider,
                day,
                model,
                project,
                tokens,
                requests,
                costs.get((model, project), 0),
                tuple(shares),
            )
        )
    return rows
