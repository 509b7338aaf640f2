"""The response cache's Redis store: one string per entry with its TTL, and a total size cap.

Keys (all under the `{gwc}` hash tag, so one script runs on Redis Cluster too):
    <prefix>:{gwc}:e:<sha256>   the entry (the answer's JSON), SET with PX = the rule's TTL
    <prefix>:{gwc}:idx          zset: entry -> expiry time (ms)
    <prefix>:{gwc}:size         hash: entry -> bytes
    <prefix>:{gwc}:bytes        total bytes of the indexed entries

The total cap is enforced by `put.lua` in the write itself: it forgets entries that expired,
then, while the total is over the cap, evicts the entry that would expire soonest. A read is a
plain GET (an expired entry is simply absent).
"""

from __future__ import annotations

import asyncio
import importlib.resources
import math

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

TAG = "{gwc}"


def _source() -> str:
    lua = importlib.resources.files("gateway_extproc.cache").joinpath("lua")
    return lua.joinpath("put.lua").read_text(encoding="utf-8")


class CacheStore:
    def __init__(self, client: Redis | RedisCluster, prefix: str, deadline_s: float) -> None:
        self.client = client
        self.deadline_s = deadline_s
        self._base = f"{prefix}:{TAG}"
        self._put = client.register_script(_source())

    def entry_key(self, key: str) -> str:
        return f"{self._base}:e:{key}"

    async def get(self, key: str) -> bytes | None:
        value = await asyncio.wait_for(self.client.get(self.entry_key(key)), self.deadline_s)
        return value if isinstance(value, bytes) else None

    async def put(self, key: str, value: bytes, ttl_s: int, now: float, max_total: int) -> int:
        """Store `value` for `ttl_s`; return how many other entries were evicted for room."""
        keys = [self.entry_key(key), f"{self._base}:idx", f"{self._base}:size"]
        keys.append(f"{self._base}:bytes")
        args: list[bytes | str | int] = [
            key,
            value,
            ttl_s * 1000,
            math.floor(now * 1000),
            max_total,
        ]
        evicted = await asyncio.wait_for(self._put(keys=keys, args=args), self.deadline_s)
        members = [m.decode() if isinstance(m, bytes) else str(m) for m in evicted]
        if members:
            await self.client.delete(*(self.entry_key(m) for m in members))
        return len(members)

    async def close(self) -> None:
        await self.client.aclose()
