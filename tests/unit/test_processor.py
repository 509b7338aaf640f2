"""`StreamProcessor.handle()` driven with ext_proc messages shaped as Envoy sends them, and the
audit line each request leaves behind. No gRPC, no Envoy: one processor per simulated stream."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import gzip
import hashlib
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from gateway_extproc.audit import AuditSink
from gateway_extproc.catalog.models import Catalog
from gateway_extproc.config.gateway import GatewayConfig, load_document, merge, parse_config
from gateway_extproc.config.upstreams import resolve_upstreams
from gateway_extproc.extproc.context import GatewayContext
from gateway_extproc.identity.authenticator import Authenticator
from gateway_extproc.request import route as route_module
from gateway_extproc.request.processor import StreamProcessor
from gateway_extproc.request.route import CLUSTER_HEADER
from gateway_extproc.response import body as response_body_module
from gateway_extproc.runtime import build_gate
from gateway_extproc.tokens import Usage
from tests.paths import STREAMS
from tests.sidecar_secrets import sidecar_auth

MOCK = "http://127.0.0.1:9/v1"
OPENAI_KEY = "sk-proc-test-0123456789"
RID = "req-0001"
WALL = 1_700_000_000.0  # 2023-11-14T22:13:20Z

# A catalog of the tests' own, so prices and names do not move with the shipped catalog.
CATALOG_DOC = {
    "models": {
        "gpt-test": {
            "provider": "openai",
            "schema": "openai",
            "max_output_tokens": 1000,
            "input": 2.5,
            "cached_input": 1.25,
            "output": 10,
            "aliases": ["gpt-test-latest"],
        },
        "claude-test": {
            "provider": "anthropic",
            "schema": "anthropic",
            "max_output_tokens": 1000,
            "input": 3,
            "cached_input": 0.3,
            "cache_write": 3.75,
            "output": 15,
        },
        "embed-test": {"provider": "openai", "schema": "openai", "embedding": True, "input": 0.02},
        # Its provider has no upstream: never listed, never served.
        "local-test": {
            "provider": "local",
            "schema": "openai",
            "max_output_tokens": 100,
            "free": True,
        },
    }
}


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def handle(p: StreamProcessor, message: pb.ProcessingRequest) -> pb.ProcessingResponse:
    """One message through the processor (async only to await a JWKS refresh)."""
    return asyncio.run(p.handle(message))


@dataclasses.dataclass
class Gateway:
    ctx: GatewayContext
    clock: Clock
    audit_path: Path

    def processor(self) -> StreamProcessor:
        return StreamProcessor(self.ctx)

    def records(self) -> list[dict[str, Any]]:
        assert self.ctx.audit.flush(timeout_s=10)  # lines are written by the audit thread
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]

    def record(self) -> dict[str, Any]:
        (only,) = self.records()
        return only


def _gateway(tmp_path: Path, config: GatewayConfig, environ: dict[str, str]) -> Iterator[Gateway]:
    audit_path = tmp_path / "audit.jsonl"
    clock = Clock()
    ctx = GatewayContext(
        config=config,
        catalog=Catalog.from_documents([("test-catalog", CATALOG_DOC)]),
        upstreams=resolve_upstreams(config, environ, MOCK),
        audit=AuditSink(stdout=False, path=str(audit_path)),
        authenticator=Authenticator(config.identity),
        budgets=build_gate(config),
        sidecar_auth=sidecar_auth(),
        monotonic=clock,
        wall_clock=lambda: WALL,
    )
    try:
        yield Gateway(ctx, clock, audit_path)
    finally:
        ctx.audit.close()


@pytest.fixture(scope="module")
def config() -> GatewayConfig:
    """The built-in config; callers are anonymous or hold the static token `sk-client`
    (identity has its own tests below)."""
    client = {"sha256": hashlib.sha256(b"sk-client").hexdigest()}
    identity = {"allow_anonymous": True, "static_tokens": {"test-client": client}}
    # Synchronous mode: one processor answers every phase, which these tests drive message by
    # message; test_observer.py drives the same response side in observe mode.
    metering = {"mode": "synchronous", "unseen_output_tokens": MARGIN}
    doc = {"identity": identity, "metering": metering}
    return parse_config(merge(load_document(None), doc), {})


MARGIN = 100  # metering.unseen_output_tokens: below gpt-test's output limit of 1,000


@pytest.fixture
def gw(tmp_path: Path, config: GatewayConfig) -> Iterator[Gateway]:
    """No provider keys: every provider is served by the mock."""
    yield from _gateway(tmp_path, config, {})


@pytest.fixture
def keyed(tmp_path: Path, config: GatewayConfig) -> Iterator[Gateway]:
    """OPENAI_API_KEY set: the OpenAI upstream is real-shaped (TLS, credential)."""
    yield from _gateway(tmp_path, config, {"OPENAI_API_KEY": OPENAI_KEY})


# --- ext_proc messages as Envoy sends them -------------------------------------------------------


def _header_map(headers: dict[str, str]) -> base_pb2.HeaderMap:
    # Envoy puts header values in raw_value (bytes) and leaves value empty.
    return base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]
    )


def req_headers(
    path: str,
    method: str = "POST",
    extra: dict[str, str] | None = None,
    *,
    end: bool = False,
    request_id: str | None = RID,
) -> pb.ProcessingRequest:
    headers = {":method": method, ":path": path, ":authority": "gateway", ":scheme": "http"}
    if request_id is not None:
        headers["x-request-id"] = request_id
    if method == "POST":
        headers["content-type"] = "application/json"
    headers.update(extra or {})
    return pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(headers=_header_map(headers), end_of_stream=end)
    )


def req_body(body: bytes | dict[str, Any]) -> pb.ProcessingRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return pb.ProcessingRequest(request_body=pb.HttpBody(body=raw, end_of_stream=True))


def resp_headers(
    status: int = 200,
    content_type: str = "application/json",
    extra: dict[str, str] | None = None,
    *,
    end: bool = False,
) -> pb.ProcessingRequest:
    headers = {":status": str(status), "content-type": content_type, **(extra or {})}
    return pb.ProcessingRequest(
        response_headers=pb.HttpHeaders(headers=_header_map(headers), end_of_stream=end)
    )


def resp_body(chunk: bytes, *, end: bool = False) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(response_body=pb.HttpBody(body=chunk, end_of_stream=end))


def set_headers(mutation: pb.HeaderMutation) -> dict[str, str]:
    out = {}
    for option in mutation.set_headers:
        # Overwrite, never append: a client's own header must not survive beside ours.
        assert option.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
        out[option.header.key] = option.header.raw_value.decode()
    return out


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def fixture(name: str) -> bytes:
    return (STREAMS / name).read_bytes()


CHAT_PATH = "/v1/chat/completions"
MESSAGES_PATH = "/v1/messages"
CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "Hello there"}]}
# The input estimate for CHAT (docs/budgets.md, "How each ending is charged"): "user" +
# "Hello there" = 15 characters -> 4 tokens, + 4 for the one message.
CHAT_INPUT_ESTIMATE = 8
# Its input bound (bounds.py): the UTF-8 bytes of every key and string - "model" "gpt-test"
# "messages" "role" "user" "content" "Hello there" = 47 - + 16 per request + 8 per message.
CHAT_INPUT_BOUND = 47 + 16 + 8
STREAM_INPUT_BOUND = CHAT_INPUT_BOUND + len("stream") + len("True")  # {**CHAT, "stream": True}


def gpt_test_cost(input_tokens: int, output_tokens: int) -> int:
    """gpt-test: $2.50 input, $10 output per million tokens, in micro-dollars rounded half up."""
    return (input_tokens * 2_500_000 + output_tokens * 10_000_000 + 500_000) // 1_000_000


MESSAGES = {
    "model": "claude-test",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "Hello there"}],
}


def forward(
    p: StreamProcessor, path: str, body: dict[str, Any], extra: dict[str, str] | None = None
) -> pb.CommonResponse:
    """Headers and body phases of a request the gateway forwards; the body phase's reply."""
    first = handle(p, req_headers(path, extra=extra))
    assert first.WhichOneof("response") == "request_headers"
    second = handle(p, req_body(body))
    assert second.WhichOneof("response") == "request_body", second
    return second.request_body.response


# --- request headers -----------------------------------------------------------------------------

# (id, client headers, headers removed)
HEADER_REMOVALS: list[tuple[str, dict[str, str], set[str]]] = [
    ("nothing to remove", {}, {"accept-encoding"}),
    (
        "credentials",
        {"authorization": "Bearer sk-client", "x-api-key": "sk-ant-client", "api-key": "az"},
        {"authorization", "x-api-key", "api-key", "accept-encoding"},
    ),
    ("google key", {"x-goog-api-key": "g"}, {"x-goog-api-key", "accept-encoding"}),
    ("accept-encoding", {"accept-encoding": "gzip, br"}, {"accept-encoding"}),
    (
        "gateway headers",
        {CLUSTER_HEADER: "provider_anthropic", "x-gateway-budget": "x", "X-Gateway-Team": "t"},
        {CLUSTER_HEADER, "x-gateway-budget", "x-gateway-team", "accept-encoding"},
    ),
    (
        "ordinary headers stay",
        {"openai-organization": "org", "anthropic-version": "2023-06-01", "user-agent": "sdk"},
        {"accept-encoding"},
    ),
]


@pytest.mark.parametrize(
    ("extra", "removed"), [h[1:] for h in HEADER_REMOVALS], ids=[h[0] for h in HEADER_REMOVALS]
)
def test_request_headers_removed(gw: Gateway, extra: dict[str, str], removed: set[str]) -> None:
    reply = handle(gw.processor(), req_headers(CHAT_PATH, extra=extra))
    assert reply.WhichOneof("response") == "request_headers"
    common = reply.request_headers.response
    assert set(common.header_mutation.remove_headers) == removed
    assert not common.header_mutation.set_headers
    assert gw.records() == []  # nothing is written before the request ends


# --- request body --------------------------------------------------------------------------------


def test_body_phase_routes_with_credential(keyed: Gateway) -> None:
    p = keyed.processor()
    common = forward(p, CHAT_PATH + "?trace=1", CHAT, {"authorization": "Bearer sk-client"})
    assert set_headers(common.header_mutation) == {
        CLUSTER_HEADER: "provider_openai",
        ":path": "/v1/chat/completions?trace=1",
        "authorization": f"Bearer {OPENAI_KEY}",
    }
    assert common.clear_route_cache is True
    assert not common.HasField("body_mutation")  # unchanged: the client's bytes go upstream


def test_body_phase_drops_headers_the_provider_may_not_see(keyed: Gateway) -> None:
    extra = {"authorization": "Bearer sk-client", "cookie": "c", "x-stainless-os": "Linux"}
    common = forward(keyed.processor(), CHAT_PATH, CHAT, extra)
    # the provider credential is set, not removed; Envoy's own and allowed headers stay
    assert list(common.header_mutation.remove_headers) == ["cookie"]
    assert "authorization" in set_headers(common.header_mutation)


def test_body_phase_refuses_a_billing_header_before_any_reservation(keyed: Gateway) -> None:
    p = keyed.processor()
    handle(p, req_headers(CHAT_PATH, extra={"openai-organization": "org-other"}))
    reply = handle(p, req_body(CHAT))
    assert reply.immediate_response.status.code == 400
    assert json.loads(reply.immediate_response.body)["error"]["code"] == "header_not_allowed"
    assert b"openai-organization" in reply.immediate_response.body
    record = keyed.record()
    assert record["budget"] is None and record["error_code"] == "header_not_allowed"


def test_body_phase_mocked_upstream_gets_no_credential(keyed: Gateway) -> None:
    p = keyed.processor()
    common = forward(p, MESSAGES_PATH, MESSAGES)
    assert set_headers(common.header_mutation) == {
        CLUSTER_HEADER: "provider_anthropic",
        ":path": "/v1/messages",
    }
    assert common.clear_route_cache is True
    assert not common.HasField("body_mutation")


def test_body_phase_alias_and_dated_names(gw: Gateway) -> None:
    for model in ("gpt-test-latest", "gpt-test-2025-01-31"):
        p = gw.processor()
        common = forward(p, CHAT_PATH, {**CHAT, "model": model})
        assert set_headers(common.header_mutation)[CLUSTER_HEADER] == "provider_openai"
        assert not common.HasField("body_mutation")  # the client's model name goes upstream
        assert p.entry is not None and p.entry.name == "gpt-test"


def test_body_mutation_only_when_the_body_changes(gw: Gateway) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_obfuscation": False}}
    common = forward(gw.processor(), CHAT_PATH, body)
    new_body = common.body_mutation.body
    assert orjson.loads(new_body) == {
        **body,
        "stream_options": {"include_obfuscation": False, "include_usage": True},
    }
    headers = set_headers(common.header_mutation)
    assert headers["content-length"] == str(len(new_body))
    assert headers[CLUSTER_HEADER] == "provider_openai"

    asked = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    common = forward(gw.processor(), CHAT_PATH, asked)
    assert not common.HasField("body_mutation")
    assert "content-length" not in set_headers(common.header_mutation)


# --- immediate responses -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rejection:
    id: str
    path: str
    method: str = "POST"
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    body: bytes | None = None  # None: the headers carry end_of_stream
    status: int = 400
    anthropic: bool = False
    code: str = "invalid_request"
    error_type: str = "invalid_request_error"
    message: str = ""  # a substring of the error message


REJECTIONS = [
    Rejection(
        "malformed JSON, OpenAI",
        CHAT_PATH,
        body=b'{"model": "gpt-test",',
        message="request body is not valid JSON",
    ),
    Rejection(
        "malformed JSON, Anthropic",
        MESSAGES_PATH,
        body=b"{nope}",
        anthropic=True,
        message="request body is not valid JSON",
    ),
    Rejection(
        "not an object",
        "/v1/responses",
        body=b"[]",
        message="request body must be a JSON object",
    ),
    Rejection(
        "unknown model, OpenAI",
        CHAT_PATH,
        body=orjson.dumps({**CHAT, "model": "gpt-nope"}),
        code="model_not_found",
        message="model 'gpt-nope' is not in the gateway's catalog",
    ),
    Rejection(
        "unknown model, Anthropic",
        MESSAGES_PATH,
        body=orjson.dumps({**MESSAGES, "model": "claude-nope"}),
        anthropic=True,
        code="model_not_found",
        error_type="not_found_error",
        message="model 'claude-nope' is not in the gateway's catalog",
    ),
    Rejection(
        "model without an upstream",
        CHAT_PATH,
        body=orjson.dumps({**CHAT, "model": "local-test"}),
        code="model_not_found",
        message="model 'local-test' has no configured provider",
    ),
    Rejection(
        "OpenAI model on /v1/messages",
        MESSAGES_PATH,
        body=orjson.dumps({**MESSAGES, "model": "gpt-test"}),
        anthropic=True,
        message="model 'gpt-test' is served through the openai API, not /v1/messages",
    ),
    Rejection(  # chat completions to it are translated (docs/translation.md); Responses are not
        "Anthropic model on /v1/responses",
        "/v1/responses",
        body=orjson.dumps({"model": "claude-test", "input": "hi"}),
        message="model 'claude-test' is served through the anthropic API, not /v1/responses",
    ),
    Rejection(
        "unknown path",
        "/v1/images/generations",
        status=404,
        code="not_found",
        message="the gateway does not serve POST /v1/images/generations",
    ),
    Rejection(
        "unknown path, Anthropic client",
        "/v1/complete",
        headers={"anthropic-version": "2023-06-01"},
        status=404,
        anthropic=True,
        code="not_found",
        error_type="not_found_error",
        message="the gateway does not serve POST /v1/complete",
    ),
    Rejection(
        "root path",
        "/",
        method="GET",
        status=404,
        code="not_found",
        message="the gateway does not serve GET /",
    ),
    Rejection(
        "GET on a POST path",
        CHAT_PATH,
        method="GET",
        status=404,
        code="not_found",
        message="/v1/chat/completions accepts POST only",
    ),
    Rejection(
        "GET on /v1/messages",
        MESSAGES_PATH,
        method="GET",
        status=404,
        anthropic=True,
        code="not_found",
        error_type="not_found_error",
        message="/v1/messages accepts POST only",
    ),
    Rejection(
        "POST on /v1/models",
        "/v1/models",
        status=404,
        code="not_found",
        message="/v1/models accepts GET only",
    ),
    Rejection(
        "unknown model id",
        "/v1/models/gpt-nope",
        method="GET",
        status=404,
        code="not_found",
        message="model 'gpt-nope' is not available to you at this gateway",
    ),
    Rejection(
        "model id without an upstream",
        "/v1/models/local-test",
        method="GET",
        status=404,
        code="not_found",
        message="model 'local-test' is not available to you at this gateway",
    ),
    Rejection(
        "empty body (headers end the stream)",
        CHAT_PATH,
        message="request body is empty: expected a JSON object",
    ),
    Rejection(
        "empty body, Anthropic",
        MESSAGES_PATH,
        anthropic=True,
        message="request body is empty: expected a JSON object",
    ),
    Rejection(
        "whitespace body",
        CHAT_PATH,
        body=b"  \n",
        message="request body is empty: expected a JSON object",
    ),
    Rejection(
        "stream not a boolean",
        CHAT_PATH,
        body=orjson.dumps({**CHAT, "stream": "yes"}),
        message="`stream` must be a boolean",
    ),
]


@pytest.mark.parametrize("case", REJECTIONS, ids=[r.id for r in REJECTIONS])
def test_immediate_response(gw: Gateway, case: Rejection) -> None:
    p = gw.processor()
    first = handle(p, req_headers(case.path, case.method, case.headers, end=case.body is None))
    if case.body is None or first.WhichOneof("response") == "immediate_response":
        reply = first
    else:
        assert first.WhichOneof("response") == "request_headers"
        reply = handle(p, req_body(case.body))
    assert reply.WhichOneof("response") == "immediate_response"
    imm = reply.immediate_response
    assert imm.status.code == case.status
    assert imm.details == f"gateway_{case.code}"
    assert set_headers(imm.headers) == {
        "content-type": "application/json",
        "x-gateway-request-id": RID,
    }
    body = orjson.loads(imm.body)
    assert body["request_id"] == RID
    if case.anthropic:
        assert body["type"] == "error"
        assert set(body["error"]) == {"type", "message"}
        assert body["error"]["type"] == case.error_type
    else:
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["code"] == case.code
        assert body["error"]["type"] == "invalid_request_error"
    assert case.message in body["error"]["message"]

    p.close()  # the stream ends: still exactly one audit line
    record = gw.record()
    assert (record["status"], record["error_code"]) == (case.status, case.code)
    assert record["usage_source"] == "none"
    assert (record["cost_micros"], record["cost_usd"]) == (0, "0.000000")
    assert record["provider"] is None
    assert record["path"] == case.path


def test_request_id_missing(gw: Gateway) -> None:
    p = gw.processor()
    reply = handle(p, req_headers("/nope", request_id=None))
    assert set_headers(reply.immediate_response.headers)["x-gateway-request-id"] == "-"
    assert orjson.loads(reply.immediate_response.body)["request_id"] == "-"


def test_unexpected_error_is_a_generic_500(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_: object, **__: object) -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(route_module, "upstream_body", boom)
    p = gw.processor()
    handle(p, req_headers(CHAT_PATH))
    imm = handle(p, req_body(CHAT)).immediate_response
    assert imm.status.code == 500
    body = orjson.loads(imm.body)
    assert body["error"]["code"] == "internal_error"
    assert body["error"]["message"] == f"internal gateway error (request id {RID})"
    assert b"secret detail" not in imm.body
    assert gw.record()["error_code"] == "internal_error"


# --- GET /v1/models ----------------------------------------------------------------------------


def models_reply(gw: Gateway, path: str, extra: dict[str, str] | None = None) -> Any:
    p = gw.processor()
    reply = handle(p, req_headers(path, "GET", extra, end=True))
    imm = reply.immediate_response
    assert imm.status.code == 200
    assert imm.details == "gateway_models"
    assert set_headers(imm.headers)["content-type"] == "application/json"
    return orjson.loads(imm.body)


def test_models_openai_format(gw: Gateway) -> None:
    body = models_reply(gw, "/v1/models")
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["claude-test", "embed-test", "gpt-test"]
    assert body["data"][2] == {
        "id": "gpt-test",
        "object": "model",
        "created": body["data"][2]["created"],
        "owned_by": "openai",
    }
    record = gw.record()
    assert (record["status"], record["usage_source"], record["api"]) == (200, "none", None)


def test_models_anthropic_format(gw: Gateway) -> None:
    body = models_reply(gw, "/v1/models?limit=20", {"anthropic-version": "2023-06-01"})
    assert [m["id"] for m in body["data"]] == ["claude-test", "embed-test", "gpt-test"]
    assert body["data"][0]["type"] == "model"
    assert body["data"][0]["display_name"] == "claude-test"
    assert (body["has_more"], body["first_id"], body["last_id"]) == (
        False,
        "claude-test",
        "gpt-test",
    )


def test_one_model(gw: Gateway) -> None:
    body = models_reply(gw, "/v1/models/gpt-test-latest")
    assert (body["id"], body["object"], body["owned_by"]) == ("gpt-test", "model", "openai")
    body = models_reply(gw, "/v1/models/claude-test/", {"anthropic-version": "2023-06-01"})
    assert (body["id"], body["type"]) == ("claude-test", "model")


# --- response side -----------------------------------------------------------------------------


def test_sse_response_headers_switch_to_streamed(gw: Gateway) -> None:
    p = gw.processor()
    forward(p, CHAT_PATH, {**CHAT, "stream": True})
    reply = handle(p, resp_headers(content_type="text/event-stream; charset=utf-8"))
    assert reply.WhichOneof("response") == "response_headers"
    assert reply.HasField("mode_override")
    assert reply.mode_override.response_body_mode == processing_mode_pb2.ProcessingMode.STREAMED
    assert set_headers(reply.response_headers.response.header_mutation) == {
        "x-gateway-request-id": RID
    }


def test_json_response_headers_stay_buffered(gw: Gateway) -> None:
    p = gw.processor()
    forward(p, CHAT_PATH, CHAT)
    reply = handle(p, resp_headers())
    assert not reply.HasField("mode_override")
    assert set_headers(reply.response_headers.response.header_mutation) == {
        "x-gateway-request-id": RID
    }


def chat_json(prompt: int = 100, completion: int = 50) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "gpt-test-2025-01-31",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!"}}],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }
    )


def test_a_dearer_reported_model_is_charged_logged_and_counted(
    gw: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    p = gw.processor()
    forward(p, CHAT_PATH, CHAT)
    handle(p, resp_headers())
    body = chat_json(prompt=100, completion=50).replace(b"gpt-test-2025-01-31", b"claude-test")
    reply = handle(p, resp_body(body, end=True))
    # claude-test: 100 x $3/1M + 50 x $15/1M = $0.00105 (gpt-test would be $0.00075)
    assert set_headers(reply.response_body.response.header_mutation) == {
        "x-gateway-cost-usd": "0.001050"
    }
    p.close()
    record = gw.record()
    assert (record["served_model"], record["provider_model"]) == ("gpt-test", "claude-test")
    assert record["cost_micros"] == 1050
    assert gw.ctx.model_mismatches == {"dearer_reported": 1}
    (warning,) = [r for r in caplog.records if "reported model" in r.getMessage()]
    assert getattr(warning, "request_id", None) == RID
    assert "'claude-test'" in warning.getMessage() and "'gpt-test'" in warning.getMessage()


def test_json_response_cost_header_and_audit(gw: Gateway) -> None:
    p = gw.processor()
    forward(p, CHAT_PATH, CHAT)
    gw.clock.advance(0.25)
    handle(p, resp_headers())
    gw.clock.advance(0.5)
    body = chat_json(prompt=100, completion=50)
    first, rest = body[:10], body[10:]
    assert handle(p, resp_body(first)).response_body.response == pb.CommonResponse()
    reply = handle(p, resp_body(rest, end=True))
    # 100 x $2.50/1M + 50 x $10/1M = $0.00075
    assert set_headers(reply.response_body.response.header_mutation) == {
        "x-gateway-cost-usd": "0.000750"
    }
    p.close()
    assert gw.record() == {
        "type": "gateway.audit.v1",
        "request_id": RID,
        "time": "2023-11-14T22:13:20.000Z",
        "method": "POST",
        "path": CHAT_PATH,
        "api": "openai_chat",
        "provider_api": "openai_chat",
        "requested_model": "gpt-test",
        "served_model": "gpt-test",
        "provider_model": "gpt-test-2025-01-31",
        "provider": "openai",
        "upstream_mocked": True,
        "stream": False,
        "status": 200,
        "completed": True,
        "tokens": {
            "input_tokens": 100,
            "cached_input_tokens": 0,
            "cache_write_input_tokens": 0,
            "cache_write_1h_input_tokens": 0,
            "output_tokens": 50,
            "reasoning_tokens": 0,
        },
        "usage_source": "provider",
        "cost_micros": 750,
        "cost_usd": "0.000750",
        "latency_ms": 750.0,
        "time_to_first_byte_ms": 250.0,
        "error_code": None,
        "identity": {
            "kind": "anonymous",
            "auth_method": "anonymous",
            "user": None,
            "service": None,
            "static_token": None,
            "groups": [],
            "issuer": None,
            "client_id": None,
            "attributes": {},
        },
        "unverified_metadata": {},
        "budget": {
            "decision": "none",
            "would_block": False,
            "downgraded_from": None,
            "downgrade_budget": None,
            "budgets": [],
            "estimate_micros": 0,
            "overrun_micros": 0,
            "reservation_id": None,
            "bound": None,
        },
        "output_cap_injected": False,
        "guardrails": None,
        "rate_limits": None,
        "cache": None,
        "cost_saved_micros": None,
        "limits_reached": [],
        "reaped_charge_micros": None,
    }


def test_keyed_upstream_is_not_mocked_in_audit(keyed: Gateway) -> None:
    p = keyed.processor()
    forward(p, CHAT_PATH, CHAT)
    handle(p, resp_headers())
    handle(p, resp_body(chat_json(), end=True))
    record = keyed.record()
    assert (record["provider"], record["upstream_mocked"]) == ("openai", False)
    assert OPENAI_KEY not in keyed.audit_path.read_text()


# (fixture, path, request body, usage the provider reported, provider model, cost in micro-dollars
# at the test catalog's prices per 1M tokens, worked out by hand: half a micro-dollar rounds up)
STREAM_CASES: list[tuple[str, str, dict[str, Any], Usage, str, int]] = [
    (
        "openai_chat_include_usage.sse",
        CHAT_PATH,
        {**CHAT, "stream": True},
        Usage(input_tokens=86, cached_input_tokens=1920, output_tokens=300, reasoning_tokens=256),
        "o3-mini-2025-01-31",
        215 + 2400 + 3000,  # gpt-test: 86 x $2.50 + 1920 x $1.25 + 300 x $10
    ),
    (
        "openai_completions_usage.sse",
        "/v1/completions",
        {"model": "gpt-test", "prompt": "def fib(n):", "stream": True},
        Usage(input_tokens=9, output_tokens=7),
        "gpt-3.5-turbo-instruct:20230824-v2",
        93,  # 9 x $2.50 + 7 x $10 = 92.5
    ),
    (
        "openai_responses.sse",
        "/v1/responses",
        {"model": "gpt-test", "input": "Hi", "stream": True},
        Usage(input_tokens=476, cached_input_tokens=1024, output_tokens=420, reasoning_tokens=384),
        "o4-mini-2025-04-16",
        1190 + 1280 + 4200,  # 476 x $2.50 + 1024 x $1.25 + 420 x $10
    ),
    (
        "anthropic_messages.sse",
        MESSAGES_PATH,
        {**MESSAGES, "stream": True},
        Usage(
            input_tokens=30,
            cached_input_tokens=3000,
            cache_write_input_tokens=1200,
            output_tokens=89,
        ),
        "claude-sonnet-4-5-20250929",
        90 + 900 + 4500 + 1335,  # claude-test: 30 x $3 + 3000 x $0.30 + 1200 x $3.75 + 89 x $15
    ),
]


@pytest.mark.parametrize("size", [1, 7, 64, 1 << 20], ids=lambda s: f"{s}B-chunks")
@pytest.mark.parametrize(
    ("name", "path", "body", "usage", "provider_model", "cost"),
    STREAM_CASES,
    ids=[c[0] for c in STREAM_CASES],
)
def test_stream_metered_from_provider_usage(
    gw: Gateway,
    name: str,
    path: str,
    body: dict[str, Any],
    usage: Usage,
    provider_model: str,
    cost: int,
    size: int,
) -> None:
    p = gw.processor()
    forward(p, path, body)
    handle(p, resp_headers(content_type="text/event-stream"))
    parts = chunks(fixture(name), size)
    for part in parts[:-1]:
        reply = handle(p, resp_body(part))
        assert reply.response_body.response == pb.CommonResponse()  # bytes pass untouched
    handle(p, resp_body(parts[-1], end=True))
    p.close()
    record = gw.record()
    assert record["tokens"] == usage.as_dict()
    assert record["usage_source"] == "provider"
    assert record["completed"] is True
    assert record["stream"] is True
    assert record["provider_model"] == provider_model
    assert record["cost_micros"] == cost
    assert record["cost_usd"] == f"0.{cost:06d}"  # each case costs less than a dollar


def test_stream_cost_by_hand(gw: Gateway) -> None:
    p = gw.processor()
    forward(p, CHAT_PATH, {**CHAT, "stream": True})
    handle(p, resp_headers(content_type="text/event-stream"))
    handle(p, resp_body(fixture("openai_chat_include_usage.sse"), end=True))
    # 86 x $2.50 + 1920 x $1.25 (cached) + 300 x $10 (reasoning at the output price), per 1M
    assert gw.record()["cost_micros"] == 215 + 2400 + 3000


def test_stream_end_arrives_as_an_empty_chunk(gw: Gateway) -> None:
    p = gw.processor()
    forward(p, CHAT_PATH, {**CHAT, "stream": True})
    handle(p, resp_headers(content_type="text/event-stream"))
    handle(p, resp_body(fixture("openai_chat_include_usage.sse")))
    handle(p, resp_body(b"", end=True))
    assert gw.record()["usage_source"] == "provider"


def test_stream_without_usage_is_charged_its_bound(gw: Gateway) -> None:
    """No usage reported: the provider's bill is unknown. The input bound, and the output's UTF-8
    bytes (each token covers one at least) plus the margin for tokens no stream shows."""
    p = gw.processor()
    forward(p, CHAT_PATH, {**CHAT, "stream": True})
    handle(p, resp_headers(content_type="text/event-stream"))
    handle(p, resp_body(fixture("openai_chat_no_usage.sse"), end=True))
    record = gw.record()
    assert record["usage_source"] == "bound"
    assert record["completed"] is True
    output = len("Bonjour à tous, ça va ?".encode()) + MARGIN
    bound = Usage(input_tokens=STREAM_INPUT_BOUND, output_tokens=output)
    assert record["tokens"] == bound.as_dict()
    assert record["cost_micros"] == gpt_test_cost(STREAM_INPUT_BOUND, output)


def test_stream_cut_before_the_end_then_close(gw: Gateway) -> None:
    p = gw.processor()
    forward(p, CHAT_PATH, {**CHAT, "stream": True})
    handle(p, resp_headers(content_type="text/event-stream"))
    data = fixture("openai_chat_include_usage.sse")
    seen = data[: data.index(b'"usage":{')]  # the usage chunk and [DONE] never arrive
    for part in chunks(seen, 50):
        handle(p, resp_body(part))
    assert gw.records() == []  # still open
    gw.clock.advance(2)
    p.close()  # client disconnect / upstream reset: the stream ends without end_of_stream
    record = gw.record()
    assert record["usage_source"] == "bound"
    assert record["completed"] is False
    output = 62 + MARGIN  # every text byte had arrived (test_metering.py), then the margin
    bound = Usage(input_tokens=STREAM_INPUT_BOUND, output_tokens=output)
    assert record["tokens"] == bound.as_dict()
    assert record["cost_micros"] == gpt_test_cost(STREAM_INPUT_BOUND, output)
    assert record["latency_ms"] == 2000.0


def test_anthropic_stream_cut_keeps_the_reported_input(gw: Gateway) -> None:
    p = gw.processor()
    forward(p, MESSAGES_PATH, {**MESSAGES, "stream": True})
    handle(p, resp_headers(content_type="text/event-stream"))
    data = fixture("anthropic_messages.sse")
    handle(p, resp_body(data[: data.index(b"event: message_delta")]))
    p.close()
    record = gw.record()
    assert record["usage_source"] == "bound"
    assert record["completed"] is False
    tokens = record["tokens"]
    # message_start's counts are kept; output: what was seen and the margin, within max_tokens.
    assert (tokens["input_tokens"], tokens["cached_input_tokens"]) == (25, 3000)
    assert tokens["cache_write_input_tokens"] == 1200
    assert tokens["output_tokens"] == MESSAGES["max_tokens"] == 100


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def test_gzip_json_response_is_metered(gw: Gateway) -> None:
    p = gw.processor()
    forward(p, CHAT_PATH, CHAT)
    handle(p, resp_headers(extra={"content-encoding": "gzip"}))
    compressed = gzip_bytes(chat_json(prompt=100, completion=50))
    parts = chunks(compressed, 5)
    for part in parts[:-1]:
        handle(p, resp_body(part))
    reply = handle(p, resp_body(parts[-1], end=True))
    assert set_headers(reply.response_body.response.header_mutation) == {
        "x-gateway-cost-usd": "0.000750"
    }
    record = gw.record()
    assert (record["usage_source"], record["cost_micros"]) == ("provider", 750)


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "deflate", " GZIP "])
def test_compressed_stream_is_metered(gw: Gateway, encoding: str) -> None:
    p = gw.processor()
    forward(p, CHAT_PATH, {**CHAT, "stream": True})
    handle(p, resp_headers(content_type="text/event-stream", extra={"content-encoding": encoding}))
    raw = fixture("openai_chat_include_usage.sse")
    data = zlib.compress(raw) if encoding == "deflate" else gzip_bytes(raw)
    for part in chunks(data, 3):
        handle(p, resp_body(part))
    handle(p, resp_body(b"", end=True))
    record = gw.record()
    assert record["usage_source"] == "provider"
    assert record["tokens"]["output_tokens"] == 300


def test_unsupported_encoding_is_charged_the_whole_bound(gw: Gateway) -> None:
    """Nothing of the body can be read: the input bound and the whole output limit (gpt-test's
    1,000: no budget injected a cap)."""
    p = gw.processor()
    forward(p, CHAT_PATH, CHAT)
    handle(p, resp_headers(extra={"content-encoding": "br"}))
    reply = handle(p, resp_body(b"\x8b\x00 not json to us", end=True))
    cost = gpt_test_cost(CHAT_INPUT_BOUND, 1_000)
    assert set_headers(reply.response_body.response.header_mutation)["x-gateway-cost-usd"] == (
        f"{cost / 1e6:.6f}"
    )
    record = gw.record()
    assert record["usage_source"] == "bound"
    assert record["tokens"] == Usage(input_tokens=CHAT_INPUT_BOUND, output_tokens=1_000).as_dict()
    assert record["cost_micros"] == cost


@pytest.mark.parametrize("status", [400, 401, 404, 429, 500, 529])
def test_upstream_error_costs_nothing(gw: Gateway, status: int) -> None:
    p = gw.processor()
    forward(p, MESSAGES_PATH, MESSAGES)
    handle(p, resp_headers(status))
    error = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    reply = handle(p, resp_body(orjson.dumps(error), end=True))
    assert set_headers(reply.response_body.response.header_mutation) == {
        "x-gateway-cost-usd": "0.000000"
    }
    record = gw.record()
    assert record["status"] == status
    assert record["usage_source"] == "none"
    assert record["tokens"] == Usage().as_dict()
    assert record["cost_micros"] == 0


def test_upstream_error_stream_costs_nothing(gw: Gateway) -> None:
    p = gw.processor()
    forward(p, CHAT_PATH, {**CHAT, "stream": True})
    handle(p, resp_headers(503, "text/event-stream"))
    handle(p, resp_body(fixture("openai_chat_include_usage.sse")[:300]))
    p.close()
    record = gw.record()
    assert (record["status"], record["usage_source"], record["cost_micros"]) == (503, "none", 0)


def test_headers_only_response(gw: Gateway) -> None:
    p = gw.processor()
    forward(p, CHAT_PATH, CHAT)
    handle(p, resp_headers(200, extra={"content-length": "0"}, end=True))
    p.close()
    record = gw.record()
    assert (record["completed"], record["usage_source"]) == (True, "bound")
    assert record["tokens"]["output_tokens"] == MARGIN  # nothing seen, then the margin


def test_close_twice_writes_one_record(gw: Gateway) -> None:
    p = gw.processor()
    forward(p, CHAT_PATH, CHAT)
    p.close()
    p.close()
    record = gw.record()
    # Forwarded, but no response ever came: a JSON answer is generated whole before it is sent,
    # so the input bound and the whole output limit; nothing is complete.
    assert (record["usage_source"], record["completed"], record["status"]) == ("bound", False, 0)
    assert record["tokens"] == Usage(input_tokens=CHAT_INPUT_BOUND, output_tokens=1_000).as_dict()
    assert record["time_to_first_byte_ms"] is None


def test_close_after_finish_writes_nothing_more(gw: Gateway) -> None:
    p = gw.processor()
    forward(p, CHAT_PATH, CHAT)
    handle(p, resp_headers())
    handle(p, resp_body(chat_json(), end=True))
    p.close()
    p.close()
    assert len(gw.records()) == 1


def test_close_before_anything(gw: Gateway) -> None:
    p = gw.processor()
    p.close()
    record = gw.record()
    assert (record["request_id"], record["status"], record["usage_source"]) == ("-", 499, "none")
    assert record["error_code"] == "client_disconnected_before_forward"


def test_metering_fault_passes_the_response_through(gw: Gateway) -> None:
    p = gw.processor()
    forward(p, CHAT_PATH, CHAT)
    handle(p, resp_headers(extra={"content-encoding": "gzip"}))
    reply = handle(p, resp_body(b"this is not gzip", end=True))  # zlib.error inside
    assert reply == pb.ProcessingResponse(response_body=pb.BodyResponse())
    assert gw.records() == []
    p.close()  # the stream ends: charged its bound, once
    record = gw.record()
    assert record["usage_source"] == "bound"
    assert record["status"] == 200


def test_stream_metering_fault_passes_through(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    p = gw.processor()
    forward(p, CHAT_PATH, {**CHAT, "stream": True})
    handle(p, resp_headers(content_type="text/event-stream"))
    data = fixture("openai_chat_include_usage.sse")
    handle(p, resp_body(data[:100]))

    assert p.observer is not None and p.observer.meter is not None

    def broken(chunk: bytes) -> None:
        raise RuntimeError("meter bug")

    monkeypatch.setattr(p.observer.body, "meter", _Wrapped(p.observer.meter, broken))
    reply = handle(p, resp_body(data[100:200]))
    assert reply == pb.ProcessingResponse(response_body=pb.BodyResponse())
    monkeypatch.undo()
    for part in chunks(data[200:], 100):
        assert handle(p, resp_body(part)).WhichOneof("response") == "response_body"
    handle(p, resp_body(b"", end=True))
    p.close()
    record = gw.record()
    # Once metering broke, the provider's report is no longer trusted as complete.
    assert record["usage_source"] == "bound"


class _Wrapped:
    """A StreamMeter whose feed is replaced."""

    def __init__(self, meter: object, feed: object) -> None:
        self._meter = meter
        self.feed = feed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._meter, name)


def test_response_headers_fault_passes_through_and_keeps_streaming(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_api: object) -> None:
        raise RuntimeError("meter bug")

    monkeypatch.setattr(response_body_module, "StreamMeter", broken)
    p = gw.processor()
    forward(p, CHAT_PATH, {**CHAT, "stream": True})
    reply = handle(p, resp_headers(content_type="text/event-stream"))
    # The response still streams (a buffered stream could hit the buffer limit).
    assert reply.WhichOneof("response") == "response_headers"
    assert reply.mode_override.response_body_mode == processing_mode_pb2.ProcessingMode.STREAMED
    assert not reply.response_headers.response.HasField("header_mutation")
    p.close()
    assert len(gw.records()) == 1


def test_audit_time_is_the_arrival_time(gw: Gateway) -> None:
    p = gw.processor()
    forward(p, CHAT_PATH, CHAT)
    p.close()
    arrived = datetime.datetime.fromtimestamp(WALL, datetime.UTC)
    assert gw.record()["time"] == arrived.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_audit_never_holds_prompts_or_completions(keyed: Gateway) -> None:
    p = keyed.processor()
    secret_prompt = "my password is hunter2"
    forward(p, CHAT_PATH, {**CHAT, "messages": [{"role": "user", "content": secret_prompt}]})
    handle(p, resp_headers())
    handle(p, resp_body(chat_json(), end=True))
    text = keyed.audit_path.read_text()
    assert secret_prompt not in text
    assert "Hi!" not in text
    assert OPENAI_KEY not in text


# --- identity and policies -----------------------------------------------------------------------

BOT_SECRET = "static-secret-for-the-docs-bot"


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Gateway]:
    """Anonymous refused; one static token; interns may use one model."""
    doc = merge(
        load_document(None),
        {
            "identity": {
                "static_tokens": {
                    "docs-bot": {
                        "sha256": hashlib.sha256(BOT_SECRET.encode()).hexdigest(),
                        "groups": ["interns"],
                    }
                }
            },
            "policies": {"rules": [{"groups": ["interns"], "allow": ["gpt-test"]}]},
            "metering": {"mode": "synchronous"},
        },
    )
    yield from _gateway(tmp_path, parse_config(doc, {}), {})


def test_no_credential_is_401_with_a_challenge(secured: Gateway) -> None:
    reply = handle(secured.processor(), req_headers(CHAT_PATH))
    assert reply.immediate_response.status.code == 401
    headers = {
        h.header.key: h.header.raw_value for h in reply.immediate_response.headers.set_headers
    }
    assert headers["www-authenticate"].startswith(b"Bearer")
    assert secured.record()["status"] == 401 and secured.record()["identity"] is None


def test_static_token_identity_is_recorded_and_policy_applies(secured: Gateway) -> None:
    bearer = {"authorization": f"Bearer {BOT_SECRET}"}
    p = secured.processor()
    forward(p, CHAT_PATH, {"model": "gpt-test", "messages": []}, extra=bearer)
    p.close()
    ident = secured.record()["identity"]
    assert ident["static_token"] == "docs-bot" and ident["auth_method"] == "static_token"
    assert ident["service"] is None  # static tokens are not JWT services

    p = secured.processor()
    handle(p, req_headers(CHAT_PATH, extra=bearer))
    reply = handle(p, req_body({"model": "embed-test", "input": "x"}))
    assert reply.immediate_response.status.code == 403
    assert b"embed-test" in reply.immediate_response.body


def test_models_list_shows_only_allowed_models(secured: Gateway) -> None:
    bearer = {"authorization": f"Bearer {BOT_SECRET}"}
    reply = handle(secured.processor(), req_headers("/v1/models", "GET", extra=bearer, end=True))
    ids = [m["id"] for m in json.loads(reply.immediate_response.body)["data"]]
    assert ids == ["gpt-test"]


def test_bad_metadata_header_is_400(secured: Gateway) -> None:
    extra = {"authorization": f"Bearer {BOT_SECRET}", "x-gateway-metadata": "[1]"}
    reply = handle(secured.processor(), req_headers(CHAT_PATH, extra=extra))
    assert reply.immediate_response.status.code == 400
