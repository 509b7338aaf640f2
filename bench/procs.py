"""Processes the bench starts itself (`Procs`), each on an ephemeral loopback port and stopped
on exit: the bench upstream, the no-op workers (their port read from a file) and Envoy."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from gateway_extproc.envoy import bootstrap as envoy_config
from gateway_extproc.stack import launch_envoy, wait_for

ENVOY_CONCURRENCY = 1
REPO = Path(__file__).resolve().parent.parent  # children run `-m bench.*` from here


class Procs:
    """Processes the bench starts itself; `stop()` ends them in reverse order."""

    def __init__(self, output: IO[bytes]) -> None:
        self.output = output
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(
        self, argv: list[str], env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            argv,
            stdout=self.output,
            stderr=self.output,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            env=None if env is None else dict(env),
            start_new_session=True,  # Ctrl-C reaches only us; we stop the children
        )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        while self.procs:
            proc = self.procs.pop()
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def port_from_file(
    procs: Procs,
    module: str,
    port_file: Path,
    args: tuple[str, ...] = (),
    env: Mapping[str, str] | None = None,
) -> tuple[int, int]:
    port_file.unlink(missing_ok=True)
    argv = [sys.executable, "-m", module, "--port-file", str(port_file), *args]
    proc = procs.spawn(argv, env)

    def ready() -> bool:
        return port_file.exists() and port_file.read_text().strip().isdigit()

    wait_for(ready, module, 30, proc)
    return int(port_file.read_text()), proc.pid


def start_upstream(procs: Procs, run_dir: Path) -> tuple[int, int]:
    """(port, pid) of a new `bench.upstream` process."""
    return port_from_file(procs, "bench.upstream", run_dir / "upstream.port")


def start_envoy(procs: Procs, bootstrap: Mapping[str, Any], path: Path) -> tuple[str, str, int]:
    """Validate and start Envoy; (listener URL, admin URL, pid) once it is ready."""
    path.write_text(envoy_config.render(dict(bootstrap)))
    return launch_envoy(path, procs.spawn, ENVOY_CONCURRENCY)
