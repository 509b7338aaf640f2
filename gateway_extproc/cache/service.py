"""The response cache as the processor uses it: `lookup` on the request side (after the model
policy, before rate limits and budgets), `capture` and `store` on the response side.

Redis is never on the chunk path: `capture` only appends to the request's buffer, and `store`
runs in the background after the response has ended. A Redis error or timeout is a miss, never a
failed request; a failed store is logged and forgotten.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway_extproc.apis import Api
from gateway_extproc.budgets.loader import BudgetStoreConfig
from gateway_extproc.cache.key import (
    CACHEABLE,
    CacheTicket,
    Control,
    cache_key,
    client_headers,
    has_tools,
    rule_for,
    stateful,
    tenant,
)
from gateway_extproc.cache.replay import answer_from_json, answer_from_stream, replay
from gateway_extproc.cache.settings import CacheConfig
from gateway_extproc.cache.store import CacheStore
from gateway_extproc.catalog.models import ModelEntry
from gateway_extproc.identity.model import Identity
from gateway_extproc.providers.inbound import ParsedRequest
from gateway_extproc.providers.metering import usage_from_json
from gateway_extproc.tokens import Usage

log = logging.getLogger("gateway.cache")

# A stream's raw SSE is several times the size of the answer assembled from it.
SSE_OVERHEAD = 8


@dataclasses.dataclass(frozen=True, slots=True)
class Hit:
    body: bytes
    content_type: str
    usage: Usage  # what the cached answer reported: the cost a hit saves, at catalog prices


@dataclasses.dataclass(frozen=True, slots=True)
class Lookup:
    ticket: CacheTicket | None = None  # None: no rule applies, the cache is not involved
    hit: Hit | None = None


NOT_CACHED = Lookup()


class ResponseCache:
    def __init__(
        self,
        config: CacheConfig,
        store: CacheStore | None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store_ = store
        self.wall_clock = wall_clock
        self._pending: set[asyncio.Future[None]] = set()

    @classmethod
    def off(cls) -> ResponseCache:
        return cls(CacheConfig(), None)

    async def lookup(
        self,
        *,
        request: ParsedRequest,
        entry: ModelEntry,
        identity: Identity,
        headers: tuple[str | None, str | None] = (None, None),
        beta: str = "",
        output_cap: Callable[[], tuple[str, int] | None] = lambda: None,
    ) -> Lookup:
        """The cache's decision for a request; `headers` are the client's x-gateway-cache and
        x-gateway-cache-ttl values, checked (400 when invalid) only when a rule applies.
        `output_cap` gives the output cap the gateway will write into the forwarded body (asked
        only when a key is needed): the key is over the body the provider answers."""
        if self.store_ is None or request.api not in CACHEABLE:
            return NOT_CACHED
        rule = rule_for(self.config.rules, identity, entry.name, entry.provider)
        if rule is None:
            return NOT_CACHED
        client = client_headers(*headers)
        scope = tenant(rule, identity)
        tools = has_tools(request.body) and not rule.side_effect_tools
        if scope is None or tools or stateful(request.api, request.body):
            return Lookup(CacheTicket("skip"))
        if client.control is Control.SKIP:
            return Lookup(CacheTicket("skip"))
        ttl = min(rule.ttl_s, client.ttl_s or rule.ttl_s)
        key = cache_key(
            request.api,
            entry.name,
            request.body,
            tenant=scope,
            beta=beta,
            output_cap=output_cap(),
        )
        if client.control is Control.REFRESH:
            return Lookup(CacheTicket("refresh", key, ttl))
        miss = Lookup(CacheTicket("miss", key, ttl))
        try:
            stored = await self.store_.get(key)
        except Exception as exc:  # Redis down or slow: answer from the provider
            log.warning("cache lookup failed: %s: %s", type(exc).__name__, exc)
            return miss
        if stored is None:
            return miss
        try:
            answer: dict[str, Any] = orjson.loads(stored)
            body, content_type = replay(
                request.api, answer, stream=request.stream, include_usage=request.wants_usage
            )
        except Exception:  # an entry this version cannot replay: refresh it
            log.exception("cached entry unusable")
            return miss
        usage = usage_from_json(request.api, stored).usage or Usage()
        return Lookup(CacheTicket("hit"), Hit(body, content_type, usage))

    def capture(self, ticket: CacheTicket | None, buffer: bytearray, chunk: bytes) -> None:
        """Keep a streamed miss's bytes for `store` (up to what could still fit an entry)."""
        keep = ticket is not None and bool(ticket.key)
        if keep and len(buffer) <= self.config.max_entry_bytes * SSE_OVERHEAD:
            buffer += chunk

    def store(
        self,
        ticket: CacheTicket | None,
        api: Api | None,
        *,
        status: int | None,
        complete: bool,
        stream: bool,
        body: bytes | bytearray,
    ) -> None:
        """Store a miss's answer in the background when the provider answered 200 and the
        response completed with the provider's usage. Never raises, never blocks."""
        if ticket is None or not ticket.key or api is None or self.store_ is None:
            return
        if status != 200 or not complete:
            return
        try:
            raw = bytes(body)
            answer = answer_from_stream(api, raw) if stream else answer_from_json(api, raw)
            if answer is None:
                return
            value = orjson.dumps(answer)
            if len(value) > self.config.max_entry_bytes:
                log.info("cache: answer of %d bytes over max_entry_bytes: not stored", len(value))
                return
            future = asyncio.ensure_future(self._put(ticket, value))
        except Exception:  # the caller is settling a budget next: never let this fail it
            log.exception("cache: could not store the answer")
            return
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)

    async def _put(self, ticket: CacheTicket, value: bytes) -> None:
        assert self.store_ is not None
        try:
            await self.store_.put(
                ticket.key, value, ticket.ttl_s, self.wall_clock(), self.config.max_total_bytes
            )
        except Exception as exc:
            log.warning("cache store failed: %s: %s", type(exc).__name__, exc)

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Wait for the stores still under way."""
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=timeout_s)

    async def close(self) -> None:
        await self.drain()
        if self.store_ is not None:
            await self.store_.close()


def build_cache(config: CacheConfig, sc: BudgetStoreConfig) -> ResponseCache:
    """A cache over the budget store's Redis settings; off (no client) without rules."""
    if not config.enabled:
        return ResponseCache.off()
    options: dict[str, object] = {
        "socket_timeout": 2.0,
        "socket_connect_timeout": 1.0,
        "retry": Retry(NoBackoff(), 0),
    }
    if sc.redis_password is not None:
        options["password"] = sc.redis_password
    client: Redis | RedisCluster
    if sc.cluster:
        client = RedisCluster.from_url(sc.redis_url, **options)
    else:
        client = Redis.from_url(sc.redis_url, **options)  # type: ignore[arg-type]
    return ResponseCache(config, CacheStore(client, sc.key_prefix, sc.deadline_ms / 1000))
