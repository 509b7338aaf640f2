"""The budget scripts' pipelined connection (budgets/pipe.py) against a real redis-server: replies
matched to callers in order, a caller that stops waiting, a lost connection, a Redis that stops
answering, AUTH-free db selection, and which clients get a pipe. (The store's whole contract
runs through it too: tests/unit/test_budget_store.py, the `pipelined` parameter.)"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
import uvloop
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError, ResponseError, TimeoutError

from gateway_extproc.budgets.pipe import Script, ScriptPipe
from tests.redis_servers import (  # noqa: F401 - session fixture used by name
    RedisEndpoint,
    free_port,
    redis_standalone_server,
)

ECHO = Script("return {ARGV[1], redis.call('INCR', KEYS[1])}", None, None)


@pytest.fixture
async def client(redis_standalone_server: RedisEndpoint) -> AsyncIterator[Redis]:  # noqa: F811
    node = redis_standalone_server
    c = Redis(host=node.host, port=node.port, socket_timeout=2.0)
    yield c
    await c.aclose()


@pytest.fixture
async def pipe(client: Redis) -> AsyncIterator[ScriptPipe]:
    p = ScriptPipe.for_client(client)
    assert p is not None
    yield p
    await p.aclose()


def key() -> str:
    return f"pipe:{uuid.uuid4().hex}"


async def test_concurrent_calls_get_their_own_replies_in_order(pipe: ScriptPipe) -> None:
    k = key()
    replies = await asyncio.gather(*(pipe.evalsha(ECHO, [k], [f"call-{i}"]) for i in range(200)))
    assert [r[0] for r in replies] == [f"call-{i}".encode() for i in range(200)]
    assert sorted(r[1] for r in replies) == list(range(1, 201))  # each ran exactly once


async def test_calls_made_while_replies_are_due_go_out_in_one_write(pipe: ScriptPipe) -> None:
    k = key()
    assert await pipe.evalsha(ECHO, [k], ["connected"]) == [b"connected", 1]
    conn = pipe._conn
    assert conn is not None and conn.transport is not None
    writes: list[bytes] = []
    real = conn.transport

    class Counting:  # uvloop's transport cannot be patched: stand in front of it
        def write(self, data: bytes) -> None:
            writes.append(data)
            real.write(data)

        def abort(self) -> None:
            real.abort()

    conn.transport = Counting()  # type: ignore[assignment]
    replies = await asyncio.gather(*(pipe.evalsha(ECHO, [k], [f"c{i}"]) for i in range(50)))
    assert [r[0] for r in replies] == [f"c{i}".encode() for i in range(50)]
    # The first goes out at once (nothing in flight), the other 49 of that turn together.
    assert [w.count(b"EVALSHA") for w in writes] == [1, 49]
    assert await pipe.evalsha(ECHO, [k], ["alone"]) == [b"alone", 52]  # idle: written at once
    assert [w.count(b"EVALSHA") for w in writes] == [1, 49, 1]
    conn.transport = real


async def test_a_script_the_server_lost_is_sent_whole_and_runs(
    pipe: ScriptPipe, client: Redis
) -> None:
    await client.script_flush()
    k = key()
    assert await pipe.evalsha(ECHO, [k], ["a"]) == [b"a", 1]
    assert await client.script_exists(ECHO.sha) == [True]  # EVAL cached it again
    assert await pipe.evalsha(ECHO, [k], ["b"]) == [b"b", 2]


async def test_an_error_reply_raises_and_the_next_call_is_unaffected(pipe: ScriptPipe) -> None:
    bad = Script("return redis.call('HINCRBY', KEYS[1], 'f', 'x')", None, None)
    with pytest.raises(ResponseError):
        await pipe.evalsha(bad, [key()], [])
    assert await pipe.evalsha(ECHO, [key()], ["ok"]) == [b"ok", 1]


async def test_a_caller_that_stops_waiting_does_not_shift_the_replies(pipe: ScriptPipe) -> None:
    k = key()
    assert await pipe.evalsha(ECHO, [k], ["connected"]) == [b"connected", 1]
    gone = asyncio.ensure_future(pipe.evalsha(ECHO, [k], ["gone"]))
    await asyncio.sleep(0)  # sent, its reply not read yet
    gone.cancel()
    assert await pipe.evalsha(ECHO, [k], ["next"]) == [b"next", 3]  # the cancelled one ran


async def test_a_connection_lost_mid_call_fails_that_call_and_the_next_call_reconnects() -> None:
    """A server that reads the first connection's command and hangs up without answering, then
    answers on the next connection."""
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.read(1)  # the command is on its way
        if connections == 1:
            writer.close()
            return
        writer.write(b"*2\r\n$2\r\nok\r\n:1\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    pipe = ScriptPipe(port=server.sockets[0].getsockname()[1], socket_timeout=5)
    try:
        with pytest.raises(ConnectionError):
            await pipe.evalsha(ECHO, [key()], ["lost"])
        assert await pipe.evalsha(ECHO, [key()], ["again"]) == [b"ok", 1]
        assert connections == 2
    finally:
        await pipe.aclose()
        server.close()
        await server.wait_closed()


async def test_a_connection_redis_kills_costs_at_most_one_call(
    pipe: ScriptPipe, client: Redis
) -> None:
    k = key()
    assert await pipe.evalsha(ECHO, [k], ["first"]) == [b"first", 1]
    await client.client_kill_filter(_type="normal", skipme=True)
    # The next call fails if the pipe has not seen the hang-up yet, else it reconnects.
    with contextlib.suppress(ConnectionError):
        await pipe.evalsha(ECHO, [k], ["maybe"])
    assert (await pipe.evalsha(ECHO, [k], ["again"]))[0] == b"again"


async def test_a_redis_that_stops_answering_times_the_call_out() -> None:
    """A server that accepts and never answers: the call fails after the socket timeout."""
    accepted: list[asyncio.StreamWriter] = []
    server = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pipe = ScriptPipe(port=port, socket_timeout=0.2)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            await pipe.evalsha(ECHO, [key()], ["x"])
        assert 0.2 <= loop.time() - started < 1.5
    finally:
        await pipe.aclose()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_no_server_is_a_connection_error() -> None:
    pipe = ScriptPipe(port=free_port(), connect_timeout=1.0)
    try:
        with pytest.raises(ConnectionError):
            await pipe.evalsha(ECHO, [key()], ["x"])
    finally:
        await pipe.aclose()


async def test_the_clients_database_is_selected(redis_standalone_server: RedisEndpoint) -> None:  # noqa: F811
    node = redis_standalone_server
    db3 = Redis(host=node.host, port=node.port, db=3)
    pipe = ScriptPipe.for_client(db3)
    assert pipe is not None
    k = key()
    try:
        await pipe.evalsha(ECHO, [k], ["x"])
        assert await db3.get(k) == b"1"
    finally:
        await pipe.aclose()
        await db3.aclose()


def test_only_a_plain_standalone_client_gets_a_pipe() -> None:
    assert ScriptPipe.for_client(Redis(host="127.0.0.1", port=6379)) is not None
    assert ScriptPipe.for_client(Redis(unix_socket_path="/tmp/redis.sock")) is not None
    assert ScriptPipe.for_client(Redis(host="127.0.0.1", port=6379, ssl=True)) is None
    cluster = RedisCluster(host="127.0.0.1", port=7000, startup_nodes=None)
    assert ScriptPipe.for_client(cluster) is None


def test_calls_run_on_uvloop(redis_standalone_server: RedisEndpoint) -> None:  # noqa: F811
    """The sidecar's event loop (server.py runs uvloop): its transports are not asyncio's."""
    node = redis_standalone_server

    async def main() -> list[object]:
        pipe = ScriptPipe(host=node.host, port=node.port)
        try:
            k = key()
            return [await pipe.evalsha(ECHO, [k], [f"{i}"]) for i in range(2)]
        finally:
            await pipe.aclose()

    assert uvloop.run(main()) == [[b"0", 1], [b"1", 2]]
