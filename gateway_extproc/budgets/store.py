"""The budget store: reserve -> settle / release on Redis, atomically, in Lua (see `lua/`).

Thin adapter: window ids, keys and script arguments are derived here from `now` (the caller's
clock), every decision is made inside one script call. Every Redis failure raises
`BudgetStoreError`; deadlines are the caller's (wrap a call in `asyncio.wait_for`: each mutation
is one script, so a cancelled call either happened whole or not at all). A reserve that timed out
may still have run: retry it with the same request id (a replay changes nothing and says so), or
`release` the id (harmless if it never reserved); otherwise its lease expires and `reap` charges it.

The keys (one hash slot, `{T}`) are keys.py's; the records of this process's reservations are
remembered for their settle or release (recent.py).

TTLs are set by the script that writes the key: calendar counters live until their window ends
plus `counter_grace_s`; rolling counters `duration + counter_grace_s` after their last write;
rate-limit counters one window (plus a bucket) after their last request: they are disposable.
A RESERVED reservation and the lease set have no TTL at all (a TTL could lapse during an outage
and leak the hold into its counter forever): only settle, release or reap end a reservation. After
that its record lives `record_retention_s` (long enough for retries to find it and do nothing), or
`expired_retention_s` when the reaper ended it, so that its sidecar's late settle or release
corrects the reaper's charge to the real cost exactly once.

Redis Cluster: one hash tag for all budget state keeps a multi-budget reserve a single atomic
script (no CROSSSLOT, no cross-slot compensation protocol), at the cost of putting all budget
state on one shard. The numbers make that acceptable. Measured on a 2-core VM with three budgets
per request: ~90 us of Redis time per script call, two calls per request (reserve, settle), so
one shard carries ~5,000 LLM requests/s - a 10,000-person company where everyone sends a request
every 10 s needs 1,000/s, and LLM calls last seconds, so that is far beyond real traffic. Memory:
~1.2 KB per reservation kept `record_retention_s` (600 s x 1,000 req/s ~ 0.7 GB at that extreme:
lower the retention there), ~150 bytes per calendar counter (10,000 users x 5 budgets ~ 10 MB)
and ~1 KB per 24-bucket rolling counter. If one shard ever is not enough, give tenants separate
stores (prefix and hash tag): each keeps its own atomicity on its own shard.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from gateway_extproc.budgets import windows
from gateway_extproc.budgets.facts import ReservationFacts
from gateway_extproc.budgets.keys import StoreKeys
from gateway_extproc.budgets.model import BudgetConfig, CalendarWindow, RollingWindow
from gateway_extproc.budgets.pipe import Script, ScriptPipe
from gateway_extproc.budgets.ratelimits import wire
from gateway_extproc.budgets.ratelimits.model import RateLimitCharge, RateLimitState
from gateway_extproc.budgets.recent import RecentReservations
from gateway_extproc.budgets.results import (
    AlertCrossing,
    BudgetStatus,
    BudgetStoreError,
    Charge,
    Reaped,
    ReapResult,
    ReservationState,
    ReserveResult,
    SettleResult,
)
from gateway_extproc.budgets.scripts import (
    crossings,
    decoded,
    ms,
    redis_errors,
    script_source,
    text,
)
from gateway_extproc.budgets.wire import budget_states, charge_args
from gateway_extproc.spend.rollup import (
    RollupSettings,
    UsageRecord,
    day_key,
    day_of,
    expire_at_ms,
    script_args,
)

SCRIPTS = ("reserve", "settle", "release", "checkpoint", "reap", "record", "peek")


class BudgetStore(StoreKeys):
    """Budget counters and reservations in Redis (standalone `Redis` or `RedisCluster`)."""

    def __init__(
        self,
        client: Redis | RedisCluster,
        prefix: str = "llmgw",
        *,
        hash_tag: str = "gwb",
        counter_grace_s: int = 7 * 86_400,
        record_retention_s: int = 600,
        expired_retention_s: int = 86_400,
        rollups: RollupSettings | None = None,
        pipe: ScriptPipe | None = None,
    ) -> None:
        """`pipe`: the scripts' lean path to a standalone Redis (pipe.py; `aclose` closes it),
        else every call goes through `client`."""
        super().__init__(prefix, hash_tag, rollups)
        if counter_grace_s < 0 or record_retention_s <= 0:
            raise ValueError("counter_grace_s must be >= 0 and record_retention_s > 0")
        self._client = client
        self._recent = RecentReservations(client, self)
        self._grace_ms = counter_grace_s * 1000
        self._retention_ms = record_retention_s * 1000
        # A reaped reservation's record lives long enough for its sidecar's late settle or
        # release (retried until Redis answers) to find it and correct the reaper's charge.
        self._expired_retention_ms = max(expired_retention_s, record_retention_s) * 1000
        self._sources = {name: script_source(name) for name in SCRIPTS}
        self._pipe = pipe

        def script(name: str) -> Script:
            source = self._sources[name]
            return Script(source, pipe, client.register_script(source))

        self._reserve = script("reserve")
        self._settle = script("settle")
        self._release = script("release")
        self._checkpoint = script("checkpoint")
        self._reap = script("reap")
        self._record_usage = script("record")
        self._peek = script("peek")

    @property
    def client(self) -> Redis | RedisCluster:
        return self._client

    async def aclose(self) -> None:
        """Close the script pipe, if any (the client is its owner's to close)."""
        if self._pipe is not None:
            await self._pipe.aclose()

    @property
    def counter_grace_ms(self) -> int:
        return self._grace_ms

    async def load_scripts(self) -> None:
        """Connect and load every script (on a cluster: on every primary). Call once at start-up.

        Optional - a script missing on a node is loaded on its first NOSCRIPT - but it fails fast
        on a bad Redis, and a `RedisCluster` client must discover its nodes before concurrent use
        (redis-py 8 can fail connections that race its lazy first initialisation).
        """
        with redis_errors("load_scripts"):
            if isinstance(self._client, RedisCluster):
                await self._client.initialize()
            for source in self._sources.values():
                await self._client.script_load(source)

    async def warm(self, connections: int) -> None:
        """Open up to `connections` pooled connections now (concurrent PINGs), so that a burst
        of requests finds them ready instead of racing to connect."""
        with redis_errors("warm"):
            if isinstance(self._client, RedisCluster):
                await self._client.ping()
                return
            await asyncio.gather(*(self._client.ping() for _ in range(max(connections, 1))))

    # -- reserve ------------------------------------------------------------------------------

    async def reserve(
        self,
        request_id: str,
        charges: Sequence[Charge],
        lease_s: float,
        now: float,
        limits: Sequence[RateLimitCharge] = (),
        facts: ReservationFacts | None = None,
    ) -> ReserveResult:
        """Hold every charge's estimate and count the request in every rate limit, all or
        nothing; replaying a request id changes nothing. `facts`: kept in the record, for the
        reaper to audit and roll up the request should nobody settle it."""
        if not request_id:
            raise ValueError("request_id must be non-empty")
        if lease_s <= 0:
            raise ValueError("lease_s must be > 0")
        if not charges and not limits:  # nothing applies: admitted, nothing to hold or settle
            return ReserveResult(True, False, ReservationState.UNKNOWN, ())
        now_ms = ms(now)
        keys = [self.record_key(request_id), self.leases_key]
        args: list[str | int] = [request_id, now_ms, ms(now + lease_s), self._retention_ms]
        args.append(len(charges))
        window_ids: list[str] = []
        for charge in charges:
            if charge.estimate_micros < 0 or charge.limit_micros < 0:
                raise ValueError(f"negative amount in {charge!r}")
            key, window_id = self.counter_key(charge.budget, charge.scope_value, now)
            if key in keys:
                raise ValueError(f"two charges for {charge.budget.name} {charge.scope_value!r}")
            keys.append(key)
            window_ids.append(window_id)
            window = charge.budget.window
            end = self.calendar_span(window, now).end if isinstance(window, CalendarWindow) else 0
            args.extend(charge_args(charge, window_id, end, now_ms, self._grace_ms))
        keys += [self.override_key(c.budget.name, c.scope_value) for c in charges]
        rate_keys = [self.rate_limit_key(c) for c in limits]
        if len(set(rate_keys)) != len(rate_keys):
            raise ValueError("two charges for one rate-limit counter")
        keys += rate_keys
        args.append(len(limits))
        for limit in limits:
            args.extend(wire.script_args(limit))
        encoded = None if facts is None else facts.encode()
        if encoded is not None:
            args.append(encoded)
        with redis_errors("reserve"):
            reply = await self._reserve(keys=keys, args=args)
        status, state = text(reply[0]), text(reply[1])
        budgets = budget_states(charges, window_ids, reply)
        first = 2 + 5 * len(charges)
        rates = tuple(
            wire.state(limit, reply[first + wire.REPLY * j : first + wire.REPLY * (j + 1)])
            for j, limit in enumerate(limits)
        )
        reservation = ReservationState(state) if state else ReservationState.UNKNOWN
        if reservation is ReservationState.RESERVED and status != "replay":
            held = [*keys[: 2 + len(charges)], *rate_keys]
            self._recent.remember(request_id, held, charges, window_ids, len(limits), encoded)
        return ReserveResult(
            admitted=reservation is ReservationState.RESERVED,
            replayed=status == "replay",
            state=reservation,
            budgets=budgets,
            rate_limits=rates,
        )

    async def peek_rate_limits(
        self, limits: Sequence[RateLimitCharge], now: float
    ) -> tuple[RateLimitState, ...]:
        """Whether one more request fits each rate limit now; counts nothing (read only)."""
        if not limits:
            return ()
        args: list[str | int] = [ms(now), len(limits)]
        for limit in limits:
            args.extend(wire.script_args(limit))
        with redis_errors("peek"):
            reply = await self._peek(keys=[self.rate_limit_key(c) for c in limits], args=args)
        n = wire.REPLY
        return tuple(wire.state(c, reply[n * j : n * (j + 1)]) for j, c in enumerate(limits))

    # -- settle, release, checkpoint ----------------------------------------------------------

    async def settle(
        self, request_id: str, actual_micros: int, now: float, usage: UsageRecord | None = None
    ) -> SettleResult:
        """Charge the real cost into the calendar windows recorded at reserve and the rolling
        buckets of `now` (windows.py). Never rejects; idempotent.
        `usage`: the request's spend rollup, written by the same script when it settles; its
        input + output tokens correct the rate limits' token holds (without it they stay)."""
        if actual_micros < 0:
            raise ValueError("actual_micros must be >= 0")
        tokens = -1
        if usage is not None:
            tokens = usage.usage.total_input_tokens + usage.usage.output_tokens
        with redis_errors("settle"):
            record, keys = await self._recent.record(request_id)
            if record is None:
                return SettleResult(ReservationState.UNKNOWN, False)
            args: list[str | int] = [actual_micros, ms(now), self._retention_ms, tokens]
            if usage is not None:
                keys = [*keys, self.rollup_key(usage)]
                args += script_args(usage, self.rollups, self.rollup_day(usage.arrived))
            reply = await self._settle(keys=keys, args=args)
        return SettleResult(
            ReservationState(text(reply[0])),
            int(reply[1]) == 1,
            crossings(record, reply[3:]),
            _reaped(reply[2]),
        )

    async def record_usage(self, request_id: str, usage: UsageRecord, now: float) -> SettleResult:
        """Roll up a billed request that reserved nothing (no budget applied); idempotent."""
        keys = [self.record_key(request_id), self.rollup_key(usage)]
        day = self.rollup_day(usage.arrived)
        args = [self._retention_ms, ms(now), *script_args(usage, self.rollups, day)]
        with redis_errors("record"):
            reply = await self._record_usage(keys=keys, args=args)
        return SettleResult(ReservationState(text(reply[0])), int(reply[1]) == 1)

    async def release(self, request_id: str) -> SettleResult:
        """Drop the holds of a request that cost nothing. Idempotent. Releasing an id that has no
        reservation (its reserve timed out and may still be on the wire) leaves a RELEASED
        tombstone for `record_retention_s`: that reserve, should it arrive, replays and holds
        nothing (state RELEASED, changed False)."""
        with redis_errors("release"):
            for _ in range(3):
                record, keys = await self._recent.record(request_id)
                if record is not None and "uk" in record:  # reaped and rolled up: take it back
                    keys = [*keys, record["uk"]]
                reply = await self._release(keys=keys, args=[self._retention_ms, request_id])
                if text(reply[0]) != "STALE":
                    state, changed = ReservationState(text(reply[0])), int(reply[1]) == 1
                    return SettleResult(state, changed, reaped_micros=_reaped(reply[2]))
        raise BudgetStoreError("budget release failed: the reservation kept changing")

    async def checkpoint(
        self, request_id: str, partial_micros: int, lease_s: float, now: float
    ) -> SettleResult:
        """Record a long stream's cost so far (charged if it is reaped) and extend its lease."""
        if partial_micros < 0 or lease_s <= 0:
            raise ValueError("partial_micros must be >= 0 and lease_s > 0")
        with redis_errors("checkpoint"):
            reply = await self._checkpoint(
                keys=[self.record_key(request_id), self.leases_key],
                args=[partial_micros, ms(now + lease_s), ms(now), self._retention_ms],
            )
        return SettleResult(ReservationState(text(reply[0])), int(reply[1]) == 1)

    # -- reap ---------------------------------------------------------------------------------

    async def reap(self, now: float, limit: int = 100) -> ReapResult:
        """Expire up to `limit` reservations whose lease ran out (their sidecar died, their
        observer never came): charge the checkpoint, else the estimate, exactly once even with
        concurrent reapers; a reservation that kept its request's facts is rolled up in the
        same script, and returned with them for its audit record."""
        now_ms = ms(now)
        reaped: list[Reaped] = []
        found: list[AlertCrossing] = []
        with redis_errors("reap"):
            leases = self.leases_key
            due = await self._client.zrangebyscore(leases, "-inf", now_ms, start=0, num=limit)
            for member in due:
                request_id = text(member)
                record, keys = await self._recent.record(request_id)
                args: list[str | int] = [request_id, now_ms, self._expired_retention_ms]
                facts = None if record is None else ReservationFacts.decode(record.get("ad", ""))
                if facts is not None:
                    day = day_of(facts.arrived, self.rollups.zone)
                    keys = [*keys, day_key(self.key_base, day)]
                    args += [expire_at_ms(day, self.rollups), facts.dimensions.encode()]
                reply = await self._reap(keys=keys, args=args)
                if record is None or int(reply[1]) != 1:
                    continue
                amount = int(reply[2])
                n = int(record["n"])
                charged = tuple(
                    int(record[f"e:{i}"]) if amount < 0 else amount for i in range(1, n + 1)
                )
                labels = tuple(
                    (record[f"b:{i}"], record[f"s:{i}"], record[f"w:{i}"]) for i in range(1, n + 1)
                )
                rolled = _reaped(reply[3])
                reaped.append(Reaped(request_id, charged, facts, rolled, labels))
                found.extend(crossings(record, reply[4:]))
        return ReapResult(tuple(reaped), tuple(found))

    # -- reads --------------------------------------------------------------------------------

    async def status(self, budget: BudgetConfig, scope_value: str, now: float) -> BudgetStatus:
        """A counter's spend in the window at `now`, its live holds and the budget's limit."""
        spent, held, _ = await self._read(budget, scope_value, now)
        return BudgetStatus(spent, held, budget.limit_micros)

    async def retry_after(
        self, budget: BudgetConfig, scope_value: str, estimate_micros: int, now: float
    ) -> float | None:
        """Seconds until `estimate_micros` may fit (for Retry-After); None if it never will by
        waiting (larger than the limit, or held back by live holds alone)."""
        spent, held, buckets = await self._read(budget, scope_value, now)
        excess = spent + held + estimate_micros - budget.limit_micros
        if excess <= 0:
            return 0.0
        window = budget.window
        if isinstance(window, RollingWindow):
            return windows.rolling_retry_after(buckets, window, now, excess)
        if held + estimate_micros > budget.limit_micros:
            return None
        return windows.calendar_span(window, now).seconds_to_reset(now)

    async def _read(
        self, budget: BudgetConfig, scope_value: str, now: float
    ) -> tuple[int, int, dict[int, int]]:
        key, _ = self.counter_key(budget, scope_value, now)
        with redis_errors("status"):
            fields = decoded(await self._client.hgetall(key))
        held = int(fields.get("held", 0))
        if isinstance(budget.window, CalendarWindow):
            return int(fields.get("spent", 0)), held, {}
        buckets = {int(k[2:]): int(v) for k, v in fields.items() if k.startswith("b:")}
        return windows.rolling_spend(buckets, budget.window, now), held, buckets


def _reaped(value: object) -> int | None:
    """A script's reply of what the reaper rolled up (-1: nothing)."""
    amount = int(text(value))
    return None if amount < 0 else amount
