"""`gatewayctl check-config --redis` against real redis-servers, and the pure rules behind it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from gateway_extproc.budgets.redis_check import (
    RedisSettings,
    check,
    display_url,
    problems,
    read_settings,
)
from gateway_extproc.cli import main
from tests.redis_servers import RedisEndpoint, free_port, redis_cluster, standalone_redis

SAFE = RedisSettings("noeviction", 0, True, "everysec", "")


@pytest.mark.parametrize(
    "settings, fragments",
    [
        (SAFE, []),
        (RedisSettings("noeviction", 0, False, "everysec", "3600 1 300 100"), []),
        (RedisSettings("noeviction", 0, True, "always", ""), []),
        (RedisSettings("allkeys-lru", 1 << 30, True, "everysec", ""), ["allkeys-lru", "evict"]),
        (RedisSettings("volatile-ttl", 0, True, "everysec", ""), ["no maxmemory set yet"]),
        (RedisSettings("noeviction", 0, False, "everysec", ""), ["no persistence"]),
        (RedisSettings("noeviction", 0, True, "no", ""), ["appendfsync no"]),
        (RedisSettings(None, None, None, None, None), ["maxmemory-policy", "appendonly"]),
        (RedisSettings("noeviction", 0, False, None, None), ["save rules cannot be read"]),
    ],
)
def test_rules(settings: RedisSettings, fragments: list[str]) -> None:
    found = " | ".join(problems(settings))
    assert all(f in found for f in fragments), found
    assert bool(found) == bool(fragments)


class NoConfig:
    """A managed Redis that disabled CONFIG but answers INFO."""

    def config_get(self, _name: str) -> dict[str, str]:
        raise redis.ResponseError("unknown command 'CONFIG'")

    def info(self, section: str) -> dict[str, Any]:
        return {"memory": {"maxmemory_policy": "allkeys-lru", "maxmemory": 100}}.get(
            section, {"aof_enabled": 1}
        )


def test_info_is_read_when_config_is_disabled() -> None:
    settings = read_settings(NoConfig())  # type: ignore[arg-type]
    assert settings == RedisSettings("allkeys-lru", 100, True, None, None)


def test_display_url_drops_credentials() -> None:
    assert (
        display_url("redis://user:s3cret@cache.internal:6380/2") == "redis://cache.internal:6380/2"
    )


@pytest.fixture(scope="module")
def server() -> Iterator[RedisEndpoint]:
    with standalone_redis() as endpoint:  # persistence off, noeviction: Redis's defaults
        yield endpoint


@pytest.fixture
def client(server: RedisEndpoint) -> Iterator[redis.Redis]:
    with redis.Redis(host=server.host, port=server.port, decode_responses=True) as c:
        saved = {k: c.config_get(k)[k] for k in ("maxmemory-policy", "appendonly", "save")}
        yield c
        for key, value in saved.items():
            c.config_set(key, value)


def run_check(
    server: RedisEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> tuple[int, str]:
    monkeypatch.setenv("GATEWAY_REDIS_URL", f"redis://{server.host}:{server.port}/0")
    config = tmp_path / "gateway.yaml"
    config.write_text("budgets: []\n")
    status = main(["check-config", "--config", str(config), "--redis"])
    out = capsys.readouterr()
    return status, out.out + out.err


def test_a_redis_without_persistence_is_flagged(
    server: RedisEndpoint,
    client: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    status, out = run_check(server, tmp_path, monkeypatch, capsys)
    assert status == 1
    assert "warning: redis" in out and "no persistence" in out and "evict" not in out


def test_an_evicting_redis_is_flagged(
    server: RedisEndpoint,
    client: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    client.config_set("maxmemory-policy", "allkeys-lru")
    client.config_set("appendonly", "yes")
    status, out = run_check(server, tmp_path, monkeypatch, capsys)
    assert status == 1
    assert "maxmemory-policy is allkeys-lru" in out and "no persistence" not in out


@pytest.mark.parametrize("persistence", [{"appendonly": "yes"}, {"save": "3600 1"}])
def test_a_noeviction_persistent_redis_passes(
    server: RedisEndpoint,
    client: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
    persistence: dict[str, str],
) -> None:
    for key, value in persistence.items():
        client.config_set(key, value)
    client.config_set("appendfsync", "everysec")
    status, out = run_check(server, tmp_path, monkeypatch, capsys)
    assert status == 0, out
    assert "ok: redis" in out and "warning" not in out


def test_an_unreachable_redis_is_an_error_without_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("GATEWAY_REDIS_URL", f"redis://:s3cret@127.0.0.1:{free_port()}/0")
    status = main(["check-config", "--redis"])
    out = capsys.readouterr()
    assert status == 2 and "cannot check Redis" in out.err
    assert "s3cret" not in out.out + out.err


def test_every_primary_of_a_cluster_is_checked() -> None:
    with redis_cluster(masters=3) as nodes:
        found = check(f"redis://{nodes.first.host}:{nodes.first.port}", cluster=True)
    assert len(found) == 3
    assert all(any("no persistence" in w for w in warnings) for warnings in found.values())
