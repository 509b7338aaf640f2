"""`python -m gateway_extproc.mock` as a subprocess: port file, banner, clean signal exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gateway_extproc.mock.cli import parse_args, write_port_file
from tests.paths import REPO


def test_write_port_file_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "port"
    write_port_file(target, 4242)
    write_port_file(target, 4343)
    assert target.read_text() == "4343"
    assert [p.name for p in tmp_path.iterdir()] == ["port"]


def test_parse_args_defaults() -> None:
    args = parse_args(["--port", "0"])
    assert (args.host, args.port, args.port_file, args.fixtures_dir) == ("127.0.0.1", 0, None, None)
    assert args.openai_key is None and args.anthropic_key is None


def _wait_for_port(port_file: Path, proc: subprocess.Popen[str]) -> int:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if port_file.exists():
            return int(port_file.read_text())
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    raise AssertionError("mock provider did not write its port file")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_cli_serves_and_exits_cleanly(tmp_path: Path, signum: signal.Signals) -> None:
    port_file = tmp_path / "mock.port"
    command = [sys.executable, "-m", "gateway_extproc.mock", "--host", "127.0.0.1", "--port", "0"]
    command += ["--port-file", str(port_file), "--openai-key", "sk-cli"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            port = _wait_for_port(port_file, proc)
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base, timeout=10) as client:
                assert client.get("/_mock/health").status_code == 200
                body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
                denied = client.post("/v1/chat/completions", json=body)
                assert denied.status_code == 401
                assert denied.json()["error"]["code"] == "invalid_api_key"
                cut = {"Authorization": "Bearer sk-cli", "x-mock-abort-after-events": "2"}
                with pytest.raises(httpx.RemoteProtocolError):
                    client.post("/v1/chat/completions", json={**body, "stream": True}, headers=cut)
            proc.send_signal(signum)
            _, stderr = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0
    assert f"mock provider listening on http://127.0.0.1:{port}" in stderr
    assert "Traceback" not in stderr and "Error handling request" not in stderr
