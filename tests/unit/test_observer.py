"""Observe mode without Envoy: the request phase's reply carries the request's state in dynamic
metadata, and a `StreamObserver` - as on another worker - meters, prices and audits the response
from that state alone, sending no reply. The request state's encoding round-trips exactly."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2

from gateway_extproc.apis import Api
from gateway_extproc.catalog.pricing import LongContext, Price
from gateway_extproc.config.gateway import GatewayConfig, load_document, merge, parse_config
from gateway_extproc.cost.endings import ChargeLimits, InputKind
from gateway_extproc.cost.shape import PER_MESSAGE_TOKENS, PER_REQUEST_TOKENS
from gateway_extproc.handoff import (
    MAC_KEY,
    NAMESPACE,
    STATE_KEY,
    BudgetHandoff,
    HandoffError,
    RequestState,
)
from gateway_extproc.identity.model import AuthMethod, Identity, Kind
from gateway_extproc.providers.metering import StreamMeter
from gateway_extproc.request import forward
from gateway_extproc.response.observer import ResponseObserver
from gateway_extproc.response.stream_observer import StreamObserver
from gateway_extproc.sidecar_auth.seal import StateSeal
from tests.unit.test_processor import (
    CHAT,
    CHAT_INPUT_ESTIMATE,
    CHAT_PATH,
    RID,
    WALL,
    Gateway,
    _gateway,
    chunks,
    fixture,
    handle,
    req_headers,
    resp_body,
    resp_headers,
)


@pytest.fixture(scope="module")
def config() -> GatewayConfig:
    client = {"sha256": hashlib.sha256(b"sk-client").hexdigest()}
    identity = {"allow_anonymous": True, "static_tokens": {"test-client": client}}
    metering = {"unseen_output_tokens": MARGIN}
    doc = merge(load_document(None), {"identity": identity, "metering": metering})
    parsed = parse_config(doc, {})
    assert not parsed.metering.synchronous  # observe is the default
    return parsed


MARGIN = 100  # metering.unseen_output_tokens: below gpt-test's output limit of 1,000


def limits_of(metadata: struct_pb2.Struct) -> ChargeLimits:
    """The bound the request phase handed over with the request's state."""
    text = metadata.fields[NAMESPACE].struct_value.fields[STATE_KEY].string_value
    limits = RequestState.decode(text).charge_limits
    assert limits is not None
    return limits


def cost_of(input_tokens: int, output_tokens: int) -> int:
    """gpt-test's price ($2.50 input, $10 output per million), rounded half up."""
    return (input_tokens * 2_500_000 + output_tokens * 10_000_000 + 500_000) // 1_000_000


@pytest.fixture
def gw(tmp_path: Path, config: GatewayConfig) -> Iterator[Gateway]:
    yield from _gateway(tmp_path, config, {})


def handed_over(gw: Gateway, body: dict[str, Any]) -> struct_pb2.Struct:
    """A forwarded request's request phase; the dynamic metadata its body reply carries. The
    request's own stream then ends without writing anything: the observer owns the rest. (A
    non-streamed chat request is metered on its own stream; here it is handed over as an
    embeddings request is, so that the observer's JSON path is tested with chat bodies.)"""
    p = gw.processor()
    handle(p, req_headers(CHAT_PATH))
    with mock.patch.object(forward, "response_on_this_stream", return_value=False):
        reply = handle(
            p,
            pb.ProcessingRequest(
                request_body=pb.HttpBody(body=json.dumps(body).encode(), end_of_stream=True)
            ),
        )
    assert reply.WhichOneof("response") == "request_body"
    p.close()
    assert gw.records() == []
    return reply.dynamic_metadata


def observed(message: pb.ProcessingRequest, metadata: struct_pb2.Struct) -> pb.ProcessingRequest:
    """The message as the observability-mode filter sends it: Envoy forwards the namespace."""
    message.observability_mode = True
    message.metadata_context.filter_metadata[NAMESPACE].CopyFrom(
        metadata.fields[NAMESPACE].struct_value
    )
    return message


def test_the_reply_hands_the_state_and_the_response_headers_over(gw: Gateway) -> None:
    metadata = handed_over(gw, CHAT)
    fields = metadata.fields[NAMESPACE].struct_value.fields
    assert fields["x-gateway-request-id"].string_value == RID
    state = RequestState.decode(fields[STATE_KEY].string_value)
    assert (state.request_id, state.api, state.requested_model, state.served_model) == (
        RID,
        Api.OPENAI_CHAT,
        "gpt-test",
        "gpt-test",
    )
    assert state.provider == "openai" and state.stream is False
    assert state.input_tokens_estimate == CHAT_INPUT_ESTIMATE
    assert (state.price.input, state.price.output, state.price.cached_input) == (
        2_500_000,
        10_000_000,
        1_250_000,
    )  # pico-dollars per token: the catalog's $2.50 / $10 / $1.25 per million
    assert state.identity.kind is Kind.ANONYMOUS
    assert state.started_monotonic is None  # process-local: never handed over


def test_an_observer_meters_a_json_response_from_the_state_alone(gw: Gateway) -> None:
    metadata = handed_over(gw, CHAT)
    observer = StreamObserver(gw.ctx)
    assert observer.handle(observed(req_headers(CHAT_PATH), metadata)) is False
    assert observer.handle(observed(resp_headers(), metadata)) is False
    usage = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
    body = json.dumps({"object": "chat.completion", "model": "gpt-test", "usage": usage})
    # The response's end: the stream may close now (not after Envoy's deferred close).
    assert observer.handle(observed(resp_body(body.encode(), end=True), metadata)) is True
    observer.close()  # the stream then ends: nothing more is written
    record = gw.record()
    assert record["request_id"] == RID
    assert (record["status"], record["completed"], record["usage_source"]) == (
        200,
        True,
        "provider",
    )
    assert record["cost_micros"] == 450  # 100 x $2.50 + 20 x $10 per million
    assert record["identity"]["kind"] == "anonymous"


@pytest.mark.parametrize("size", [1, 7, 4096])
def test_an_observer_meters_a_stream_in_any_chunking(gw: Gateway, size: int) -> None:
    metadata = handed_over(gw, {**CHAT, "stream": True})
    observer = StreamObserver(gw.ctx)
    observer.handle(observed(resp_headers(content_type="text/event-stream"), metadata))
    for part in chunks(fixture("openai_chat_include_usage.sse"), size):
        assert observer.handle(observed(resp_body(part), metadata)) is False
    assert observer.handle(observed(resp_body(b"", end=True), metadata)) is True
    record = gw.record()
    assert record["usage_source"] == "provider" and record["stream"] is True
    # 86 x $2.50 + 1920 x $1.25 (cached) + 300 x $10 (reasoning at the output price), per 1M
    assert record["cost_micros"] == 215 + 2400 + 3000


def test_the_state_carries_the_bound_an_unreported_ending_is_charged_within(gw: Gateway) -> None:
    """Unbudgeted, so no cap was injected: the provider's output limit is the model's 1,000."""

    def text_bytes(value: Any) -> int:  # every key and string, as bounds.py counts them
        if isinstance(value, str):
            return len(value.encode())
        if isinstance(value, dict):
            return sum(len(k.encode()) + text_bytes(v) for k, v in value.items())
        return sum(map(text_bytes, value)) if isinstance(value, list) else 0

    limits = limits_of(handed_over(gw, CHAT))
    assert limits == ChargeLimits(limits.input_tokens, 1_000, False, InputKind.INPUT)
    assert limits.input_tokens == text_bytes(CHAT) + PER_REQUEST_TOKENS + PER_MESSAGE_TOKENS
    assert limits.input_tokens > CHAT_INPUT_ESTIMATE  # bytes, not characters / 4


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_request_cut_before_its_response_is_charged_its_bound(gw: Gateway, stream: bool) -> None:
    """No response came: the provider may have started. A non-streamed answer is generated whole
    before it is sent (the whole output limit); a stream's provider notices the cut at its first
    write (the margin)."""
    metadata = handed_over(gw, {**CHAT, "stream": stream})
    observer = StreamObserver(gw.ctx)
    observer.handle(observed(req_headers(CHAT_PATH), metadata))
    observer.close()  # Envoy's deferred close: no response ever came
    record = gw.record()
    assert (record["status"], record["completed"], record["usage_source"]) == (0, False, "bound")
    limits = limits_of(metadata)
    output = MARGIN if stream else 1_000
    assert (record["tokens"]["input_tokens"], record["tokens"]["output_tokens"]) == (
        limits.input_tokens,
        output,
    )
    assert record["cost_micros"] == cost_of(limits.input_tokens, output)


def test_a_stream_cut_midway_is_charged_what_it_showed_and_the_margin(gw: Gateway) -> None:
    metadata = handed_over(gw, {**CHAT, "stream": True})
    observer = StreamObserver(gw.ctx)
    observer.handle(observed(resp_headers(content_type="text/event-stream"), metadata))
    data = fixture("openai_chat_include_usage.sse")
    half = data[: len(data) // 2]
    observer.handle(observed(resp_body(half), metadata))
    observer.close()
    record = gw.record()
    assert (record["completed"], record["usage_source"]) == (False, "bound")
    meter = StreamMeter(Api.OPENAI_CHAT)
    meter.feed(half)
    seen = meter.flush().output_bytes
    assert 0 < seen < 1_000 - MARGIN
    assert record["tokens"]["output_tokens"] == seen + MARGIN
    assert record["tokens"]["input_tokens"] == limits_of(metadata).input_tokens


def test_a_checkpoint_charges_the_bound_the_stream_may_reach_by_the_next_one(gw: Gateway) -> None:
    """If this worker dies, the reaper charges the last checkpoint; the stream runs on until the
    next one was due (lease_s / 2 = 60 s by default): its output seen is extrapolated at its own
    rate over that time, then the margin is added."""
    metadata = handed_over(gw, {**CHAT, "stream": True})
    text = metadata.fields[NAMESPACE].struct_value.fields[STATE_KEY].string_value
    now = [WALL]
    ctx = dataclasses.replace(gw.ctx, wall_clock=lambda: now[0])
    response = ResponseObserver(ctx, RequestState.decode(text))
    limits = limits_of(metadata)
    # Before the response: the margin (a stream's provider notices a cut at its first write).
    assert response._cost_so_far() == cost_of(limits.input_tokens, MARGIN)
    response.on_headers({":status": "200", "content-type": "text/event-stream"}, False)
    data = fixture("openai_chat_include_usage.sse")
    response.on_body(data[: len(data) // 2], False)
    now[0] += 600  # ten minutes of stream so far
    seen = response.body.meter.output_bytes_so_far if response.body.meter else 0
    assert seen > 0
    output = seen + -(-seen * 60 // 600) + MARGIN
    assert response._cost_so_far() == cost_of(limits.input_tokens, output)
    response.concluded = True  # not ended here: only its checkpoints were asked for


def test_a_json_request_waiting_for_its_answer_checkpoints_its_whole_bound(gw: Gateway) -> None:
    """A non-streamed answer is generated whole before it is sent: if this worker dies while
    the provider works on it, all of it is billed."""
    metadata = handed_over(gw, CHAT)
    text = metadata.fields[NAMESPACE].struct_value.fields[STATE_KEY].string_value
    response = ResponseObserver(gw.ctx, RequestState.decode(text))
    assert response._cost_so_far() == cost_of(limits_of(metadata).input_tokens, 1_000)
    response.concluded = True


def test_an_upstream_error_costs_nothing(gw: Gateway) -> None:
    metadata = handed_over(gw, CHAT)
    observer = StreamObserver(gw.ctx)
    observer.handle(observed(resp_headers(status=429), metadata))
    assert observer.handle(observed(resp_body(b'{"error": {}}', end=True), metadata)) is True
    record = gw.record()
    assert (record["status"], record["usage_source"], record["cost_micros"]) == (429, "none", 0)


def test_a_stream_without_state_is_closed_at_once_and_writes_nothing(gw: Gateway) -> None:
    # A request the gateway answered itself: its local reply passes the observer filter with
    # no state (the request phase audited it).
    observer = StreamObserver(gw.ctx)
    message = resp_headers(status=401)
    message.observability_mode = True
    assert observer.handle(message) is True
    observer.close()
    assert gw.records() == []


def test_an_unreadable_state_is_logged_and_the_stream_closed(
    gw: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    message = resp_headers()
    message.observability_mode = True
    text = "{not json"  # signed by a worker (the MAC holds), yet not a state this one reads
    mac = gw.ctx.sidecar_auth.seal.sign(text)
    message.metadata_context.filter_metadata[NAMESPACE].update({STATE_KEY: text, MAC_KEY: mac})
    observer = StreamObserver(gw.ctx)
    assert observer.handle(message) is True
    assert gw.records() == []
    assert "without a usable request state" in caplog.text


# -- the state's MAC ------------------------------------------------------------------------------


@pytest.fixture
def spied(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the observer asked of the budget gate and the cache (settle, lease, store)."""
    calls: list[str] = []
    services = gw.ctx.budgets.services
    monkeypatch.setattr(gw.ctx.budgets, "settle_outcome", lambda *a, **k: calls.append("settle"))
    monkeypatch.setattr(services, "hold_lease", lambda *a, **k: calls.append("lease"))
    monkeypatch.setattr(gw.ctx.cache, "store", lambda *a, **k: calls.append("cache"))
    return calls


def _forged(metadata: struct_pb2.Struct, **fields: str | None) -> struct_pb2.Struct:
    forged = struct_pb2.Struct()
    forged.CopyFrom(metadata)
    namespace = forged.fields[NAMESPACE].struct_value
    for key, value in fields.items():
        if value is None:
            del namespace.fields[key]
        else:
            namespace.fields[key].string_value = value
    return forged


def _observe_json(gw: Gateway, metadata: struct_pb2.Struct) -> bool:
    """A whole JSON response on one observer stream; whether the first message closed it."""
    observer = StreamObserver(gw.ctx)
    closed = observer.handle(observed(resp_headers(), metadata))
    if not closed:
        usage = {"prompt_tokens": 7, "completion_tokens": 3}
        body = json.dumps({"usage": usage}).encode()
        observer.handle(observed(resp_body(body, end=True), metadata))
    observer.close()
    return closed


def _tampered(text: str) -> str:
    """The same state with its input estimate changed by one digit."""
    doc = json.loads(text)
    doc["in"] += 1
    return json.dumps(doc, separators=(",", ":"))


FORGERIES = {
    "no MAC": lambda text, mac, other: {MAC_KEY: None},
    "an empty MAC": lambda text, mac, other: {MAC_KEY: ""},
    "a MAC of garbage": lambda text, mac, other: {MAC_KEY: "!!not-base64!!"},
    "another state's MAC": lambda text, mac, other: {MAC_KEY: other},
    "a changed state with its old MAC": lambda text, mac, other: {STATE_KEY: _tampered(text)},
    "a truncated MAC": lambda text, mac, other: {MAC_KEY: mac[:-2]},
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_a_state_failing_its_mac_is_never_settled_cached_or_audited(
    gw: Gateway, spied: list[str], caplog: pytest.LogCaptureFixture, forgery: str
) -> None:
    metadata = handed_over(gw, CHAT)
    fields = metadata.fields[NAMESPACE].struct_value.fields
    text, mac = fields[STATE_KEY].string_value, fields[MAC_KEY].string_value
    other = gw.ctx.sidecar_auth.seal.sign(_tampered(text))
    forged = _forged(metadata, **FORGERIES[forgery](text, mac, other))
    assert _observe_json(gw, forged) is True  # closed at its first message
    assert gw.records() == [] and spied == []
    reason = "unsigned" if forgery in ("no MAC", "an empty MAC") else "bad_mac"
    assert gw.ctx.sidecar_auth.stats.rejected_states == {reason: 1}
    assert "observer stream refused" in caplog.text
    assert text not in caplog.text and RID not in caplog.text  # never the state's contents


def test_a_signed_state_is_metered_settled_and_audited(gw: Gateway, spied: list[str]) -> None:
    metadata = handed_over(gw, CHAT)
    assert _observe_json(gw, metadata) is False
    assert gw.record()["usage_source"] == "provider"
    assert "cache" in spied
    assert not gw.ctx.sidecar_auth.stats.rejected_states


def test_state_keys_rotate_the_first_signs_any_listed_verifies(gw: Gateway) -> None:
    old, new = b"old-state-key-0123456789abcdefghijklmn", b"new-state-key-0123456789abcdefghijklmn"
    metadata = handed_over(gw, CHAT)
    fields = metadata.fields[NAMESPACE].struct_value.fields
    text = fields[STATE_KEY].string_value
    signed_old = _forged(metadata, **{MAC_KEY: StateSeal((old,)).sign(text)})
    for keys, accepted in (((new, old), True), ((old, new), True), ((new,), False)):
        auth = dataclasses.replace(gw.ctx.sidecar_auth, seal=StateSeal(keys))
        observer = StreamObserver(dataclasses.replace(gw.ctx, sidecar_auth=auth))
        assert observer.handle(observed(resp_headers(), signed_old)) is (not accepted), keys
        if observer.response is not None:
            observer.response.concluded = True  # not metered here: only whether it was let in
    assert StateSeal((new, old)).sign(text) == StateSeal((new,)).sign(text)  # the first signs


def test_a_metering_fault_still_writes_one_record_charged_the_whole_bound(gw: Gateway) -> None:
    metadata = handed_over(gw, CHAT)
    observer = StreamObserver(gw.ctx)
    observer.handle(observed(resp_headers(extra={"content-encoding": "gzip"}), metadata))
    assert observer.handle(observed(resp_body(b"not gzip", end=True), metadata)) is False
    observer.close()
    record = gw.record()
    assert record["usage_source"] == "bound" and record["status"] == 200
    limits = limits_of(metadata)  # nothing it saw is trusted: the input bound, the whole limit
    assert (record["tokens"]["input_tokens"], record["tokens"]["output_tokens"]) == (
        limits.input_tokens,
        1_000,
    )


# -- the state's encoding ----------------------------------------------------------------------


FULL = RequestState(
    request_id="r-1",
    arrived=1_700_000_000.25,
    method="POST",
    path="/v1/messages?beta=true",
    api=Api.ANTHROPIC_MESSAGES,
    requested_model="claude-x",
    served_model="claude-y",
    price=Price(
        input=3,
        output=15,
        cached_input=1,
        cache_write=4,
        reasoning=15,
        cache_write_1h=None,
        long_context=LongContext(200_000, Price(6, 22, 2, 8, 22, cache_write_1h=12)),
    ),
    provider="anthropic",
    stream=True,
    input_tokens_estimate=1234,
    max_tokens=8192,
    cap_injected=True,
    identity=Identity(
        kind=Kind.USER,
        auth_method=AuthMethod.JWT,
        user="alice@example.com",
        service=None,
        groups=frozenset({"eng", "ml"}),
        issuer="corp",
        attributes={"cost_center": "42"},
        expires_at=1_700_003_600.0,
        client_id="cli",
    ),
    metadata={"ticket": "T-1"},
    budget=BudgetHandoff(
        decision="downgraded",
        reservation_id="ab" * 16,
        reserved=True,
        charges=(("eng-monthly", "alice@example.com", 5000, 1_000_000),),
        arrived=1_700_000_000.25,
        audit={"decision": "downgraded", "budgets": [{"name": "eng-monthly"}]},
        span_budgets=(("eng-monthly", "alice@example.com", 1_000_000, 10, 5000),),
    ),
    traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    tracestate="k=v",
    audit_extra={"guardrails": {"action": "redact"}, "rate_limits": None},
    cache="miss:60:abc",
    charge_limits=ChargeLimits(90_000, 8192, True, InputKind.CACHE_WRITE_1H),
)


def test_the_state_round_trips_exactly() -> None:
    assert RequestState.decode(FULL.encode()) == FULL


def test_a_minimal_state_round_trips() -> None:
    minimal = dataclasses.replace(
        FULL,
        budget=None,
        traceparent=None,
        tracestate=None,
        audit_extra={},
        cache=None,
        max_tokens=None,
        charge_limits=None,
    )
    assert RequestState.decode(minimal.encode()) == minimal


def test_a_state_from_a_worker_that_hands_over_no_limits_is_read() -> None:
    """A rolling deploy: an older worker's state has no charge limits (then estimated)."""
    doc = json.loads(FULL.encode())
    del doc["cl"]
    state = RequestState.decode(json.dumps(doc))
    assert state == dataclasses.replace(FULL, charge_limits=None)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "{}",
        '{"v": 99}',
        FULL.encode().replace('"api":"ANTHROPIC_MESSAGES"', '"api":"X"'),
        FULL.encode().replace('"cl":[90000,8192,1,"cache_write_1h_input_tokens"]', '"cl":[1,2]'),
        FULL.encode().replace('"cache_write_1h_input_tokens"]', '"tokens"]'),
    ],
)
def test_an_unreadable_state_is_a_handoff_error(text: str) -> None:
    with pytest.raises(HandoffError):
        RequestState.decode(text)
