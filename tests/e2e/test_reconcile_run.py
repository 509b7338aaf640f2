"""Issue 28's done-when, end to end: a mixed run through the real stack (Envoy, the sidecar,
redis-server, the mock provider) with both official SDKs - JSON, streams, a cut stream, a cache
hit, OpenAI and Anthropic - then `gatewayctl reconcile` as a user runs it against `make run`
(no flags but the day): 100.0 % capture and nothing unexplained for the exact endings, the cut
stream's over-charge explained by its estimate (the bound it was charged), never unexplained;
then each injected discrepancy (a price change, a dropped day, a leaked key's traffic) reported
by the same command AND posted to the alert webhook once. One stack; the sidecar reconciles
(RunReconciliation through the admin API), the stack gives the mock and the sidecar their
admin keys as `make run` does."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import anthropic
import httpx
import openai
import pytest

from gateway_extproc.identity.devissuer import ensure_dev_issuer
from gateway_extproc.spend.query import Dimension, aggregate
from gateway_extproc.stack import Stack
from tests.e2e.conftest import start_stack
from tests.e2e.harness import eventually
from tests.e2e.test_reconcile import _rollup_day

pytestmark = pytest.mark.e2e
CONFIG = """
identity: {{dev_issuer: true}}
admin_api: {{enabled: true}}
cache:
  rules:
    - name: eng
      match: {{groups: [eng]}}
      ttl: 1h
reconcile:
  providers:
    openai: {{base_url: mock, projects: [proj_default]}}
    anthropic: {{base_url: mock, workspaces: [default]}}
  alert:
    unexplained_pct: 0.5
    outside_usd_per_day: 0
    webhook: {webhook}
"""
EXACT = {"x-mock-input-tokens": "100", "x-mock-output-tokens": "10"}


def messages(text: str) -> list[Any]:
    """Each request its own prompt: the cache (rule `eng`) answers a repeated one."""
    return [{"role": "user", "content": text}]


class Hooks(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        Hooks.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def webhook() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/s3cret-path"
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, webhook: str) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("reconcile-run")
    run_dir = tmp / "run"
    ensure_dev_issuer(run_dir / "dev-issuer")
    config = tmp / "gateway.yaml"
    config.write_text(CONFIG.format(webhook=webhook))
    s = start_stack(run_dir, config_path=config, admin_api_port=0)
    yield s
    s.stop()


def gatewayctl(stack: Stack, *argv: str) -> Any:
    """As a user runs it against `make run`: the address and the run directory from the
    environment, the credential minted by the development issuer."""
    env = {**os.environ, "GATEWAY_RUN_DIR": str(stack.run_dir)}
    env["GATEWAY_ADMIN_ADDRESS"] = stack.admin_api_address
    env.pop("GATEWAY_ADMIN_TOKEN", None)
    done = subprocess.run(
        [sys.executable, "-m", "gateway_extproc.cli", "reconcile", *argv, "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def switches(stack: Stack, path: str = "/_mock/reports", **doc: Any) -> None:
    assert stack.mock_url is not None
    root = stack.mock_url.removesuffix("/v1")
    r = httpx.post(root + path, json=doc) if doc else httpx.delete(root + path)
    assert r.status_code == 200, r.text


def bills(stack: Stack) -> list[Any]:
    assert stack.mock_url is not None
    return list(httpx.get(stack.mock_url.removesuffix("/v1") + "/_mock/bills").json())


def by_model(report: Any, provider: str) -> dict[str, Any]:
    (day,) = [d for d in report["days"] if d["provider"] == provider]
    return {r["model"]: r for r in [*day["rows"], day["total"]]}


def cut_stream(stack: Stack, token: str) -> None:
    """A gpt-4o stream the client leaves after 20 events; the mock bills 200 more words."""
    headers = {
        "authorization": f"Bearer {token}",
        "x-mock-output-tokens": "3000",
        "x-mock-chunk-delay-ms": "10",
        "x-mock-generates-after-cut": "200",
    }
    body = {"model": "gpt-4o", "messages": messages("A long story"), "stream": True}
    with httpx.stream(
        "POST", stack.gateway_url + "/v1/chat/completions", json=body, headers=headers, timeout=60
    ) as response:
        assert response.status_code == 200
        seen = 0
        for line in response.iter_lines():
            seen += line.startswith("data: ")
            if seen == 20:
                break


def test_a_mixed_run_reconciles_and_each_discrepancy_is_reported_and_alerted(
    stack: Stack,
) -> None:
    issuer = ensure_dev_issuer(stack.run_dir / "dev-issuer")
    token = issuer.mint("alice@example.com", ["eng"], None, 3600, {}, time.time())
    oai = openai.OpenAI(base_url=stack.gateway_url + "/v1", api_key=token, max_retries=0)
    claude = anthropic.Anthropic(base_url=stack.gateway_url, api_key=token, max_retries=0)
    day = dt.datetime.now(dt.UTC).date().isoformat()

    hit = {**EXACT, "x-mock-input-tokens": "200"}
    for _ in range(2):  # the second is a cache hit: the provider never sees it, nor bills it
        oai.chat.completions.create(
            model="gpt-4o-mini", messages=messages("Once"), extra_headers=hit
        )
    with oai.chat.completions.create(
        model="gpt-4o-mini", messages=messages("Stream"), stream=True, extra_headers=EXACT
    ) as stream:
        assert [c for c in stream]
    claude.messages.create(
        model="claude-haiku-4-5", max_tokens=50, messages=messages("JSON"), extra_headers=EXACT
    )
    cached = {**EXACT, "x-mock-cached-tokens": "1000", "x-mock-cache-write-tokens": "200"}
    with claude.messages.stream(
        model="claude-haiku-4-5", max_tokens=50, messages=messages("Cached"), extra_headers=cached
    ) as s:
        s.get_final_message()
    cut_stream(stack, token)
    oai.close()
    claude.close()

    def settled() -> bool:  # the cut stream (the only estimate) is rolled up, and billed
        days = asyncio.run(_rollup_day(stack, dt.date.fromisoformat(day)))
        rows = aggregate(days, [Dimension("model")], [])
        cut = [r for r in rows if r.key == ("gpt-4o",)]
        return bool(cut) and cut[0].totals["estimated_cost_micros"] > 0 and len(bills(stack)) == 5

    eventually(settled, what="the cut stream settled and billed", timeout=30)
    if day != dt.datetime.now(dt.UTC).date().isoformat():
        pytest.fail("the UTC day turned during the test: run it again")
    report = gatewayctl(stack, "--day", day)
    openai_rows, anthropic_rows = by_model(report, "openai"), by_model(report, "anthropic")
    # Exact endings, a cache hit among them: all captured, to the micro-dollar and the token.
    for row in (openai_rows["gpt-4o-mini"], anthropic_rows["claude-haiku-4-5"]):
        assert (row["capture_rate"], row["difference_micros"], row["unexplained_micros"]) == (
            "100.0 %",
            0,
            0,
        ), row
        for kind in ("input", "cached_input", "output"):
            assert row[f"gateway_{kind}_tokens"] == row[f"provider_{kind}_tokens"], row
    assert openai_rows["gpt-4o-mini"]["provider_requests"] == 2  # the hit never reached it
    assert anthropic_rows["*"]["capture_rate"] == "100.0 %"
    # The cut stream: charged its bound, above the bill; the whole over-charge explained.
    cut = openai_rows["gpt-4o"]
    assert cut["gateway_cost_micros"] > cut["provider_cost_micros"] > 0
    assert cut["estimated_cost_micros"] == cut["gateway_cost_micros"]
    assert cut["estimates_usd"] == cut["difference_usd"] and cut["unexplained_micros"] == 0
    assert openai_rows["*"]["unexplained_micros"] == 0
    assert Hooks.received == []  # nothing drifted
    shown = gatewayctl(stack, "--day", day, "--show")  # stored: read without a provider call
    assert shown["days"] == report["days"] and shown["missing"] == []

    # A price change the catalog missed: unexplained, alerted.
    switches(stack, price_factor={"openai": "1.5"})
    row = by_model(gatewayctl(stack, "--day", day, "--provider", "openai"), "openai")["*"]
    assert row["unexplained_micros"] < 0 and row["capture_rate"] != "100.0 %"
    # A dropped day: the provider reports nothing; the gateway's spend is unexplained, alerted.
    switches(stack, dropped_days=[["anthropic", day]])
    row = by_model(gatewayctl(stack, "--day", day, "--provider", "anthropic"), "anthropic")["*"]
    assert row["capture_rate"] is None and row["unexplained_micros"] == row["gateway_cost_micros"]
    switches(stack)
    # A leaked key's traffic in another workspace: explained as outside the gateway, alerted.
    switches(
        stack,
        "/_mock/reports/served",
        provider="anthropic",
        day=day,
        model="claude-haiku-4-5-20251001",
        api_key="sk-ant-api03-leaked",
        project="wrkspc_shadow",
        tokens={"input_tokens": 1000, "output_tokens": 100},
    )
    row = by_model(gatewayctl(stack, "--day", day, "--provider", "anthropic"), "anthropic")["*"]
    assert row["outside_cost_micros"] == 1500 and row["unexplained_micros"] == 0

    eventually(lambda: len(Hooks.received) >= 3, what="three drift alerts", timeout=20)
    alerts = sorted((h["provider"], h["kind"], h["day"]) for h in Hooks.received)
    assert alerts == [
        ("anthropic", "outside", day),
        ("anthropic", "unexplained", day),
        ("openai", "unexplained", day),
    ]
