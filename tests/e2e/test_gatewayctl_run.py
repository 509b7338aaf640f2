"""`make run` as a user runs it: `gatewayctl run`, a curl-style request, one audit line, Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.e2e


def _port_open(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def test_run_serves_the_mock_writes_audit_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(
        GATEWAY_PORT="0", GATEWAY_AUDIT_LOG=str(tmp_path / "audit.jsonl"), PYTHONUNBUFFERED="1"
    )
    config = tmp_path / "gateway.yaml"
    config.write_text("listener: {admin_port: 0}\n")  # 9901 may be taken on this machine
    stderr_path = tmp_path / "stderr.log"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway_extproc.cli",
                "run",
                "--config",
                str(config),
                "--run-dir",
                str(tmp_path / "run"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=tmp_path,
        )
        try:
            deadline = time.monotonic() + 60
            banner = None
            while banner is None:
                assert proc.poll() is None, stderr_path.read_text()
                assert time.monotonic() < deadline, "no banner"
                banner = re.search(r"gateway +(http://[\d.]+:\d+)", stderr_path.read_text())
                time.sleep(0.1)
            gateway = banner.group(1)
            admin = re.search(r"admin +(http://[\d.]+:\d+)", stderr_path.read_text())
            assert admin is not None
            r = httpx.post(
                gateway + "/v1/chat/completions",
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                timeout=10,
            )
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
            proc.send_signal(signal.SIGINT)  # what Ctrl-C delivers
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0
    audit = [json.loads(line) for line in out.splitlines() if line.startswith(b"{")]
    mine = [a for a in audit if a["request_id"] == r.headers["x-gateway-request-id"]]
    assert len(mine) == 1 and mine[0]["cost_micros"] > 0 and mine[0]["usage_source"] == "provider"
    assert not _port_open(gateway) and not _port_open(admin.group(1))
