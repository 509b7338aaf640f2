"""The reservations this process just made, remembered for their settle or release: the record
and keys a script on a reservation needs, without an HGETALL of the record first (one round trip
instead of two). The script still reads the record and checks the keys; another process, or one
restarted, falls back to reading the record."""

from __future__ import annotations

import collections
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from gateway_extproc.budgets.keys import StoreKeys
from gateway_extproc.budgets.results import Charge
from gateway_extproc.budgets.scripts import decoded
from gateway_extproc.budgets.wire import record_labels

# Reservations of this process remembered for their settle (bounded; oldest forgotten first).
RECENT_RESERVATIONS = 100_000


class RecentReservations:
    """The records of one store's recent reservations, read back from Redis when not known."""

    def __init__(self, client: Redis | RedisCluster, keys: StoreKeys) -> None:
        self._client = client
        self._keys = keys
        self._recent: collections.OrderedDict[str, tuple[dict[str, str], list[str]]] = (
            collections.OrderedDict()
        )

    def remember(
        self,
        request_id: str,
        keys: list[str],
        charges: Sequence[Charge],
        window_ids: Sequence[str],
        rate_limits: int = 0,
        facts: str | None = None,
    ) -> None:
        """Keep what this process just reserved."""
        labels = record_labels(charges, window_ids, rate_limits)
        if facts is not None:
            labels["ad"] = facts
        self._recent[request_id] = (labels, [*keys])
        if len(self._recent) > RECENT_RESERVATIONS:
            self._recent.popitem(last=False)

    async def record(self, request_id: str) -> tuple[dict[str, str] | None, list[str]]:
        """The reservation record and the keys a script on it needs (read-only; the script
        re-checks the state and that the keys are the recorded ones)."""
        known = self._recent.pop(request_id, None)
        if known is not None:
            return known
        record_key = self._keys.record_key(request_id)
        record = decoded(await self._client.hgetall(record_key))
        if "state" not in record:
            return None, [record_key, self._keys.leases_key]
        counters = [record[f"k:{i}"] for i in range(1, int(record["n"]) + 1)]
        counters += [record[f"rk:{j}"] for j in range(1, int(record.get("rn", "0")) + 1)]
        return record, [record_key, self._keys.leases_key, *counters]
