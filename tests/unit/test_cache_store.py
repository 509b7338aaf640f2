"""The cache store and service on a real redis-server (single node and a 3-master cluster):
TTLs, the total cap (put.lua), the per-entry cap, what is stored and what is not."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from gateway_extproc.apis import Api
from gateway_extproc.budgets.loader import BudgetStoreConfig
from gateway_extproc.budgets.model import Match
from gateway_extproc.cache.service import ResponseCache, build_cache
from gateway_extproc.cache.settings import CacheConfig, CacheRule
from gateway_extproc.cache.store import CacheStore
from gateway_extproc.catalog.models import Catalog
from gateway_extproc.errors import BadRequest
from gateway_extproc.identity.model import AuthMethod, Identity, Kind
from gateway_extproc.providers.inbound import parse_request
from tests.redis_servers import (  # noqa: F401 - session fixtures used via getfixturevalue
    RedisClusterNodes,
    RedisEndpoint,
    free_port,
    redis_cluster_servers,
    redis_standalone_server,
    standalone_redis,
)
from tests.unit.test_cache_replay import CHAT

Client = Redis | RedisCluster
NOW = 1_700_000_000.0
SOCKET_TIMEOUT_S = 2.0  # build_cache's socket timeout: the bound a missing deadline falls back to


@pytest.fixture(params=["standalone", "cluster"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    c: Client
    if request.param == "standalone":
        node: RedisEndpoint = request.getfixturevalue("redis_standalone_server")
        c = Redis(host=node.host, port=node.port)
    else:
        nodes: RedisClusterNodes = request.getfixturevalue("redis_cluster_servers")
        c = RedisCluster(host=nodes.first.host, port=nodes.first.port)
    yield c
    await c.aclose()


@pytest.fixture
def store(client: Client) -> CacheStore:
    return CacheStore(client, f"t{uuid.uuid4().hex[:10]}", deadline_s=5)


async def total(store: CacheStore) -> int:
    base = store.entry_key("x").rsplit(":e:", 1)[0]
    return int(await store.client.get(f"{base}:bytes") or 0)


async def test_put_get_and_ttl(store: CacheStore) -> None:
    assert await store.get("k1") is None
    assert await store.put("k1", b"v" * 100, 60, NOW, 10_000) == 0
    assert await store.get("k1") == b"v" * 100
    assert 0 < await store.client.pttl(store.entry_key("k1")) <= 60_000
    assert await total(store) == 100


async def test_refresh_replaces_without_double_counting(store: CacheStore) -> None:
    await store.put("k", b"a" * 100, 60, NOW, 10_000)
    await store.put("k", b"b" * 300, 60, NOW + 1, 10_000)
    assert await total(store) == 300
    assert await store.get("k") == b"b" * 300


async def test_total_cap_evicts_what_expires_soonest(store: CacheStore) -> None:
    for i in range(3):
        await store.put(f"k{i}", b"x" * 400, 60 + i, NOW, 1000)  # k0 expires first
    assert await total(store) <= 1000
    assert await store.get("k0") is None  # evicted and deleted
    assert await store.get("k1") == b"x" * 400
    assert await store.get("k2") == b"x" * 400


async def test_expired_entries_stop_counting(store: CacheStore) -> None:
    await store.put("old", b"x" * 500, 1, NOW, 1000)
    await store.put("new", b"y" * 600, 60, NOW + 5, 1000)  # "old" expired at NOW + 1
    assert await total(store) == 600
    assert await store.get("new") == b"y" * 600


CATALOG = Catalog.load()


def identity(user: str) -> Identity:
    return Identity(Kind.USER, AuthMethod.JWT, user, None, frozenset({"eng"}), "dev", {}, None)


def cache(store: CacheStore, max_entry: int = 1 << 20) -> ResponseCache:
    rule = CacheRule("eng", Match(groups=frozenset({"eng"})), 60)
    return ResponseCache(CacheConfig((rule,), max_entry, 1 << 24), store, lambda: NOW)


async def ask(c: ResponseCache, user: str = "a", **body: Any) -> Any:
    request = parse_request(
        Api.OPENAI_CHAT,
        orjson.dumps(
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "q"}], **body}
        ),
    )
    entry = CATALOG.lookup("gpt-4o-mini")
    assert entry is not None
    return await c.lookup(
        request=request, entry=entry, identity=identity(user), headers=(None, None)
    )


async def settle(c: ResponseCache) -> None:
    await c.drain()


async def test_miss_store_hit_and_tenants(store: CacheStore) -> None:
    c = cache(store)
    first = await ask(c)
    assert first.hit is None and first.ticket.status == "miss"
    c.store(
        first.ticket,
        Api.OPENAI_CHAT,
        status=200,
        complete=True,
        stream=False,
        body=orjson.dumps(CHAT),
    )
    await settle(c)
    hit = await ask(c, stream=True)
    assert hit.hit is not None and hit.hit.content_type.startswith("text/event-stream")
    assert hit.hit.usage.output_tokens == CHAT["usage"]["completion_tokens"]
    assert (await ask(c, user="b")).hit is None  # another tenant


@pytest.mark.parametrize(
    ("status", "complete", "max_entry", "stored"),
    [
        (200, True, 1 << 20, True),  # the same answer, complete and small enough: stored
        (500, True, 1 << 20, False),
        (200, False, 1 << 20, False),
        (200, True, 1024, False),
    ],
    ids=["stored", "error-status", "incomplete", "over-entry-cap"],
)
async def test_what_is_not_stored(
    store: CacheStore, status: int, complete: bool, max_entry: int, stored: bool
) -> None:
    c = cache(store, max_entry)
    big = {
        **CHAT,
        "choices": [
            {**CHAT["choices"][0], "message": {"role": "assistant", "content": "w " * 1000}}
        ],
    }
    miss = await ask(c)
    c.store(
        miss.ticket,
        Api.OPENAI_CHAT,
        status=status,
        complete=complete,
        stream=False,
        body=orjson.dumps(big),
    )
    await settle(c)
    hit = (await ask(c)).hit
    assert (hit is not None) is stored
    if hit is not None:
        assert orjson.loads(hit.body)["choices"][0]["message"]["content"] == "w " * 1000


# (rule TTL, the client's x-gateway-cache-ttl, the TTL the entry gets)
TTLS = [(60, None, 60), (60, "5", 5), (60, "60", 60), (60, "61", 60), (60, "86400", 60)]


@pytest.mark.parametrize(("rule_ttl", "header", "expected"), TTLS)
async def test_the_client_ttl_shortens_the_rule_s_never_lengthens_it(
    store: CacheStore, rule_ttl: int, header: str | None, expected: int
) -> None:
    rule = CacheRule("eng", Match(groups=frozenset({"eng"})), rule_ttl)
    c = ResponseCache(CacheConfig((rule,), 1 << 20, 1 << 24), store, lambda: NOW)
    request = parse_request(Api.OPENAI_CHAT, orjson.dumps({"model": "gpt-4o-mini", "messages": []}))
    entry = CATALOG.lookup("gpt-4o-mini")
    assert entry is not None
    who = identity("a")
    miss = await c.lookup(request=request, entry=entry, identity=who, headers=(None, header))
    assert miss.ticket is not None and miss.ticket.ttl_s == expected
    answer = orjson.dumps(CHAT)
    c.store(miss.ticket, Api.OPENAI_CHAT, status=200, complete=True, stream=False, body=answer)
    await settle(c)
    assert 0 < await store.client.pttl(store.entry_key(miss.ticket.key)) <= expected * 1000


async def test_skip_refresh_and_tools(store: CacheStore) -> None:
    c = cache(store)
    request = parse_request(Api.OPENAI_CHAT, orjson.dumps({"model": "gpt-4o-mini", "messages": []}))
    entry = CATALOG.lookup("gpt-4o-mini")
    assert entry is not None
    who = identity("a")
    skip = await c.lookup(request=request, entry=entry, identity=who, headers=("skip", None))
    assert skip.ticket is not None and skip.ticket.key == ""
    refresh = await c.lookup(request=request, entry=entry, identity=who, headers=("refresh", "5"))
    assert (
        refresh.ticket is not None
        and refresh.ticket.status == "refresh"
        and refresh.ticket.ttl_s == 5
    )
    tools = await ask(c, tools=[{"type": "function", "function": {"name": "f"}}])
    assert tools.ticket.status == "skip" and tools.ticket.key == ""


async def test_a_hanging_redis_is_a_miss_within_the_deadline() -> None:
    """A Redis that accepts the connection and the command but never answers (CLIENT PAUSE, as
    a stalled or failing-over server does) costs a lookup its deadline, not the socket timeout
    (2 s): the request goes to the provider."""
    with standalone_redis() as endpoint:
        url = f"redis://{endpoint.host}:{endpoint.port}/0"
        rule = CacheRule("eng", Match(groups=frozenset({"eng"})), 60)
        c = build_cache(CacheConfig((rule,)), BudgetStoreConfig(redis_url=url, deadline_ms=100))
        assert (await ask(c)).ticket.status == "miss"  # connected: the pool has a connection
        control = Redis(host=endpoint.host, port=endpoint.port)
        # Every command waits, reads and CLIENT UNPAUSE too: the server is stopped paused.
        await control.client_pause(60_000, all=True)
        await control.aclose()
        started = time.monotonic()
        result = await ask(c)
        waited = time.monotonic() - started
        await c.close()
    assert result.hit is None and result.ticket.status == "miss"
    assert 0.1 <= waited < SOCKET_TIMEOUT_S / 2


async def test_redis_down_is_a_miss() -> None:
    dead = CacheStore(Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5), "t", 1)
    c = cache(dead)
    result = await ask(c)
    assert result.hit is None and result.ticket.status == "miss"
    c.store(
        result.ticket,
        Api.OPENAI_CHAT,
        status=200,
        complete=True,
        stream=False,
        body=orjson.dumps(CHAT),
    )
    await c.close()  # the failed store is logged, never raised


def test_no_rules_no_cache() -> None:
    assert not CacheConfig().enabled
    off = ResponseCache.off()
    assert off.store_ is None


async def test_bad_client_headers_are_refused_only_where_a_rule_applies(store: CacheStore) -> None:
    c = cache(store)
    request = parse_request(Api.OPENAI_CHAT, orjson.dumps({"model": "gpt-4o-mini", "messages": []}))
    entry = CATALOG.lookup("gpt-4o-mini")
    assert entry is not None
    with pytest.raises(BadRequest):
        await c.lookup(request=request, entry=entry, identity=identity("a"), headers=("yes", None))
    outsider = Identity(Kind.USER, AuthMethod.JWT, "o", None, frozenset(), "dev", {}, None)
    result = await c.lookup(request=request, entry=entry, identity=outsider, headers=("yes", None))
    assert result.ticket is None  # no rule: the cache is not involved, its headers ignored
