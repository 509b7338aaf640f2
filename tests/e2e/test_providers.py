"""Providers are configuration: real-shaped providers get the gateway's credential injected,
and a self-hosted OpenAI-compatible server is one config entry plus a catalog entry (a `free`
one is metered at zero cost). Audio is refused, as docs/decisions.md says, until it is metered."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from gateway_extproc.stack import Stack
from tests.e2e.conftest import stack_environ, start_stack, static_tokens_yaml
from tests.e2e.harness import AuditLog, MockLog, running_mock, tokens

pytestmark = pytest.mark.e2e
OPENAI_KEY = "sk-gateway-owned-openai-key"
ANTHROPIC_KEY = "sk-ant-gateway-owned-key"


@pytest.fixture(scope="module")
def keyed_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A provider that refuses any request without the gateway's own keys."""
    keys = ("--openai-key", OPENAI_KEY, "--anthropic-key", ANTHROPIC_KEY)
    with running_mock(tmp_path_factory.mktemp("keyed-mock"), *keys) as url:
        yield url


@pytest.fixture(scope="module")
def open_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A self-hosted server that needs no credential (as a local Ollama or vLLM)."""
    with running_mock(tmp_path_factory.mktemp("open-mock")) as url:
        yield url


@pytest.fixture(scope="module")
def configured_stack(
    tmp_path_factory: pytest.TempPathFactory, keyed_mock: str, open_mock: str
) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("configured")
    key_file = run_dir / "anthropic.key"
    key_file.write_text(ANTHROPIC_KEY + "\n")
    catalog = run_dir / "catalog.yaml"
    catalog.write_text(
        "models:\n"
        "  local-llama-70b:\n"
        "    provider: vllm\n    schema: openai\n    max_output_tokens: 4096\n    free: true\n"
        "  local-qwen-7b:\n"
        "    provider: ollama\n    schema: openai\n    max_output_tokens: 4096\n    free: true\n"
    )
    config = run_dir / "gateway.yaml"
    config.write_text(
        f"""
mock_unconfigured_providers: false
identity:
  static_tokens:
{static_tokens_yaml()}providers:
  openai:
    base_url: {keyed_mock}/v1
    auth: {{header: authorization, prefix: "Bearer ", env: TEST_GATEWAY_OPENAI_KEY}}
  anthropic:
    base_url: {keyed_mock}/v1
    auth: {{header: x-api-key, file: {key_file}}}
  vllm:
    schema: openai
    base_url: {keyed_mock}/v1
    auth: null
  ollama:
    schema: openai
    base_url: {open_mock}/v1
    auth: null
    forward_headers: ["x-mock-*"]  # a mock standing in for Ollama: let its controls through
catalog:
  files: [{catalog}]
"""
    )
    env = stack_environ(run_dir, TEST_GATEWAY_OPENAI_KEY=OPENAI_KEY)
    s = start_stack(run_dir, config_path=config, environ=env)
    yield s
    s.stop()


def test_gateway_injects_provider_keys(configured_stack: Stack, keyed_mock: str) -> None:
    mock = MockLog(keyed_mock)
    audit = AuditLog(configured_stack.run_dir / "audit.jsonl")
    with openai.OpenAI(
        base_url=configured_stack.gateway_url + "/v1", api_key="client-key", max_retries=0
    ) as oai:
        raw = oai.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    assert raw.parse().choices[0].message.content
    assert mock.last()["headers"]["authorization"] == f"Bearer {OPENAI_KEY}"
    rec = audit.wait_for(raw.headers["x-gateway-request-id"])
    assert rec["upstream_mocked"] is False and rec["provider"] == "openai"

    with anthropic.Anthropic(
        base_url=configured_stack.gateway_url, api_key="client-key", max_retries=0
    ) as claude:
        msg = claude.messages.create(
            model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert msg.usage.output_tokens == 10
    seen = mock.last()["headers"]
    assert seen["x-api-key"] == ANTHROPIC_KEY and "authorization" not in seen


def test_self_hosted_provider_is_one_config_entry(configured_stack: Stack, keyed_mock: str) -> None:
    mock = MockLog(keyed_mock)
    audit = AuditLog(configured_stack.run_dir / "audit.jsonl")
    with openai.OpenAI(
        base_url=configured_stack.gateway_url + "/v1", api_key="client-key", max_retries=0
    ) as oai:
        # The vLLM entry has no credential: the keyed mock refuses the request, and the 401
        # comes back to the client unchanged (and is recorded).
        with pytest.raises(openai.AuthenticationError):
            oai.chat.completions.create(
                model="local-llama-70b", messages=[{"role": "user", "content": "hi"}]
            )
        assert "authorization" not in mock.last()["headers"]
        ids = {m.id for m in oai.models.list()}
    assert "local-llama-70b" in ids
    # Audited by the observer once the error response has passed (observe mode): wait for it.
    deadline = time.monotonic() + 15
    while not (found := [r for r in audit.records() if r["requested_model"] == "local-llama-70b"]):
        assert time.monotonic() < deadline, "no audit record for the refused request"
        time.sleep(0.05)
    rec = found[-1]
    assert rec["provider"] == "vllm" and rec["status"] == 401 and rec["cost_micros"] == 0


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_free_self_hosted_model_is_served_and_metered_at_zero_cost(
    configured_stack: Stack, open_mock: str, stream: bool
) -> None:
    mock = MockLog(open_mock)
    audit = AuditLog(configured_stack.run_dir / "audit.jsonl")
    body = {"model": "local-qwen-7b", "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body["stream"] = True
    r = httpx.post(
        configured_stack.gateway_url + "/v1/chat/completions",
        json=body,
        headers={"authorization": "Bearer client-key", "x-mock-output-tokens": "25"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    # A JSON answer is metered before its headers leave (its cost header: $0); a stream's headers
    # leave before the cost is known, and the audit has it.
    if stream:
        assert "x-gateway-cost-usd" not in r.headers
    else:
        assert r.headers["x-gateway-cost-usd"] == "0.000000"
    served = mock.last()
    assert served["body"]["model"] == "local-qwen-7b" and "authorization" not in served["headers"]
    rec = audit.wait_for(r.headers["x-gateway-request-id"])
    assert (rec["provider"], rec["served_model"], rec["status"]) == ("ollama", "local-qwen-7b", 200)
    # Metered like any model (the server's usage report, 25 tokens out), priced at zero.
    assert rec["usage_source"] == "provider" and rec["completed"] is True
    assert rec["tokens"]["output_tokens"] == 25 and rec["tokens"]["input_tokens"] > 0
    assert rec["tokens"] == tokens(rec["tokens"]["input_tokens"], output=25)
    assert (rec["cost_micros"], rec["cost_usd"]) == (0, "0.000000")


# docs/decisions.md: "audio chat models are left out rather than mis-priced" and
# "other provider paths (audio, images, files, batches) get a clear 404 until they are metered".
@pytest.mark.parametrize("model", ["gpt-4o-audio-preview", "gpt-4o-audio-preview-2025-06-03"])
def test_audio_chat_models_are_refused_as_unknown(stack: Stack, mock: MockLog, model: str) -> None:
    mock.clear()
    body = {
        "model": model,
        "modalities": ["text", "audio"],
        "messages": [{"role": "user", "content": "hi"}],
    }
    r = httpx.post(stack.gateway_url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "model_not_found" and model in r.json()["error"]["message"]
    assert mock.received() == []  # never sent to the provider


@pytest.mark.parametrize(
    "path", ["/v1/audio/transcriptions", "/v1/audio/translations", "/v1/audio/speech"]
)
def test_audio_endpoints_are_a_clear_404(stack: Stack, mock: MockLog, path: str) -> None:
    mock.clear()
    r = httpx.post(
        stack.gateway_url + path,
        json={"model": "gpt-4o-mini-tts", "input": "hi", "voice": "alloy"},
        timeout=30,
    )
    assert r.status_code == 404, r.text
    error = r.json()["error"]
    assert error["code"] == "not_found" and path in error["message"]
    assert mock.received() == []


def test_missing_key_is_a_startup_error_when_the_mock_is_off(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    # Providers the file names need their keys (a built-in one it does not name is left out).
    config.write_text(
        "mock_unconfigured_providers: false\nproviders: {openai: {}, anthropic: {}}\n"
    )
    env = {k: v for k, v in stack_environ(tmp_path).items() if not k.endswith("_API_KEY")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway_extproc.cli",
            "envoy-config",
            "--config",
            str(config),
            "--mock-url",
            "http://127.0.0.1:1/v1",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 2
    assert (
        "providers.openai.auth: no credential in environment variable OPENAI_API_KEY"
        in result.stderr
    )
    assert "providers.anthropic.auth" in result.stderr
