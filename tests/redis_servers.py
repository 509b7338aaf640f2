"""Real redis-server processes for budget-engine tests: a standalone node and a 3-master cluster.

Each starts on free loopback ports with persistence off, in a temporary directory, and is always
stopped (terminate, then kill) when its context ends. The pytest fixtures below are
session-scoped; import them into a test module to use them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

START_TIMEOUT_S = 15.0


def find_binary(name: str) -> str:
    """redis-server / redis-cli from this virtualenv, else PATH. (Not `gateway_extproc.stack`,
    whose imports pull in the whole sidecar: these fixtures only need the binaries.)"""
    here = str(Path(sys.executable).parent)
    found = shutil.which(name, path=here + os.pathsep + os.environ.get("PATH", ""))
    if found is None:
        raise RuntimeError(f"{name} not found in the virtualenv or on PATH: run `make test`")
    return found


@dataclasses.dataclass(frozen=True)
class RedisEndpoint:
    host: str
    port: int


@dataclasses.dataclass(frozen=True)
class RedisClusterNodes:
    nodes: tuple[RedisEndpoint, ...]

    @property
    def first(self) -> RedisEndpoint:
        return self.nodes[0]


def free_port(*, cluster: bool = False) -> int:
    """A free loopback port; for a cluster node also its bus port (port + 10000)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not cluster:
            return port
        if port + 10_000 > 65_535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free loopback port")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _wait_ping(proc: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server on port {port} exited with {proc.returncode}")
        try:
            with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1) as client:
                if client.ping():
                    return
        except redis.ConnectionError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis-server on port {port} did not answer PING")
        time.sleep(0.02)


def _server(directory: Path, port: int, **options: str) -> subprocess.Popen[bytes]:
    """redis-server with persistence off; `options` become `--name value` (underscores: dashes)."""
    settings = {
        "port": str(port),
        "bind": "127.0.0.1",
        "save": "",
        "appendonly": "no",
        "dir": str(directory),
        "logfile": str(directory / f"redis-{port}.log"),
        **{name.replace("_", "-"): value for name, value in options.items()},
    }
    argv = [find_binary("redis-server")]
    for name, value in settings.items():
        argv += [f"--{name}", value]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextlib.contextmanager
def standalone_redis() -> Iterator[RedisEndpoint]:
    """A standalone redis-server on a free loopback port, stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="redis-") as tmp:
        port = free_port()
        proc = _server(Path(tmp), port)
        try:
            _wait_ping(proc, port)
            yield RedisEndpoint("127.0.0.1", port)
        finally:
            _stop(proc)


@contextlib.contextmanager
def redis_cluster(masters: int = 3) -> Iterator[RedisClusterNodes]:
    """A real Redis Cluster of `masters` masters, no replicas, on loopback; stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="redis-cluster-") as tmp:
        procs: list[subprocess.Popen[bytes]] = []
        try:
            ports = []
            for _ in range(masters):
                port = free_port(cluster=True)
                ports.append(port)
                cluster_options = {
                    "cluster_enabled": "yes",
                    "cluster_config_file": f"nodes-{port}.conf",
                    "cluster_node_timeout": "5000",
                }
                procs.append(_server(Path(tmp), port, **cluster_options))
            for proc, port in zip(procs, ports, strict=True):
                _wait_ping(proc, port)
            create = [find_binary("redis-cli"), "--cluster", "create"]
            create += [f"127.0.0.1:{p}" for p in ports]
            create += ["--cluster-replicas", "0", "--cluster-yes"]
            subprocess.run(
                create,
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=START_TIMEOUT_S,
            )
            _wait_cluster_ok(ports)
            yield RedisClusterNodes(tuple(RedisEndpoint("127.0.0.1", p) for p in ports))
        finally:
            for proc in procs:
                _stop(proc)


def _wait_cluster_ok(ports: list[int]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    pending = list(ports)
    while pending:
        port = pending[0]
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1) as client:
            info = client.execute_command("CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        if "cluster_state:ok" in text and f"cluster_known_nodes:{len(ports)}" in text:
            pending.pop(0)
            continue
        if time.monotonic() > deadline:
            raise RuntimeError(f"cluster node {port} not ok: {text}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def redis_standalone_server() -> Iterator[RedisEndpoint]:
    with standalone_redis() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def redis_cluster_servers() -> Iterator[RedisClusterNodes]:
    with redis_cluster() as nodes:
        yield nodes
