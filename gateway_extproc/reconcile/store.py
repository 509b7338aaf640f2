"""Reconciliation state kept beside the spend rollups in the budget store's Redis; every key
under the store's `P:{T}` base (one hash tag: Redis Cluster safe), every write with its expiry in
the same command.

    P:{T}:recon:<provider>:<YYYY-MM-DD>          the pulled rows (rows.ProviderRow.to_json)
    P:{T}:recon:result:<provider>:<YYYY-MM-DD>   the comparison (results.DayResult.to_json)
    P:{T}:recon:alerted:<provider>:<day>:<kind>  set once the day's drift of a kind was alerted
    P:{T}:recon:run:<YYYY-MM-DD>                 the scheduled run of a date: held while it runs
                                                 (expiring), then marked done

Days and results expire with the rollups of their day (`expire_at_ms`: the end of the day plus
the retention). One SET replaces a day whole: reconciling a day twice stores the latest result,
never a sum of both. Alert markers and run locks are SET NX: across every pod, one wins.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson

from gateway_extproc.reconcile.results import DayResult
from gateway_extproc.reconcile.rows import ProviderRow

DONE = b"done"


def day_key(base: str, provider: str, day: dt.date) -> str:
    return f"{base}:recon:{provider}:{day.isoformat()}"


def result_key(base: str, provider: str, day: dt.date) -> str:
    return f"{base}:recon:result:{provider}:{day.isoformat()}"


def alerted_key(base: str, provider: str, day: dt.date, kind: str) -> str:
    return f"{base}:recon:alerted:{provider}:{day.isoformat()}:{kind}"


def run_key(base: str, date: dt.date) -> str:
    return f"{base}:recon:run:{date.isoformat()}"


def encode(rows: list[ProviderRow]) -> bytes:
    return orjson.dumps([row.to_json() for row in rows], option=orjson.OPT_SORT_KEYS)


def decode(raw: bytes | str | None) -> list[ProviderRow] | None:
    if raw is None:
        return None
    return [ProviderRow.from_json(doc) for doc in orjson.loads(raw)]


async def save_day(
    client: Any, base: str, provider: str, day: dt.date, rows: list[ProviderRow], expire_ms: int
) -> None:
    """`expire_ms`: Unix ms when the day goes (spend.rollup.expire_at_ms of the day)."""
    await client.set(day_key(base, provider, day), encode(rows), pxat=expire_ms)


async def load_day(client: Any, base: str, provider: str, day: dt.date) -> list[ProviderRow] | None:
    """The stored rows of a day; None when the day was never pulled."""
    return decode(await client.get(day_key(base, provider, day)))


async def save_result(client: Any, base: str, result: DayResult, expire_ms: int) -> None:
    raw = orjson.dumps(result.to_json(), option=orjson.OPT_SORT_KEYS)
    await client.set(result_key(base, result.provider, result.day), raw, pxat=expire_ms)


async def load_results(
    client: Any, base: str, wanted: list[tuple[str, dt.date]]
) -> dict[tuple[str, dt.date], DayResult]:
    """The stored results of (provider, day) pairs; pairs never reconciled are left out."""
    if not wanted:
        return {}
    raws = await client.mget([result_key(base, p, d) for p, d in wanted])
    return {
        key: DayResult.from_json(orjson.loads(raw))
        for key, raw in zip(wanted, raws, strict=True)
        if raw is not None
    }


async def claim_alert(
    client: Any, base: str, provider: str, day: dt.date, kind: str, expire_ms: int
) -> bool:
    """True for the first caller to alert this provider's day's drift of `kind` (any pod)."""
    return bool(
        await client.set(alerted_key(base, provider, day, kind), b"1", nx=True, pxat=expire_ms)
    )


async def claim_run(client: Any, base: str, date: dt.date, hold_ms: int) -> bool:
    """True for the one pod that runs `date`'s schedule now: the run is not done and no other
    pod holds it. The hold expires after `hold_ms`, so a pod that died mid-run (or failed) is
    retried by whichever pod ticks after that."""
    return bool(await client.set(run_key(base, date), b"running", nx=True, px=hold_ms))


async def run_done(client: Any, base: str, date: dt.date, keep_ms: int) -> None:
    await client.set(run_key(base, date), DONE, px=keep_ms)


async def is_done(client: Any, base: str, date: dt.date) -> bool:
    return bool(await client.get(run_key(base, date)) == DONE)
