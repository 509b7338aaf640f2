"""`make run` as a user runs it: `gatewayctl run`, a curl-style request, one audit line, Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import yaml

from gateway_extproc.stack import Stack
from tests.e2e.harness import REPO

pytestmark = pytest.mark.e2e


def _port_open(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def _requests_total(url: str) -> float:
    text = httpx.get(url, timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gateway_requests_total{")
    )


def check_run_secrets(run_dir: Path) -> None:
    """The run's caller token: in Envoy's bootstrap (readable by its owner only) for every
    ext_proc filter, never on any process's command line (the workers get it, and the state key,
    in their environment)."""
    bootstrap = run_dir / "envoy.yaml"
    assert stat.S_IMODE(bootstrap.stat().st_mode) == 0o600
    doc = yaml.safe_load(bootstrap.read_text())
    tokens = {
        meta["value"]
        for listener in doc["static_resources"]["listeners"]
        for chain in listener["filter_chains"]
        for f in chain["filters"]
        for h in f["typed_config"].get("http_filters", ())
        for meta in h["typed_config"].get("grpc_service", {}).get("initial_metadata", ())
    }
    (token,) = tokens
    assert len(token) >= 32
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            assert token.encode() not in cmdline.read_bytes(), cmdline
    # Made for this run: a stack of the same configuration makes another.
    assert token not in Stack(run_dir).sidecar_secrets.values()


def local_config_on_free_ports(path: Path) -> tuple[int, int]:
    """config/local.yaml's content written to `path` with every listener it fixes (Envoy's
    admin 9901, the admin API 10090, its JSON listener 10091, the spend page 10092, the dev IdP
    10094) moved to a free port, and the URLs naming them (spend_page.public_url, the dev IdP's
    discovery URLs) rewritten to match: a `make run` left running holds the fixed ones. The
    gateway's own port comes from GATEWAY_PORT. Returns (admin JSON port, dev IdP port)."""
    doc = yaml.safe_load((REPO / "config" / "local.yaml").read_text())
    with socket.socket() as one, socket.socket() as two:  # both bound at once: two ports
        one.bind(("127.0.0.1", 0))
        two.bind(("127.0.0.1", 0))
        admin_http, idp = one.getsockname()[1], two.getsockname()[1]
    discovery = f"http://127.0.0.1:{idp}/.well-known/openid-configuration"
    doc["listener"] = {**doc.get("listener", {}), "admin_port": 0}
    doc["identity"]["dev_idp_port"] = idp
    doc["admin_api"].update(port=0, http_port=admin_http)
    doc["spend_page"].update(port=0, public_url=f"http://127.0.0.1:{admin_http}")
    doc["spend_page"]["oidc"]["discovery_url"] = discovery
    doc["login"]["discovery_url"] = discovery
    text = yaml.safe_dump(doc, sort_keys=False)
    # A fixed port local.yaml names later (a URL, a key) needs rewriting here too.
    assert not re.search(r"\b(9901|100\d\d)\b", text), text
    path.write_text(text)
    return admin_http, idp


def test_run_serves_the_mock_writes_audit_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith("_API_KEY")
        and not k.startswith("OTEL_")
        and k != "GATEWAY_DEV_IDP_PORT"  # the config's port, below
    }
    env.update(
        GATEWAY_PORT="0",
        GATEWAY_AUDIT_LOG=str(tmp_path / "audit.jsonl"),
        PYTHONUNBUFFERED="1",
    )
    # config/local.yaml is what `make run` uses, on ports a `make run` beside it leaves free.
    config = tmp_path / "gateway.yaml"
    admin_http, idp_port = local_config_on_free_ports(config)
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
            # Every sidecar worker's own /metrics endpoint, printed in full.
            metrics = re.findall(r"metrics +(http://[\d.]+:\d+/metrics)", stderr_path.read_text())
            assert len(metrics) == len(set(metrics)) >= 1
            assert "traces    off" in stderr_path.read_text()  # no OTEL_* exporter configured
            # The development IdP beside the dev issuer (config/local.yaml turns it on).
            idp = re.search(r"dev IdP +(http://127\.0\.0\.1:\d+) ", stderr_path.read_text())
            assert idp is not None and idp.group(1) == f"http://127.0.0.1:{idp_port}"
            discovery = httpx.get(f"{idp.group(1)}/.well-known/openid-configuration", timeout=5)
            assert discovery.json()["token_endpoint"] == f"{idp.group(1)}/token"
            # The spend page on this run's admin JSON listener signs in with this run's dev IdP
            # (not with whatever else holds local.yaml's ports), and `gatewayctl login` is told
            # the same IdP.
            page = f"http://127.0.0.1:{admin_http}"
            assert f"spend     {page}/ui/" in stderr_path.read_text()
            signin = httpx.get(f"{page}/ui/login", timeout=10)
            assert signin.status_code == 302, signin.text
            authorize = urlsplit(signin.headers["location"])
            assert f"{authorize.scheme}://{authorize.netloc}" == idp.group(1)
            assert parse_qs(authorize.query)["redirect_uri"] == [f"{page}/ui/callback"]
            published = httpx.get(f"{gateway}/.well-known/llm-gateway", timeout=5).text
            assert f"{idp.group(1)}/.well-known/openid-configuration" in published
            check_run_secrets(tmp_path / "run")
            # The README's demo: mint a token from the local development issuer.
            token = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "gateway_extproc.cli",
                    "token",
                    "--user",
                    "alice@example.com",
                    "--group",
                    "eng",
                    "--dir",
                    str(tmp_path / "run" / "dev-issuer"),
                ],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            ).stdout.strip()
            r = httpx.post(
                gateway + "/v1/chat/completions",
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                headers={"authorization": f"Bearer {token}"},
                timeout=10,
            )
            anonymous = httpx.post(gateway + "/v1/chat/completions", json={"model": "gpt-4o-mini"})
            assert anonymous.status_code == 401
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
            # Both requests are recorded before their responses leave: one scrape sees them.
            assert sum(_requests_total(url) for url in metrics) == 2
            proc.send_signal(signal.SIGINT)  # what Ctrl-C delivers
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                # Ctrl-C, as a person would: gatewayctl stops its children (they run in their
                # own sessions, so killing it alone would leave them running after a failure).
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    assert proc.returncode == 0
    audit = [json.loads(line) for line in out.splitlines() if line.startswith(b"{")]
    mine = [a for a in audit if a["request_id"] == r.headers["x-gateway-request-id"]]
    assert len(mine) == 1 and mine[0]["cost_micros"] > 0 and mine[0]["usage_source"] == "provider"
    assert mine[0]["identity"]["user"] == "alice@example.com"
    assert mine[0]["identity"]["issuer"] == "dev" and mine[0]["identity"]["groups"] == ["eng"]
    assert not _port_open(gateway) and not _port_open(admin.group(1))
    assert not _port_open(idp.group(1)) and not _port_open(page)
