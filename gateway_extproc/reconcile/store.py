"""A pulled day's provider rows, kept beside the spend rollups in the budget store's Redis.

    P:{T}:recon:<provider>:<YYYY-MM-DD>   JSON list of rows (rows.ProviderRow.to_json)

One SET with its TTL (the rollups' retention) replaces the day whole: pulling a day twice stores
the same value, never a sum of both pulls.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson

from gateway_extproc.reconcile.rows import ProviderRow


def day_key(base: str, provider: str, day: dt.date) -> str:
    return f"{base}:recon:{provider}:{day.isoformat()}"


def encode(rows: list[ProviderRow]) -> bytes:
    return orjson.dumps([row.to_json() for row in rows], option=orjson.OPT_SORT_KEYS)


def decode(raw: bytes | str | None) -> list[ProviderRow] | None:
    if raw is None:
        return None
    return [ProviderRow.from_json(doc) for doc in orjson.loads(raw)]


async def save_day(
    client: Any, base: str, provider: str, day: dt.date, rows: list[ProviderRow], ttl_s: int
) -> None:
    await client.set(day_key(base, provider, day), encode(rows), ex=ttl_s)


async def load_day(client: Any, base: str, provider: str, day: dt.date) -> list[ProviderRow] | None:
    """The stored rows of a day; None when the day was never pulled."""
    return decode(await client.get(day_key(base, provider, day)))
