"""Admin changes to budgets in Redis: temporary limit overrides and one-off top-ups.

Both live where the reserve script reads them in the same call, so a change applies to the very
next request, atomically with its reservation:

- an override is a hash `P:{T}:ov:<budget>:<scope value>` {limit, expires, reason, by, at},
  expiring at its `expires` (its TTL), listed in the index zset `P:{T}:overrides`;
- a top-up is a credit in field `tu` of the budget's calendar counter for the current window:
  the reserve adds it to the limit, and it ends with the window (rolling windows have no
  "current window" to credit: use an override).
"""

from __future__ import annotations

import dataclasses
import math

from gateway_extproc.budgets import windows
from gateway_extproc.budgets.model import BudgetConfig, CalendarWindow
from gateway_extproc.budgets.scripts import decoded, redis_errors, script_source, text
from gateway_extproc.budgets.store import BudgetStore

SEP = "\x1f"  # between budget and scope value in the override index


@dataclasses.dataclass(frozen=True, slots=True)
class Override:
    budget: str
    scope_value: str
    limit_micros: int
    expires_at: float  # unix time
    reason: str
    set_by: str
    set_at: float


@dataclasses.dataclass(frozen=True, slots=True)
class CounterState:
    """One budget's counter now, with whatever the admin API changed."""

    spent_micros: int
    held_micros: int
    top_up_micros: int  # credit for the current window (calendar only)
    override: Override | None

    def limit_micros(self, budget: BudgetConfig) -> int:
        base = self.override.limit_micros if self.override else budget.limit_micros
        return base + self.top_up_micros


class Overrides:
    def __init__(self, store: BudgetStore) -> None:
        self.store = store
        self._index = f"{store.key_base}:overrides"
        self._admin = store.client.register_script(script_source("admin"))

    async def set(
        self,
        budget: BudgetConfig,
        scope_value: str,
        limit_micros: int,
        expires_at: float,
        reason: str,
        set_by: str,
        now: float,
    ) -> int | None:
        """Put an override in force until `expires_at`; returns the limit it replaced, if any."""
        if limit_micros < 0 or expires_at <= now:
            raise ValueError("an override needs a limit >= 0 and an expiry in the future")
        keys = [self.store.override_key(budget.name, scope_value), self._index]
        args: list[str | int] = [
            "override_set",
            f"{budget.name}{SEP}{scope_value}",
            limit_micros,
            math.floor(expires_at * 1000),
            math.floor(now * 1000),
            reason,
            set_by,
        ]
        with redis_errors("override"):
            previous = int(await self._admin(keys=keys, args=args))
        return None if previous < 0 else previous

    async def remove(self, budget: str, scope_value: str) -> bool:
        keys = [self.store.override_key(budget, scope_value), self._index]
        with redis_errors("override"):
            removed = await self._admin(
                keys=keys, args=["override_remove", f"{budget}{SEP}{scope_value}"]
            )
        return int(removed) == 1

    async def top_up(
        self, budget: BudgetConfig, scope_value: str, amount_micros: int, now: float
    ) -> int:
        """Credit `amount_micros` to the budget's current calendar window; returns the window's
        total credit."""
        window = budget.window
        if not isinstance(window, CalendarWindow):
            raise ValueError("top-ups apply to calendar windows only")
        if amount_micros <= 0:
            raise ValueError("a top-up must be positive")
        key, _ = self.store.counter_key(budget, scope_value, now)
        end_ms = windows.calendar_span(window, now).end * 1000 + self.store.counter_grace_ms
        with redis_errors("top-up"):
            credit = await self._admin(
                keys=[key], args=["top_up", amount_micros, end_ms, math.floor(now * 1000)]
            )
        return int(credit)

    async def in_force(self, now: float) -> list[Override]:
        """Every override in force, by budget and scope value."""
        with redis_errors("overrides"):
            members = await self.store.client.zrangebyscore(
                self._index, math.floor(now * 1000) + 1, "+inf"
            )
            out = []
            for member in sorted(text(m) for m in members):
                budget, _, scope_value = member.partition(SEP)
                found = await self.get(budget, scope_value, now)
                if found is not None:
                    out.append(found)
        return out

    async def get(self, budget: str, scope_value: str, now: float) -> Override | None:
        with redis_errors("overrides"):
            doc = decoded(
                await self.store.client.hgetall(self.store.override_key(budget, scope_value))
            )
        return _override(budget, scope_value, doc, now)

    async def counter(self, budget: BudgetConfig, scope_value: str, now: float) -> CounterState:
        """Spend, holds, top-up and override of one budget and scope value at `now`."""
        key, _ = self.store.counter_key(budget, scope_value, now)
        status = await self.store.status(budget, scope_value, now)
        with redis_errors("status"):
            credit = await self.store.client.hget(key, "tu")
        calendar = isinstance(budget.window, CalendarWindow)
        return CounterState(
            spent_micros=status.spent_micros,
            held_micros=status.held_micros,
            top_up_micros=int(text(credit)) if calendar and credit is not None else 0,
            override=await self.get(budget.name, scope_value, now),
        )

    async def scope_values(self, budget: BudgetConfig, now: float) -> list[str]:
        """The scope values with a counter in the current window (SCAN of this budget's keys)."""
        key, _ = self.store.counter_key(budget, "\x00", now)
        prefix, _, suffix = key.partition("\x00")
        found: set[str] = set()
        with redis_errors("budgets"):
            async for raw in self.store.client.scan_iter(match=_glob(prefix) + "*", count=500):
                name = text(raw)
                if name.endswith(suffix):
                    found.add(name[len(prefix) : len(name) - len(suffix)])
        return sorted(found)


def _glob(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def _override(budget: str, scope_value: str, doc: dict[str, str], now: float) -> Override | None:
    if "limit" not in doc or int(doc["expires"]) <= now * 1000:
        return None
    return Override(
        budget=budget,
        scope_value=scope_value,
        limit_micros=int(doc["limit"]),
        expires_at=int(doc["expires"]) / 1000,
        reason=doc.get("reason", ""),
        set_by=doc.get("by", ""),
        set_at=int(doc.get("at", 0)) / 1000,
    )
