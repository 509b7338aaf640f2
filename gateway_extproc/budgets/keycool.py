"""Key cooldowns (docs/fallback.md, "Key pools"): a pool key that answered 429 with `retry-after`
for a model is left alone for that model, that long, by every pod (providers rate-limit per
model: a 429 on gpt-4o says nothing of gpt-4o-mini on the same key). The per-attempt filter
writes the cooldown and, when the key its endpoint names is cooling, presents another key of
the pool instead. A provider with ONE key cools the same way (its key's name, `DEFAULT_KEY` for
the one-key shorthand): the request phase reads the cooldowns of a chain's targets and skips a
cooling head (request/chain.py).

Keys, beside the budget store's (budgets/keys.py) and in its hash slot, so one MGET reads a pool:

    P:{T}:keycool:<provider>:<model>:<key name>     "1", PX = retry-after

Redis slow or down: no cooldown, never an error (a cooldown only saves a provider round trip).
`pick_key` is pure.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

log = logging.getLogger("gateway.keycool")

MAX_COOLDOWN_S = 3600  # a longer retry-after still cools for an hour (a key is not lost for a day)
# The cooldown name of a provider's one key given as `auth.env` / `auth.file` (no `keys:` list).
DEFAULT_KEY = "default"


def one_key(pool: Sequence[str]) -> str | None:
    """The cooldown name of a provider whose key `pool` holds at most one key; None for a pool
    of several (those cool per key and are not skipped as a target)."""
    if len(pool) > 1:
        return None
    return pool[0] if pool else DEFAULT_KEY


def retry_after_s(value: str | None) -> int:
    """Whole seconds from a `retry-after` header; 0 for none, a date or nonsense (no cooldown)."""
    if value is None or not value.strip().isdigit():
        return 0
    return min(int(value.strip()), MAX_COOLDOWN_S)


def pick_key(got: str, pool: Sequence[str], cooling: set[str]) -> str:
    """The key to present: the endpoint's, unless it is cooling and another of the pool is not
    (then the first such in pool order); every key cooling: the endpoint's."""
    if got not in cooling:
        return got
    return next((name for name in pool if name not in cooling), got)


class KeyCooldowns:
    """The cooldown keys of one budget store (its client, prefix and hash tag)."""

    def __init__(self, client: Redis | RedisCluster, key_base: str) -> None:
        self._client = client
        self._base = key_base

    def key(self, provider: str, model: str, name: str) -> str:
        return f"{self._base}:keycool:{provider}:{model}:{name}"

    async def cooling(self, provider: str, model: str, pool: Sequence[str]) -> set[str]:
        """The keys of `pool` now cooling for `model` (one MGET); nothing when Redis fails."""
        try:
            values = await self._client.mget([self.key(provider, model, name) for name in pool])
        except (RedisError, OSError) as exc:
            log.warning("key cooldowns unreadable, none applied: %s", type(exc).__name__)
            return set()
        return {name for name, value in zip(pool, values, strict=True) if value is not None}

    async def cooling_of(self, keys: Sequence[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
        """The (provider, model, key name) triples of `keys` now cooling (one MGET, whatever
        the providers); nothing when Redis fails."""
        if not keys:
            return set()
        try:
            values = await self._client.mget([self.key(p, m, name) for p, m, name in keys])
        except (RedisError, OSError) as exc:
            log.warning("target cooldowns unreadable, none applied: %s", type(exc).__name__)
            return set()
        return {pair for pair, value in zip(keys, values, strict=True) if value is not None}

    async def cool(self, provider: str, model: str, name: str, seconds: int) -> None:
        """Cool key `name` for `model` for `seconds` (0: nothing); a Redis failure is logged,
        not raised."""
        if seconds <= 0:
            return
        try:
            await self._client.set(self.key(provider, model, name), b"1", px=seconds * 1000)
        except (RedisError, OSError) as exc:
            log.warning("key cooldown not written: %s", type(exc).__name__)
