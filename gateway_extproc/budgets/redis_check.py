"""Is this Redis safe to hold money? `gatewayctl check-config --redis` asks the configured one.

Budget state is spend counters, holds and reservations. Redis must never evict them
(`maxmemory-policy noeviction`: a full Redis then refuses writes, which `fail_closed` budgets turn
into 503s, instead of silently forgetting spend) and should persist them (AOF `everysec` loses at
most about a second of settles on a crash). `problems` is pure; `read_settings` is the I/O.
"""

from __future__ import annotations

import dataclasses
import urllib.parse

import redis


@dataclasses.dataclass(frozen=True)
class RedisSettings:
    """What the check looks at; None where the server would not say (CONFIG disabled)."""

    maxmemory_policy: str | None
    maxmemory: int | None
    appendonly: bool | None
    appendfsync: str | None
    save: str | None  # RDB snapshot rules, e.g. "3600 1 300 100"; "" = none


def problems(s: RedisSettings) -> list[str]:
    """Warnings, each saying what can be lost and what to set."""
    out: list[str] = []
    if s.maxmemory_policy is None:
        out.append("cannot read maxmemory-policy: make sure it is noeviction")
    elif s.maxmemory_policy != "noeviction":
        limit = f"maxmemory {s.maxmemory} bytes" if s.maxmemory else "no maxmemory set yet"
        out.append(
            f"maxmemory-policy is {s.maxmemory_policy} ({limit}): under memory pressure Redis "
            "may evict budget counters and reservations, forgetting spend and holds; "
            "set maxmemory-policy noeviction"
        )
    if s.appendonly is False and s.save == "":
        out.append(
            "no persistence (appendonly no, no save rules): a restart of Redis loses every "
            "budget's spend and every open reservation; set appendonly yes, appendfsync everysec"
        )
    elif s.appendonly is False and s.save is None:
        out.append(
            "appendonly is no and the save rules cannot be read: a restart may lose budget "
            "spend; set appendonly yes, appendfsync everysec"
        )
    elif s.appendonly is None:
        out.append("cannot read appendonly: make sure AOF persistence (everysec) is on")
    elif s.appendonly and s.appendfsync == "no":
        out.append(
            "appendfsync no: a crash of the host may lose the last ~30 s of settled spend; "
            "set appendfsync everysec"
        )
    return out


def read_settings(client: redis.Redis) -> RedisSettings:
    """CONFIG GET where allowed; INFO (which managed services keep) otherwise."""
    try:
        config = client.config_get("maxmemory-policy")
        config |= client.config_get("maxmemory")
        config |= client.config_get("appendonly")
        config |= client.config_get("appendfsync")
        config |= client.config_get("save")
    except redis.ResponseError:  # CONFIG renamed or disabled
        config = {}
    info = client.info("memory") | client.info("persistence") if not config else {}

    def text(value: object) -> str | None:
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    policy = text(config.get("maxmemory-policy", info.get("maxmemory_policy")))
    maxmemory = text(config.get("maxmemory", info.get("maxmemory")))
    aof = text(config.get("appendonly", info.get("aof_enabled")))
    return RedisSettings(
        maxmemory_policy=policy,
        maxmemory=int(maxmemory) if maxmemory is not None and maxmemory.isdigit() else None,
        appendonly=None if aof is None else aof in ("yes", "1"),
        appendfsync=text(config.get("appendfsync")),
        save=text(config.get("save")),
    )


def check(
    url: str, *, cluster: bool, timeout_s: float = 3.0, password: str | None = None
) -> dict[str, list[str]]:
    """Warnings per server (every primary of a cluster). Raises redis.RedisError when a server
    cannot be reached."""
    options: dict[str, object] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "decode_responses": True,
    }
    if password is not None:
        options["password"] = password
    if not cluster:
        with redis.Redis.from_url(url, **options) as client:
            return {display_url(url): problems(read_settings(client))}
    out: dict[str, list[str]] = {}
    with redis.RedisCluster.from_url(url, **options) as rc:
        for node in rc.get_primaries():
            client = rc.get_redis_connection(node)
            try:
                out[f"{node.host}:{node.port}"] = problems(read_settings(client))
            finally:  # the cluster client's close() leaves the node clients' sockets open
                client.connection_pool.disconnect()
    return out


def display_url(url: str) -> str:
    """The URL without credentials, for output and logs."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
