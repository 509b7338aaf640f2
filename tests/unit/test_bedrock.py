"""Claude on Bedrock, the pure parts: event-stream decoding (botocore's decoder over the mock's
encoder, split at every byte), the Messages -> InvokeModel rewrite and back, metering from
Anthropic's usage with the invocation metrics as fallback, and SigV4 signing checked by the
mock's botocore verification (docs/bedrock.md)."""

from __future__ import annotations

import asyncio
import base64
import datetime
from typing import Any

import orjson
import pytest
from botocore.credentials import Credentials, RefreshableCredentials
from botocore.eventstream import EventStreamBuffer

from gateway_extproc.apis import Api, Schema, api_for_path
from gateway_extproc.mock.bedrock_api import MOCK_ACCESS_KEY as MOCK_SIDE_KEY
from gateway_extproc.mock.bedrock_api import MOCK_SECRET_KEY as MOCK_SIDE_SECRET
from gateway_extproc.mock.bedrock_api import signature_error
from gateway_extproc.mock.eventstream import chunk_event, encode_message, exception_event
from gateway_extproc.providers.anthropic.metering import AnthropicStream
from gateway_extproc.providers.bedrock import signing
from gateway_extproc.providers.bedrock.eventstream import EventStreamDecoder, anthropic_error_type
from gateway_extproc.providers.bedrock.provider import METRICS_KEY, usage_from_metrics
from gateway_extproc.providers.metering import StreamMeter, usage_from_json
from gateway_extproc.providers.sse import SSEDecoder, SSEEvent
from gateway_extproc.tokens import Usage
from gateway_extproc.translate import messages_to_bedrock as mtb
from gateway_extproc.translate.pairs import MESSAGES_TO_BEDROCK, translation_for
from tests.paths import REPO

FIXTURE = REPO / "tests" / "fixtures" / "streams" / "anthropic_messages.sse"
METRICS = {
    "inputTokenCount": 25,
    "outputTokenCount": 9,
    "invocationLatency": 812,
    "firstByteLatency": 301,
    "cacheReadInputTokenCount": 3000,
    "cacheWriteInputTokenCount": 1200,
}


def anthropic_events() -> list[dict[str, Any]]:
    """The recorded Anthropic stream's events, as Bedrock carries them (the last with its
    invocation metrics)."""
    events = SSEDecoder().feed(FIXTURE.read_bytes())
    objs = [orjson.loads(e.data) for e in events]
    objs[-1] = {**objs[-1], METRICS_KEY: METRICS}
    return objs


def bedrock_stream(objs: list[dict[str, Any]] | None = None) -> bytes:
    return b"".join(chunk_event(o) for o in (objs if objs is not None else anthropic_events()))


def decode_split(raw: bytes, size: int) -> tuple[list[SSEEvent], EventStreamDecoder]:
    decoder = EventStreamDecoder()
    out: list[SSEEvent] = []
    for i in range(0, len(raw), size):
        out += decoder.feed(raw[i : i + size])
    out += decoder.flush()
    return out, decoder


# --- framing -------------------------------------------------------------------------------


def test_mock_encoder_is_what_botocore_decodes() -> None:
    buffer = EventStreamBuffer()
    buffer.add_data(encode_message({":event-type": "chunk", "x": "ü"}, b"payload"))
    (message,) = list(buffer)
    assert message.headers == {":event-type": "chunk", "x": "ü"}
    assert message.payload == b"payload"


@pytest.mark.parametrize("size", [1, 2, 3, 7, 13, 64, 1 << 20])
def test_stream_split_at_any_byte_decodes_the_same(size: int) -> None:
    objs = anthropic_events()
    events, decoder = decode_split(bedrock_stream(objs), size)
    assert [orjson.loads(e.data) for e in events] == objs
    assert [e.event for e in events] == [o["type"] for o in objs]
    assert decoder.malformed == 0 and not decoder.broken


def test_every_split_point_of_two_frames() -> None:
    raw = bedrock_stream(anthropic_events()[:2])
    whole, _ = decode_split(raw, len(raw))
    for cut in range(1, len(raw)):
        decoder = EventStreamDecoder()
        got = decoder.feed(raw[:cut]) + decoder.feed(raw[cut:]) + decoder.flush()
        assert got == whole, cut


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("throttlingException", "rate_limit_error"),
        ("modelStreamErrorException", "api_error"),
        ("validationException", "invalid_request_error"),
        ("serviceUnavailableException", "overloaded_error"),
        ("internalServerException", "api_error"),
        ("somethingNew", "api_error"),
    ],
)
def test_exception_frame_is_an_anthropic_error_event(name: str, kind: str) -> None:
    raw = chunk_event({"type": "message_start", "message": {}}) + exception_event(name, "slow")
    events, decoder = decode_split(raw, 5)
    assert events[-1] == SSEEvent(
        "error",
        orjson.dumps({"type": "error", "error": {"type": kind, "message": "slow"}}).decode(),
    )
    assert decoder.malformed == 0
    assert anthropic_error_type(name.upper() + ":http://x") == kind


def test_corrupt_frame_stops_decoding_and_is_counted() -> None:
    raw = bytearray(bedrock_stream())
    first = len(chunk_event(anthropic_events()[0]))
    raw[first + 20] ^= 0xFF  # inside the second frame's headers: its CRC fails
    events, decoder = decode_split(bytes(raw), 11)
    assert len(events) == 1 and decoder.broken and decoder.malformed == 1
    assert decoder.feed(b"more") == []


def test_truncated_last_frame_is_counted_at_flush() -> None:
    raw = bedrock_stream()[:-3]
    events, decoder = decode_split(raw, 100)
    assert len(events) == len(anthropic_events()) - 1 and decoder.malformed == 1


@pytest.mark.parametrize(
    "frame",
    [
        encode_message({":event-type": "initial-response", ":message-type": "event"}, b"{}"),
        encode_message({":event-type": "chunk", ":message-type": "event"}, b"not json"),
        encode_message({":event-type": "chunk"}, orjson.dumps({"bytes": "!!notbase64"})),
        encode_message({":event-type": "chunk"}, orjson.dumps({"bytes": "W10="})),  # []
        encode_message({":event-type": "chunk"}, orjson.dumps({"other": 1})),
    ],
)
def test_frames_that_carry_no_event_are_skipped_and_counted(frame: bytes) -> None:
    good = chunk_event({"type": "ping"})
    events, decoder = decode_split(frame + good, 3)
    assert [e.event for e in events] == ["ping"] and decoder.malformed == 1


# --- metering --------------------------------------------------------------------------------


def _meter(raw: bytes, size: int) -> Any:
    meter = StreamMeter(Api.BEDROCK_INVOKE)
    for i in range(0, len(raw), size):
        meter.feed(raw[i : i + size])
    return meter.flush()


@pytest.mark.parametrize("size", [1, 5, 1 << 20])
def test_stream_metered_from_anthropic_usage(size: int) -> None:
    result = _meter(bedrock_stream(), size)
    reference = AnthropicStream()
    for obj in anthropic_events():
        reference.on_json(obj["type"], obj)
    assert result.usage == reference.usage() is not None
    assert result.usage.cached_input_tokens == 3000  # cache reads and writes included
    assert result.usage.cache_write_input_tokens == 1200
    assert result.completed and result.malformed_events == 0
    assert result.served_model == "claude-sonnet-4-5-20250929"


def test_invocation_metrics_are_the_fallback_only() -> None:
    objs = [
        {k: v for k, v in o.items() if k != "usage"} for o in anthropic_events()
    ]  # message_delta without usage
    objs[0] = {"type": "message_start", "message": {"id": "m", "model": "c"}}  # no usage
    result = _meter(bedrock_stream(objs), 7)
    assert result.usage == Usage(
        input_tokens=25, output_tokens=9, cached_input_tokens=3000, cache_write_input_tokens=1200
    )
    # With Anthropic's usage present, the metrics (here deliberately different) are not used.
    objs = anthropic_events()
    objs[-1][METRICS_KEY] = {**METRICS, "outputTokenCount": 999_999}
    assert _meter(bedrock_stream(objs), 7).usage.output_tokens != 999_999


@pytest.mark.parametrize(
    ("metrics", "usage"),
    [
        (None, None),
        ({}, None),
        ({"inputTokenCount": -1, "outputTokenCount": "3"}, None),
        ({"inputTokenCount": 4}, Usage(input_tokens=4)),
        (METRICS, Usage(25, 3000, 1200, 9)),
    ],
)
def test_usage_from_metrics(metrics: object, usage: Usage | None) -> None:
    assert usage_from_metrics(metrics) == usage


def test_error_stream_is_not_completed() -> None:
    raw = chunk_event(anthropic_events()[0]) + exception_event("throttlingException", "x")
    result = _meter(raw, 4)
    assert not result.completed and result.usage is not None


def test_json_answer_is_anthropic_message_json() -> None:
    body = orjson.dumps(
        {
            "id": "msg_1",
            "type": "message",
            "model": "claude-haiku-4-5-20251001",
            "content": [{"type": "text", "text": "hi there"}],
            "stop_reason": "end_turn",
            "usage": {
                "input_tokens": 10,
                "output_tokens": 3,
                "cache_read_input_tokens": 5,
                "cache_creation_input_tokens": 2,
            },
        }
    )
    result = usage_from_json(Api.BEDROCK_INVOKE, body)
    assert result.usage == Usage(10, 5, 2, 3)
    assert result.output_bytes == len("hi there")


# --- the rewrite -------------------------------------------------------------------------------


def test_bedrock_api_is_not_a_gateway_path() -> None:
    assert Api.BEDROCK_INVOKE.schema is Schema.BEDROCK
    assert api_for_path("/v1/model/invoke") is None
    assert translation_for(Api.ANTHROPIC_MESSAGES, Schema.BEDROCK) is MESSAGES_TO_BEDROCK
    assert translation_for(Api.OPENAI_CHAT, Schema.BEDROCK) is None  # not chained (yet)
    assert MESSAGES_TO_BEDROCK.name == "anthropic_messages>bedrock_invoke"


def test_request_body_and_path() -> None:
    client = {
        "model": "bedrock-claude-haiku-4-5",
        "stream": True,
        "max_tokens": 100,
        "system": "terse",
        "messages": [{"role": "user", "content": "hi"}],
        "metadata": {"user_id": "u1"},
    }
    translated = mtb.invoke_request(client)
    assert "model" not in translated and client["model"]  # the client's body is not changed
    model = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
    path = mtb.invoke_path(model, True)
    assert (
        path == "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke-with-response-stream"
    )
    assert mtb.invoke_path("a/b", False) == "/model/a%2Fb/invoke"
    body = orjson.loads(mtb.invoke_body(translated, model=model, max_tokens=7, beta=""))
    assert body == {
        "max_tokens": 100,  # the client's, not the default
        "system": "terse",
        "messages": [{"role": "user", "content": "hi"}],
        "metadata": {"user_id": "u1"},
        "anthropic_version": "bedrock-2023-05-31",
    }
    no_limit = {k: v for k, v in translated.items() if k != "max_tokens"}
    body = orjson.loads(mtb.invoke_body(no_limit, model=model, max_tokens=7, beta=" a-1, b-2 ,,"))
    assert body["max_tokens"] == 7 and body["anthropic_beta"] == ["a-1", "b-2"]


@pytest.mark.parametrize(
    ("raw", "status", "kind", "message"),
    [
        (b'{"message": "Too many requests"}', 429, "rate_limit_error", "Too many requests"),
        (b'{"Message": "denied"}', 403, "permission_error", "denied"),
        (b'{"message": "bad"}', 400, "invalid_request_error", "bad"),
        (b'{"message": "no such model"}', 404, "not_found_error", "no such model"),
        (b'{"message": "busy"}', 503, "overloaded_error", "busy"),
        (b'{"message": "model error"}', 424, "api_error", "model error"),
        (b"<html>", 502, "api_error", "the provider answered HTTP 502"),
        (b'{"message": 7}', 500, "api_error", "the provider answered HTTP 500"),
    ],
)
def test_errors_become_anthropic_errors(raw: bytes, status: int, kind: str, message: str) -> None:
    assert orjson.loads(mtb.anthropic_error(raw, status)) == {
        "type": "error",
        "error": {"type": kind, "message": message},
    }


def test_json_answer_passes_as_it_is() -> None:
    assert mtb.same_message(b'{"type":"message"}', created=1) == b'{"type":"message"}'


@pytest.mark.parametrize("size", [1, 3, 17, 1 << 20])
def test_stream_becomes_anthropic_sse(size: int) -> None:
    """What the SDK reads: `event: X` / `data: {...}`, the events unchanged, whatever the split."""
    raw = bedrock_stream()
    translator = MESSAGES_TO_BEDROCK.stream(created=0, include_usage=False)
    out = b"".join(translator.feed(raw[i : i + size]) for i in range(0, len(raw), size))
    out += translator.flush()
    events = SSEDecoder().feed(out)
    assert [orjson.loads(e.data) for e in events] == anthropic_events()
    assert [e.event for e in events] == [o["type"] for o in anthropic_events()]
    assert out.endswith(b"\n\n") and out.startswith(b"event: message_start\ndata: {")


# --- signing -----------------------------------------------------------------------------------


def _at(
    signed: dict[str, str], later: datetime.timedelta = datetime.timedelta()
) -> datetime.datetime:
    """The time the request was signed (plus `later`): the verifier's clock, never this
    process's, so a slow run cannot age a signature."""
    when = datetime.datetime.strptime(signed["x-amz-date"], "%Y%m%dT%H%M%SZ")
    return when.replace(tzinfo=datetime.UTC) + later


PATH = "/model/global.anthropic.claude-haiku-4-5-20251001-v1%3A0/invoke"
BODY = b'{"anthropic_version":"bedrock-2023-05-31","max_tokens":8,"messages":[]}'


def _received(signed: dict[str, str], host: str = "127.0.0.1:9") -> dict[str, str]:
    """What the provider receives: the signed headers plus what Envoy adds after signing."""
    return {**signed, "host": host, "x-forwarded-proto": "http", "x-request-id": "r1"}


def _sign(credentials: Any, host: str = "127.0.0.1:9", body: bytes = BODY) -> dict[str, str]:
    return signing.BedrockSigner(credentials, "us-east-1").sign(
        host=host, path=PATH, body=body, scheme="http"
    )


def test_both_sides_spell_the_same_test_credentials() -> None:
    assert (signing.MOCK_ACCESS_KEY, signing.MOCK_SECRET_KEY) == (MOCK_SIDE_KEY, MOCK_SIDE_SECRET)


def test_signature_verified_by_botocore_on_the_mock_side() -> None:
    signed = _sign(signing.mock_credentials())
    assert set(signed) == {"authorization", "x-amz-date", "content-type"}
    assert "SignedHeaders=content-type;host;x-amz-date," in signed["authorization"]
    assert signature_error("POST", PATH, _received(signed), BODY, now=_at(signed)) is None


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"body": BODY + b" "}, "InvalidSignatureException"),
        (
            {"path": PATH.replace("invoke", "invoke-with-response-stream")},
            "InvalidSignatureException",
        ),
        ({"path": PATH.replace("%3A", ":")}, "InvalidSignatureException"),
        ({"host": "127.0.0.1:10"}, "InvalidSignatureException"),
        ({"content-type": "text/plain"}, "InvalidSignatureException"),
        ({"later": datetime.timedelta(minutes=6)}, "InvalidSignatureException"),
        ({"authorization": ""}, "MissingAuthenticationTokenException"),
    ],
)
def test_anything_changed_after_signing_is_refused(change: dict[str, Any], code: str) -> None:
    signed = _sign(signing.mock_credentials())
    headers = _received(signed, host=change.get("host", "127.0.0.1:9"))
    for name in ("content-type", "authorization"):
        if name in change:
            headers[name] = change[name]
    err = signature_error(
        "POST",
        change.get("path", PATH),
        headers,
        change.get("body", BODY),
        now=_at(signed, change.get("later", datetime.timedelta(seconds=1))),
    )
    assert err is not None and err.status == 403 and err.code == code


def test_other_credentials_are_refused() -> None:
    wrong_secret = _sign(Credentials(signing.MOCK_ACCESS_KEY, "another-secret"))
    err = signature_error("POST", PATH, _received(wrong_secret), BODY, now=_at(wrong_secret))
    assert err is not None and "signature we calculated does not match" in err.message
    other_key = _sign(Credentials("AKIDSOMEONEELSE", signing.MOCK_SECRET_KEY))
    err = signature_error("POST", PATH, _received(other_key), BODY, now=_at(other_key))
    assert err is not None and err.code == "UnrecognizedClientException"


def test_session_token_is_sent_and_signed() -> None:
    signed = _sign(Credentials(signing.MOCK_ACCESS_KEY, signing.MOCK_SECRET_KEY, "session-1"))
    assert signed["x-amz-security-token"] == "session-1"
    assert "x-amz-security-token" in signed["authorization"].split("SignedHeaders=")[1]
    assert signature_error("POST", PATH, _received(signed), BODY, now=_at(signed)) is None
    tampered = {**_received(signed), "x-amz-security-token": "session-2"}
    assert signature_error("POST", PATH, tampered, BODY, now=_at(signed)) is not None


def _refreshable(expires_in: datetime.timedelta, calls: list[int]) -> Any:
    def refresh() -> dict[str, str]:
        calls.append(1)
        expiry = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
        return {
            "access_key": signing.MOCK_ACCESS_KEY,
            "secret_key": signing.MOCK_SECRET_KEY,
            "token": f"fresh-{len(calls)}",
            "expiry_time": expiry.isoformat(),
        }

    expiry = datetime.datetime.now(datetime.UTC) + expires_in
    return RefreshableCredentials(
        signing.MOCK_ACCESS_KEY,
        signing.MOCK_SECRET_KEY,
        "stale",
        expiry,
        refresh,
        "test",
    )


def test_expired_session_credentials_are_refreshed_before_signing() -> None:
    calls: list[int] = []
    signed = _sign(_refreshable(datetime.timedelta(seconds=-5), calls))
    assert calls == [1] and signed["x-amz-security-token"] == "fresh-1"
    assert signature_error("POST", PATH, _received(signed), BODY, now=_at(signed)) is None


def test_fresh_refreshes_off_the_loop_when_due_and_not_before() -> None:
    calls: list[int] = []
    due = signing.BedrockSigner(_refreshable(datetime.timedelta(minutes=5), calls), "us-east-1")
    asyncio.run(due.fresh())
    assert calls == [1]
    asyncio.run(due.fresh())  # now valid for an hour
    assert calls == [1]
    static = signing.BedrockSigner(signing.mock_credentials(), "us-east-1")
    asyncio.run(static.fresh())  # static credentials: nothing to refresh


def test_host_header() -> None:
    assert signing.host_header("bedrock-runtime.us-east-1.amazonaws.com", 443, tls=True) == (
        "bedrock-runtime.us-east-1.amazonaws.com"
    )
    assert signing.host_header("127.0.0.1", 80, tls=False) == "127.0.0.1"
    assert signing.host_header("127.0.0.1", 8080, tls=False) == "127.0.0.1:8080"
    assert signing.host_header("vpce.example", 8443, tls=True) == "vpce.example:8443"


def _no_aws(monkeypatch: pytest.MonkeyPatch, tmp: Any) -> None:
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp / "none"))


def test_chain_reads_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    _no_aws(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token")
    frozen = signing.chain_credentials().get_frozen_credentials()
    assert (frozen.access_key, frozen.secret_key, frozen.token) == ("AKIDENV", "secret", "token")


def test_chain_reads_a_shared_profile(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    _no_aws(monkeypatch, tmp_path)
    creds = tmp_path / "credentials"
    creds.write_text("[team]\naws_access_key_id = AKIDPROFILE\naws_secret_access_key = s\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_PROFILE", "team")
    assert signing.chain_credentials().get_frozen_credentials().access_key == "AKIDPROFILE"


def test_no_credentials_and_no_instance_metadata_probe(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    _no_aws(monkeypatch, tmp_path)

    def probe(*args: object, **kwargs: object) -> None:
        raise AssertionError("the instance metadata service was asked")

    monkeypatch.setattr(
        "botocore.utils.InstanceMetadataFetcher.retrieve_iam_role_credentials", probe
    )
    assert signing.chain_credentials() is None
    with pytest.raises(AssertionError, match="instance metadata"):
        signing.chain_credentials(instance_metadata=True)  # allowed: then it is asked


def test_base64_chunks_carry_utf8() -> None:
    obj = {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Köln ☔"}}
    frame = chunk_event(obj)
    (event,) = EventStreamDecoder().feed(frame)
    assert orjson.loads(event.data) == obj
    payload = orjson.loads(next(iter(_buffer(frame))).payload)
    assert orjson.loads(base64.b64decode(payload["bytes"])) == obj


def _buffer(raw: bytes) -> EventStreamBuffer:
    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    return buffer
