"""What the mock provider served, as its organisation's usage and cost reports see it. Pure.

Every billed reply of an OpenAI or Anthropic path becomes a `Served` entry (recorder.py): the UTC
day, the model as the request named it, the project (OpenAI) or workspace (Anthropic) the
presenting key belongs to, the key's id, and the tokens billed. `reports.py` serves them as the
providers' report APIs do; `Switches` are the discrepancies a test injects: a price change, a
dropped day (unseen traffic is just more `Served` entries for a key the gateway never held).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal

from gateway_extproc.mock.prices import listed, per_token

TOKEN_KINDS = (
    "input_tokens",  # uncached input, cache writes not included
    "cached_input_tokens",
    "cache_write_input_tokens",  # 5-minute writes
    "cache_write_1h_input_tokens",
    "output_tokens",  # reasoning included
)
DEFAULT_PROJECT = "proj_default"  # OpenAI: the project of a key the mock was not told about
DEFAULT_WORKSPACE = None  # Anthropic: the Default Workspace, reported as null
PROVIDERS = ("openai", "anthropic")
DEFAULT_PAGE_RESULTS = 3  # results per report page at most (a small page: pagination runs)


def key_id(provider: str, key: str | None) -> str:
    """The id a provider's reports give a key (never the key): stable, not reversible."""
    if key is None:
        return "key_anonymous" if provider == "openai" else "apikey_anonymous"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"key_{digest}" if provider == "openai" else f"apikey_{digest}"


@dataclasses.dataclass(frozen=True, slots=True)
class Served:
    provider: str  # openai | anthropic
    day: dt.date  # UTC
    model: str
    project: str | None  # OpenAI project id / Anthropic workspace id (None: Default Workspace)
    api_key_id: str
    tokens: Mapping[str, int]
    requests: int = 1


@dataclasses.dataclass(frozen=True, slots=True)
class Switches:
    """Discrepancies between what the mock served and what its reports say."""

    price_factor: Mapping[str, Decimal] = dataclasses.field(default_factory=dict)  # by provider
    prices: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict)  # by model
    dropped_days: frozenset[tuple[str, dt.date]] = frozenset()  # (provider, day) not reported
    page_results: int = DEFAULT_PAGE_RESULTS

    def rates(self, provider: str, model: str) -> dict[str, Decimal]:
        """USD per token of each kind for `model`, with the price change applied."""
        prices = self.prices.get(model) or listed(model)
        factor = self.price_factor.get(provider, Decimal(1))
        return {kind: rate * factor for kind, rate in per_token(prices).items()}


_RATE_OF = {
    "input_tokens": "input",
    "cached_input_tokens": "cached_input",
    "cache_write_input_tokens": "cache_write",
    "cache_write_1h_input_tokens": "cache_write_1h",
    "output_tokens": "output",
}


def cost_lines(entry: Served, switches: Switches) -> dict[str, Decimal]:
    """USD by token kind for one entry, exact (no rounding)."""
    rates = switches.rates(entry.provider, entry.model)
    return {kind: entry.tokens.get(kind, 0) * rates[_RATE_OF[kind]] for kind in TOKEN_KINDS}


def reported(entries: Iterable[Served], provider: str, switches: Switches) -> list[Served]:
    """The provider's entries its reports show (a dropped day shows nothing)."""
    return [
        e
        for e in entries
        if e.provider == provider and (provider, e.day) not in switches.dropped_days
    ]


Group = tuple[tuple[str, object], ...]  # (dimension, value) pairs, in the order asked


def group_of(entry: Served, dims: Sequence[str]) -> Group:
    values: dict[str, object] = {
        "model": entry.model,
        "project_id": entry.project,
        "workspace_id": entry.project,
        "api_key_id": entry.api_key_id,
    }
    return tuple((d, values.get(d)) for d in dims)


def usage_by_group(
    entries: Iterable[Served], day: dt.date, dims: Sequence[str]
) -> dict[Group, dict[str, int]]:
    """Tokens and requests of `day` summed per group of `dims`, in first-seen order."""
    out: dict[Group, dict[str, int]] = {}
    for e in entries:
        if e.day != day:
            continue
        totals = out.setdefault(group_of(e, dims), dict.fromkeys((*TOKEN_KINDS, "requests"), 0))
        for kind in TOKEN_KINDS:
            totals[kind] += e.tokens.get(kind, 0)
        totals["requests"] += e.requests
    return out


def days_between(start: dt.date, end: dt.date) -> list[dt.date]:
    """Every day in [start, end)."""
    return [start + dt.timedelta(days=i) for i in range((end - start).days)]


@dataclasses.dataclass(frozen=True, slots=True)
class Bucket:
    day: dt.date
    results: list[dict[str, object]]


def paginate(
    buckets: Sequence[Bucket], limit: int, page_results: int, cursor: tuple[int, int]
) -> tuple[list[Bucket], tuple[int, int] | None]:
    """One page from `cursor` (bucket index, result index): at most `limit` buckets and
    `page_results` results (an empty bucket counts as one); a bucket whose results do not all fit
    continues on the next page. Returns the page and the next cursor (None: the last page)."""
    b, r = cursor
    page: list[Bucket] = []
    room = max(page_results, 1)
    while b < len(buckets) and len(page) < limit and room > 0:
        results = buckets[b].results
        taken = results[r : r + room]
        page.append(Bucket(buckets[b].day, taken))
        room -= max(len(taken), 1)
        r += len(taken)
        if r >= len(results):
            b, r = b + 1, 0
    return page, ((b, r) if b < len(buckets) else None)


def key_projects(pairs: Iterable[str]) -> dict[str, str]:
    """`KEY=PROJECT` settings as {key: project}."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, project = pair.partition("=")
        if not sep or not key or not project:
            raise ValueError(f"{pair!r}: must be KEY=PROJECT")
        out[key] = project
    return out
