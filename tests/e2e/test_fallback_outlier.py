"""Outlier detection on a fallback chain end to end (issue 26, docs/fallback.md): after N 500s
from a chain's first target, Envoy ejects it and the next request - which that target would now
answer - is served by the fallback in ONE attempt, audited so. Real Envoy, sidecar, redis, the
mock (`x-mock-fault`), the openai SDK; its own small stack (the ejection is the cluster's state,
which test_fallback.py's tests must not share)."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from gateway_extproc.stack import Stack
from tests.e2e.conftest import start_stack, static_tokens_yaml
from tests.e2e.harness import AuditLog, MockLog

pytestmark = pytest.mark.e2e
EJECT_AFTER = 2
CONFIG = f"""
identity:
  static_tokens:
{static_tokens_yaml()}sidecar: {{workers: 1}}
fallback:
  chains:
    gpt-4o: [openai/gpt-4o, openai/gpt-4o-mini]
  outlier:
    consecutive_5xx: {EJECT_AFTER}
    interval_s: 0.1
    base_ejection_s: 60  # outlasts the test: nothing un-ejects it meanwhile
"""
ASK = [{"role": "user", "content": "hi"}]
EJECTED = "cluster.chain_gpt-4o.outlier_detection.ejections_active"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp_path = tmp_path_factory.mktemp("fallback-outlier")
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG)
    s = start_stack(tmp_path / "run", config_path=config)
    yield s
    s.stop()


def _stat(stack: Stack, name: str) -> int:
    url = f"{stack.admin_url}/stats?format=json&filter=^{name.replace('.', '[.]')}$"
    with urllib.request.urlopen(url, timeout=5) as r:
        found = json.load(r)["stats"]
    return int(found[0]["value"]) if found else 0


def _attempts(record: dict[str, Any]) -> list[tuple[str, int]]:
    return [(a["target"], a["status"]) for a in record["attempts"]]


def test_a_target_failing_n_times_is_ejected_and_skipped(stack: Stack) -> None:
    audit = AuditLog(stack.run_dir / "audit.jsonl")
    assert stack.mock_url is not None
    mock = MockLog(stack.mock_url.removesuffix("/v1"))
    client = openai.OpenAI(base_url=stack.gateway_url + "/v1", api_key="client-key", max_retries=0)
    try:

        def ask(fault: str) -> dict[str, Any]:
            mock.clear()
            headers = {"x-mock-fault": fault} if fault else {}
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=ASK, extra_headers=headers
            )
            assert raw.status_code == 200
            return audit.wait_for(raw.headers["x-gateway-request-id"])

        for _ in range(EJECT_AFTER):
            record = ask("gpt-4o=500")
            assert _attempts(record) == [("openai/gpt-4o", 500), ("openai/gpt-4o-mini", 200)]
        # Envoy's main thread ejects after the attempt answered: wait for it, bounded.
        deadline = time.monotonic() + 5
        while _stat(stack, EJECTED) != 1:
            assert time.monotonic() < deadline, "the primary was not ejected"
            time.sleep(0.01)

        record = ask("")  # gpt-4o would answer now: it is not asked
        assert record["served_by"] == "openai/gpt-4o-mini"
        assert _attempts(record) == [("openai/gpt-4o-mini", 200)]
        assert record["attempts"][0]["cost_micros"] == record["cost_micros"] > 0
        assert [r["body"]["model"] for r in mock.requests()] == ["gpt-4o-mini"]
    finally:
        client.close()
