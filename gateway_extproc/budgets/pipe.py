"""The budget scripts' lean path to a standalone Redis: EVALSHA pipelined on one connection.

redis-py spends ~60-70 us of client CPU on every script call (the Script wrapper, a pooled
connection taken and given back, argument encoding in Python, a timeout task per write, a
parser in Python around hiredis); the request path makes two (reserve, settle). Here a call is
one `hiredis.pack_command` and one write on a connection that every call shares, and its reply
is matched by order (Redis answers a connection's commands in the order they came): ~13 us
(`redisbench` numbers in the commit that added this). Same semantics as a redis-py call with no
retries: a script runs whole or not at all; a caller that stops waiting (its deadline) leaves
the script to run and its reply is dropped; errors are redis-py's exception classes, so
`scripts.redis_errors` turns them into `BudgetStoreError` as before.

Only a plain TCP or unix-socket `redis.asyncio.Redis` is served (host, port, db, username,
password and timeouts read from its pool); a cluster, TLS or any other connection class keeps
redis-py (`ScriptPipe.for_client` returns None). A lost connection fails the calls waiting on
it and the next call connects again; a reply that takes longer than the client's
`socket_timeout` closes the connection (as redis-py's socket timeout would fail the call).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
from collections.abc import Sequence
from typing import Any, cast

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError, NoScriptError, ResponseError, TimeoutError

Arg = str | int | bytes


def _pack(command: tuple[Arg, ...]) -> bytes:
    """RESP bytes of a command (hiredis's stub types it as a 1-tuple)."""
    packed: bytes = hiredis.pack_command(command)  # type: ignore[arg-type]
    return packed


class _Protocol(asyncio.Protocol):
    """One connection: replies matched to the calls waiting, in order."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader(protocolError=ConnectionError, replyError=ResponseError)
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None
        self.pending: list[bytes] = []  # packed commands not yet written (see send)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                future, _ = self.waiting.popleft()
                if future.done():  # its caller stopped waiting: the reply is dropped
                    continue
                if isinstance(reply, ResponseError):
                    message = str(reply)
                    if message.startswith("NOSCRIPT"):  # as redis-py's parser maps it
                        reply = NoScriptError(message)
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except ConnectionError as exc:  # not RESP: nothing more on this connection is trusted
            self.close(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(ConnectionError(f"connection to Redis lost: {exc or 'closed by the server'}"))

    def close(self, error: Exception) -> None:
        if self.lost is None:
            self.lost = error
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(self.lost)
        if self.transport is not None:
            self.transport.abort()

    def send(self, packed: bytes, now: float) -> asyncio.Future[Any]:
        """Send a command. With nothing in flight it is written at once; while replies are
        outstanding (load), the commands of one turn of the event loop are queued and go out in
        one write at its end: a socket write is a system call, and under load several requests
        reserve or settle in the same turn (client CPU per call at 32 concurrent callers 10 -> 5
        us in the commit that added this; one caller unchanged)."""
        if self.lost is not None or self.transport is None:
            raise self.lost or ConnectionError("not connected to Redis")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        idle = not self.waiting
        self.waiting.append((future, now))
        if idle:
            self.transport.write(packed)
            return future
        if not self.pending:
            loop.call_soon(self.flush)
        self.pending.append(packed)
        return future

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        if self.lost is None and self.transport is not None and pending:
            self.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))


class ScriptPipe:
    """Lua script calls on one pipelined connection (see the module docstring)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        socket_timeout: float | None = None,
        connect_timeout: float | None = None,
    ) -> None:
        self._host, self._port, self._path = host, port, path
        self._db, self._username, self._password = db, username, password
        self._timeout = socket_timeout
        self._connect_timeout = connect_timeout
        self._conn: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._closed = False

    @classmethod
    def for_client(cls, client: object) -> ScriptPipe | None:
        """A pipe to the server a standalone redis-py client talks to, or None (cluster, TLS,
        another connection class: those keep redis-py)."""
        if not isinstance(client, Redis):
            return None
        pool = client.connection_pool
        kw = pool.connection_kwargs
        if kw.get("credential_provider") is not None:
            return None
        if pool.connection_class is Connection:
            host, port, path = str(kw.get("host", "localhost")), int(kw.get("port", 6379)), None
        elif pool.connection_class is UnixDomainSocketConnection:
            host, port, path = "", 0, str(kw["path"])
        else:
            return None
        return cls(
            host=host,
            port=port,
            path=path,
            db=int(kw.get("db") or 0),
            username=kw.get("username"),
            password=kw.get("password"),
            socket_timeout=kw.get("socket_timeout"),
            connect_timeout=kw.get("socket_connect_timeout"),
        )

    async def evalsha(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """Run `script` (EVAL with its source if the server does not have it: a restart, a
        SCRIPT FLUSH; that also loads it again)."""
        try:
            return await self._call(("EVALSHA", script.sha, len(keys), *keys, *args))
        except NoScriptError:
            return await self._call(("EVAL", script.source, len(keys), *keys, *args))

    async def _call(self, command: tuple[Arg, ...]) -> Any:
        conn = self._conn
        if conn is None or conn.lost is not None:
            conn = await self._connect()
        loop = asyncio.get_running_loop()
        future = conn.send(_pack(command), loop.time())
        if self._timeout is not None and self._watchdog is None:
            self._watchdog = loop.call_later(self._timeout, self._check_timeouts)
        return await future

    def _check_timeouts(self) -> None:
        """A reply overdue by the socket timeout: Redis is stuck or gone; fail the connection."""
        self._watchdog = None
        conn = self._conn
        if conn is None or conn.lost is not None or not conn.waiting or self._timeout is None:
            return
        loop = asyncio.get_running_loop()
        oldest = conn.waiting[0][1]
        if loop.time() - oldest >= self._timeout:
            conn.close(TimeoutError(f"Redis did not answer within {self._timeout:g} s"))
            return
        wait = oldest + self._timeout - loop.time()
        self._watchdog = loop.call_later(wait, self._check_timeouts)

    async def _connect(self) -> _Protocol:
        if self._closed:
            raise ConnectionError("the script pipe is closed")
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            conn = self._conn
            if conn is not None and conn.lost is None:
                return conn  # another call connected meanwhile
            conn = None
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self._connect_timeout):
                    if self._path is not None:
                        _, conn = await loop.create_unix_connection(_Protocol, self._path)
                    else:
                        _, conn = await loop.create_connection(_Protocol, self._host, self._port)
                    await self._hello(conn, loop.time())
            except (OSError, TimeoutError) as exc:
                if conn is not None:
                    conn.close(ConnectionError(str(exc)))
                raise ConnectionError(f"cannot connect to Redis: {type(exc).__name__}") from exc
            except BaseException:
                if conn is not None:
                    conn.close(ConnectionError("connect interrupted"))
                raise
            self._conn = conn
            return conn

    async def _hello(self, conn: _Protocol, now: float) -> None:
        if self._password is not None:
            auth: tuple[Arg, ...] = ("AUTH", self._password)
            if self._username is not None:
                auth = ("AUTH", self._username, self._password)
            await conn.send(_pack(auth), now)
        if self._db:
            await conn.send(_pack(("SELECT", self._db)), now)

    async def aclose(self) -> None:
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._conn is not None:
            self._conn.close(ConnectionError("the script pipe is closed"))
            self._conn = None


class Script:
    """A Lua script's source and SHA-1, called like redis-py's `Script`:
    `await script(keys=..., args=...)`, through the pipe when there is one."""

    def __init__(self, source: str, pipe: ScriptPipe | None, fallback: Any) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self._pipe = pipe
        self._fallback = fallback  # redis-py's Script for the same source

    async def __call__(self, *, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        if self._pipe is None:
            return await self._fallback(keys=keys, args=args)
        return await self._pipe.evalsha(self, keys, args)
