"""Stack.stop ends processes in dependency order, also after a restart reordered them: Envoy
first (no new requests), the sidecar workers together (they drain and settle), Redis last."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from gateway_extproc.stack import Stack

# Records its name in a file when it gets SIGTERM; touches NAME.ready once the handler is set.
PROCESS = """
import pathlib, signal, sys, time
name, log = sys.argv[1], pathlib.Path(sys.argv[2])
def bye(*_):
    with log.open("a") as f:
        f.write(name + "\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, bye)
(log.parent / (name + ".ready")).touch()
while True:
    time.sleep(1)
"""


def test_stop_order_after_restarts(tmp_path: Path) -> None:
    stack = Stack(run_dir=tmp_path, environ={})
    log = tmp_path / "stopped"
    # As after stack.restart("redis-server") and restart("sidecar"): both moved to the end.
    names = ["mock-provider", "sidecar-1", "envoy", "sidecar", "redis-server"]
    for name in names:
        proc = subprocess.Popen([sys.executable, "-c", PROCESS, name, str(log)])
        stack.procs.append((name, proc))
    deadline = time.monotonic() + 30
    while not all((tmp_path / f"{n}.ready").exists() for n in names):
        assert time.monotonic() < deadline, "helper processes did not start"
        time.sleep(0.02)
    stack.stop()
    order = log.read_text().split()
    assert order[0] == "envoy"
    assert sorted(order[1:3]) == ["sidecar", "sidecar-1"]
    assert order[3:] == ["mock-provider", "redis-server"]
    assert stack.procs == []
