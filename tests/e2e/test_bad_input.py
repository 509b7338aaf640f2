"""Bad input gets a clear JSON error in the client's API format: never a crash, never a hang."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest

from gateway_extproc.stack import Stack
from tests.e2e.conftest import start_stack
from tests.e2e.harness import AuditLog, MockLog

pytestmark = pytest.mark.e2e
CHAT = "/v1/chat/completions"


def post(stack: Stack, path: str, content: bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        stack.gateway_url + path,
        content=content,
        headers={"content-type": "application/json", **headers},
        timeout=30,
    )


@pytest.mark.parametrize(
    "body, fragment",
    [
        (b"{not json", "not valid JSON"),
        (b"", "empty"),
        (b"[1, 2]", "JSON object"),
        (b'{"messages": []}', "`model` is required"),
        (b'{"model": "gpt-4o", "stream": "yes"}', "`stream` must be a boolean"),
        (b'{"model": "gpt-4o", "max_tokens": -1}', "non-negative integer"),
    ],
)
def test_malformed_openai_request(
    stack: Stack, audit: AuditLog, body: bytes, fragment: str
) -> None:
    r = post(stack, CHAT, body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert fragment in err["message"] and err["code"] == "invalid_request"
    assert audit.wait_for(r.headers["x-gateway-request-id"])["status"] == 400


def test_malformed_anthropic_request(stack: Stack) -> None:
    r = post(stack, "/v1/messages", b"{oops", **{"anthropic-version": "2023-06-01"})
    assert r.status_code == 400
    doc = r.json()
    assert doc["type"] == "error" and doc["error"]["type"] == "invalid_request_error"
    assert "not valid JSON" in doc["error"]["message"]


def test_unknown_model_names_the_model(oai: openai.OpenAI, audit: AuditLog) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        oai.chat.completions.create(
            model="gpt-imaginary-7", messages=[{"role": "user", "content": "x"}]
        )
    assert "gpt-imaginary-7" in exc.value.message
    assert exc.value.code == "model_not_found"


def test_unknown_path_is_a_clear_404(stack: Stack) -> None:
    r = httpx.get(stack.gateway_url + "/v1/fine_tuning/jobs", timeout=10)
    assert r.status_code == 404
    assert "does not serve GET /v1/fine_tuning/jobs" in r.json()["error"]["message"]
    r = httpx.get(stack.gateway_url + CHAT, timeout=10)
    assert r.status_code == 404 and "POST only" in r.json()["error"]["message"]


def test_body_over_the_limit_is_413_json(stack: Stack) -> None:
    limit = stack.config.limits.max_request_body_bytes
    body = b'{"model": "gpt-4o", "pad": "' + b"a" * limit + b'"}'
    r = post(stack, CHAT, body)
    assert r.status_code == 413
    err = r.json()["error"]
    assert err["code"] == "request_too_large" and str(limit) in err["message"]
    r = post(stack, "/v1/messages", body, **{"anthropic-version": "2023-06-01"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"


@pytest.mark.parametrize(
    "status, exc_type",
    [
        (400, openai.BadRequestError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
    ],
)
def test_upstream_errors_pass_through_unchanged(
    stack: Stack, oai: openai.OpenAI, audit: AuditLog, status: int, exc_type: type[Exception]
) -> None:
    assert stack.mock_url is not None
    body = json.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    ).encode()
    direct = httpx.post(
        stack.mock_url + "/chat/completions",
        content=body,
        headers={"x-mock-status": str(status), "content-type": "application/json"},
    )
    via = post(stack, CHAT, body, **{"x-mock-status": str(status)})
    assert via.status_code == direct.status_code == status
    assert via.json() == direct.json()
    rec = audit.wait_for(via.headers["x-gateway-request-id"])
    assert rec["status"] == status and rec["usage_source"] == "none" and rec["cost_micros"] == 0
    with pytest.raises(exc_type):
        oai.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-mock-status": str(status)},
        )


def test_client_credentials_and_internal_headers_never_reach_the_provider(
    stack: Stack, mock: MockLog, audit: AuditLog
) -> None:
    body = json.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    ).encode()
    r = post(
        stack,
        CHAT,
        body,
        authorization="Bearer client-key",
        **{
            "x-api-key": "another-client-key",
            "x-gateway-cluster": "provider_anthropic",
            "x-gateway-user": "mallory",
            "accept-encoding": "gzip",
        },
    )
    assert r.status_code == 200, r.text
    seen = mock.last()
    assert seen["path"] == "/v1/chat/completions"
    headers = seen["headers"]
    assert not [h for h in headers if h.startswith("x-gateway-")]
    assert "authorization" not in headers and "x-api-key" not in headers
    # Providers must answer identity-encoded bodies, or the sidecar would meter gzip bytes.
    assert "accept-encoding" not in headers
    rec = audit.wait_for(r.headers["x-gateway-request-id"])
    assert rec["provider"] == "openai" and rec["usage_source"] == "provider"
    # ...while the client still gets gzip from Envoy's compressor when it asks for it.
    assert r.headers.get("content-encoding") == "gzip"


def test_gzip_for_the_client_with_metering_intact(stack: Stack, audit: AuditLog) -> None:
    body = json.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    ).encode()
    headers = {"accept-encoding": "gzip", "content-type": "application/json"}
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", stack.gateway_url + CHAT, content=body, headers=headers) as r,
    ):
        raw = b"".join(r.iter_raw())
    assert r.headers["content-encoding"] == "gzip"
    usage = json.loads(gzip.decompress(raw))["usage"]
    rec = audit.wait_for(r.headers["x-gateway-request-id"])
    assert rec["tokens"]["output_tokens"] == usage["completion_tokens"] > 0
    assert rec["usage_source"] == "provider"


def test_no_body_on_a_metered_path(stack: Stack) -> None:
    r = httpx.post(stack.gateway_url + CHAT, timeout=10)
    assert r.status_code == 400 and "empty" in r.json()["error"]["message"]


@pytest.fixture(scope="module")
def stack_without_sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("nosidecar"), start_sidecar=False)
    yield s
    s.stop()


def test_sidecar_down_is_a_fast_clear_503(stack_without_sidecar: Stack) -> None:
    timeout_s = stack_without_sidecar.config.limits.ext_proc_message_timeout_ms / 1000
    body = b'{"model": "gpt-4o-mini", "messages": []}'
    started = time.monotonic()
    r = post(stack_without_sidecar, CHAT, body)
    assert time.monotonic() - started < timeout_s + 1
    assert r.status_code == 503 and r.json()["error"]["code"] == "gateway_unavailable"
    client = anthropic.Anthropic(
        base_url=stack_without_sidecar.gateway_url, api_key="k", max_retries=0
    )
    with client, pytest.raises(anthropic.InternalServerError) as exc:
        client.messages.create(
            model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert exc.value.status_code == 503 and "unavailable" in exc.value.message
