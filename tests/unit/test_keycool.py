"""Key cooldowns (budgets/keycool.py): the pure choice of key, `retry-after` parsing, and the
Redis keys on a real redis-server (TTL from retry-after, one hash slot, Redis down: none)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis.asyncio import Redis

from gateway_extproc.budgets.keycool import MAX_COOLDOWN_S, KeyCooldowns, pick_key, retry_after_s
from tests.redis_servers import RedisEndpoint, free_port, standalone_redis

POOL = ["main", "spare", "third"]


@pytest.mark.parametrize(
    ("got", "cooling", "want"),
    [
        ("main", set(), "main"),
        ("main", {"spare"}, "main"),
        ("main", {"main"}, "spare"),
        ("spare", {"main", "spare"}, "third"),
        ("main", {"main", "spare", "third"}, "main"),  # all cooling: the endpoint's own
    ],
)
def test_pick_key(got: str, cooling: set[str], want: str) -> None:
    assert pick_key(got, POOL, cooling) == want


@pytest.mark.parametrize(
    ("header", "want"),
    [(None, 0), ("", 0), ("30", 30), (" 7 ", 7), ("-1", 0), ("1.5", 0), ("99999", MAX_COOLDOWN_S)],
)
def test_retry_after(header: str | None, want: int) -> None:
    assert retry_after_s(header) == want
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisEndpoint]:
    with standalone_redis() as endpoint:
        yield endpoint


async def test_a_cooled_key_is_cooling_for_retry_after(redis_server: RedisEndpoint) -> None:
    client = Redis(host=redis_server.host, port=redis_server.port)
    try:
        cool = KeyCooldowns(client, "llmgw:{gwb}")
        assert await cool.cooling("openai", "gpt-4o", POOL) == set()
        await cool.cool("openai", "gpt-4o", "main", 30)
        await cool.cool("openai", "gpt-4o", "spare", 0)  # no retry-after: no cooldown
        assert await cool.cooling("openai", "gpt-4o", POOL) == {"main"}
        assert await cool.cooling("openai", "gpt-4o-mini", POOL) == set()  # per model
        assert await cool.cooling("anthropic", "gpt-4o", POOL) == set()  # per provider
        key = cool.key("openai", "gpt-4o", "main")
        assert key.startswith("llmgw:{gwb}:")  # the store's hash slot
        assert 29_000 < await client.pttl(key) <= 30_000
    finally:
        await client.aclose()


async def test_redis_down_means_no_cooldown_never_an_error() -> None:
    client = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    try:
        cool = KeyCooldowns(client, "llmgw:{gwb}")
        await cool.cool("openai", "gpt-4o", "main", 30)
        assert await cool.cooling("openai", "gpt-4o", POOL) == set()
    finally:
        await client.aclose()
