"""Redis plumbing shared by the budget store, the admin API's overrides and the spend reader:
script sources (common.lua prepended), reply decoding, and errors as BudgetStoreError."""

from __future__ import annotations

import contextlib
import importlib.resources
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from redis.exceptions import RedisClusterException, RedisError

from gateway_extproc.budgets.results import AlertCrossing, BudgetStoreError


def script_source(name: str) -> str:
    lua = importlib.resources.files("gateway_extproc.budgets").joinpath("lua")
    common = lua.joinpath("common.lua").read_text(encoding="utf-8")
    return common + "\n" + lua.joinpath(f"{name}.lua").read_text(encoding="utf-8")


def ms(now: float) -> int:
    return math.floor(now * 1000)


def text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def decoded(record: Mapping[Any, Any]) -> dict[str, str]:
    return {text(k): text(v) for k, v in record.items()}


@contextlib.contextmanager
def redis_errors(operation: str) -> Iterator[None]:
    try:
        yield
    except (RedisError, RedisClusterException, OSError) as exc:
        raise BudgetStoreError(f"budget {operation} failed: {type(exc).__name__}: {exc}") from exc


def crossings(record: Mapping[str, str], flat: Sequence[Any]) -> tuple[AlertCrossing, ...]:
    """Script crossings (charge index, percent, spent after) labelled from the record."""
    out = []
    for j in range(0, len(flat), 3):
        i = int(flat[j])
        out.append(
            AlertCrossing(
                budget=record[f"b:{i}"],
                scope_value=record[f"s:{i}"],
                window_id=record[f"w:{i}"],
                threshold_percent=int(flat[j + 1]),
                spent_micros=int(flat[j + 2]),
                limit_micros=int(record[f"l:{i}"]),
            )
        )
    return tuple(out)
