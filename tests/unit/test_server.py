"""The ext_proc gRPC server as a process on an ephemeral loopback port: health, reflection, a
bidirectional Process stream, the audit line, SIGTERM draining, and a bad config at start-up."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway_extproc.apis import Api
from gateway_extproc.catalog.pricing import Price
from gateway_extproc.config.gateway import load_config
from gateway_extproc.extproc import messages as msgs
from gateway_extproc.handoff import MAC_KEY, NAMESPACE, STATE_KEY, RequestState
from gateway_extproc.identity.model import ANONYMOUS
from gateway_extproc.request.route import CLUSTER_HEADER
from gateway_extproc.sidecar_auth.seal import StateSeal
from tests.paths import REPO
from tests.selfsigned import Pki, write_pki
from tests.sidecar_secrets import ENV as SIDECAR_ENV
from tests.sidecar_secrets import METADATA
from tests.sidecar_secrets import STATE_KEY as STATE_SECRET

MOCK = "http://127.0.0.1:9/v1"
SERVER = (sys.executable, "-m", "gateway_extproc.server")
SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclasses.dataclass
class Sidecar:
    proc: subprocess.Popen[bytes]
    port: int
    audit: Path
    stderr: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def audit_lines(self) -> list[dict[str, object]]:
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines()]


def _environ(audit: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY") and not k.startswith("GATEWAY_")
    }
    env["GATEWAY_AUDIT_LOG"] = str(audit)
    return env | SIDECAR_ENV


def _spawn(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], Path, Path, Path]:
    port_file = tmp_path / "port"
    audit = tmp_path / "audit.jsonl"
    stderr = tmp_path / "stderr.log"
    with (tmp_path / "stdout.log").open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway_extproc.server",
                "--address",
                "127.0.0.1:0",
                "--port-file",
                str(port_file),
                "--mock-url",
                MOCK,
                *extra,
            ],
            cwd=REPO,
            env=_environ(audit),
            stdout=out,
            stderr=err,
        )
    return proc, port_file, audit, stderr


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def _wait_for_port(proc: subprocess.Popen[bytes], port_file: Path, stderr: Path) -> int:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sidecar exited with {proc.returncode}:\n{stderr.read_text()}")
        if port_file.exists():
            return int(port_file.read_text())
        time.sleep(0.02)
    pytest.fail(f"sidecar wrote no port file:\n{stderr.read_text()}")


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Sidecar]]:
    """Start a sidecar (extra CLI arguments optional); every one started is killed afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def _start(*extra: str) -> Sidecar:
        proc, port_file, audit, stderr = _spawn(tmp_path, *extra)
        started.append(proc)
        return Sidecar(proc, _wait_for_port(proc, port_file, stderr), audit, stderr)

    try:
        yield _start
    finally:
        for proc in started:
            _stop(proc)


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    tmp = tmp_path_factory.mktemp("sidecar")
    config = tmp / "anonymous.yaml"  # these tests are about the gRPC tier, not identity
    client = {"sha256": hashlib.sha256(b"sk-client").hexdigest()}
    identity = {"allow_anonymous": True, "static_tokens": {"test-client": client}}
    config.write_text(yaml.safe_dump({"identity": identity}))
    proc, port_file, audit, stderr = _spawn(tmp, "--config", str(config))
    try:
        yield Sidecar(proc, _wait_for_port(proc, port_file, stderr), audit, stderr)
    finally:
        _stop(proc)


def _check(channel: grpc.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(reply.status)


# --- health and reflection ---------------------------------------------------------------------


@pytest.mark.parametrize("service", ["", SERVICE])
def test_health_serving(sidecar: Sidecar, service: str) -> None:
    with grpc.insecure_channel(sidecar.target) as channel:
        assert _check(channel, service) == SERVING


def test_health_unknown_service(sidecar: Sidecar) -> None:
    with grpc.insecure_channel(sidecar.target) as channel, pytest.raises(grpc.RpcError) as info:
        _check(channel, "no.such.Service")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(sidecar: Sidecar) -> None:
    with grpc.insecure_channel(sidecar.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
    services = {s.name for s in reply.list_services_response.service}
    assert SERVICE in services
    assert "grpc.health.v1.Health" in services


# --- the Process stream --------------------------------------------------------------------------


def _headers(headers: dict[str, str], *, end: bool = False) -> pb.ProcessingRequest:
    header_map = base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]
    )
    return pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(headers=header_map, end_of_stream=end)
    )


def _chat_model() -> str:
    """A chat-capable OpenAI model of the shipped catalog (its names change with prices)."""
    config = load_config(None, {})
    return next(
        m.name for m in config.catalog.models() if m.provider == "openai" and not m.embedding
    )


def test_process_stream(sidecar: Sidecar) -> None:
    before = len(sidecar.audit_lines())
    model = _chat_model()
    outbox: queue.Queue[pb.ProcessingRequest | None] = queue.Queue()

    def requests() -> Iterator[pb.ProcessingRequest]:
        while (message := outbox.get(timeout=10)) is not None:
            yield message

    with grpc.insecure_channel(sidecar.target) as channel:
        replies = pb_grpc.ExternalProcessorStub(channel).Process(
            requests(), timeout=10, metadata=METADATA
        )
        outbox.put(
            _headers(
                {
                    ":method": "POST",
                    ":path": "/v1/chat/completions",
                    "x-request-id": "grpc-test-1",
                    "authorization": "Bearer sk-client",
                    "content-type": "application/json",
                }
            )
        )
        first = next(replies)
        assert first.WhichOneof("response") == "request_headers"
        assert "authorization" in first.request_headers.response.header_mutation.remove_headers
        assert first.mode_override == msgs.FORWARDED_MODE  # its body and its response, here

        # A stream: its response goes to the observer (a JSON answer stays on this stream).
        messages = [{"role": "user", "content": "hi"}]
        body = json.dumps({"model": model, "stream": True, "messages": messages})
        outbox.put(
            pb.ProcessingRequest(request_body=pb.HttpBody(body=body.encode(), end_of_stream=True))
        )
        second = next(replies)
        assert second.WhichOneof("response") == "request_body"
        common = second.request_body.response
        set_headers = {
            h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers
        }
        assert set_headers[CLUSTER_HEADER] == "provider_openai"
        assert set_headers[":path"] == "/v1/chat/completions"
        assert "authorization" not in set_headers  # mocked: no key injected
        assert common.clear_route_cache
        # Observe mode: the request's state and response headers go to Envoy's dynamic metadata.
        handed = second.dynamic_metadata.fields[NAMESPACE].struct_value.fields
        assert handed["x-gateway-request-id"].string_value == "grpc-test-1"
        state = RequestState.decode(handed[STATE_KEY].string_value)
        assert (state.request_id, state.requested_model) == ("grpc-test-1", model)
        outbox.put(None)  # Envoy ends the request's stream
        assert list(replies) == []
        assert sidecar.audit_lines()[before:] == []  # the observer audits it, not this stream

        # The observer stream, as Envoy sends it: the request headers, then (here) nothing
        # more - the client went away before the response. Envoy waits for no reply.
        observed = _headers({":method": "POST", ":path": "/v1/chat/completions"})
        observed.observability_mode = True
        observed.metadata_context.filter_metadata[NAMESPACE].CopyFrom(
            second.dynamic_metadata.fields[NAMESPACE].struct_value
        )
        stub = pb_grpc.ExternalProcessorStub(channel)
        assert list(stub.Process(iter([observed]), timeout=10, metadata=METADATA)) == []

    deadline = time.monotonic() + 5
    while len(sidecar.audit_lines()) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    lines = sidecar.audit_lines()[before:]
    assert len(lines) == 1
    record = lines[0]
    assert record["request_id"] == "grpc-test-1"
    assert record["requested_model"] == model
    assert (record["provider"], record["upstream_mocked"]) == ("openai", True)
    assert (record["completed"], record["usage_source"]) == (False, "bound")


def test_observer_stream_meters_a_response_and_closes_at_its_end(sidecar: Sidecar) -> None:
    """An observability-mode stream gets no replies; the sidecar ends it itself once the
    response is over (rather than leaving it to Envoy's deferred close)."""
    before = len(sidecar.audit_lines())
    model = _chat_model()
    state = RequestState(
        request_id="grpc-observed-1",
        arrived=time.time(),
        method="POST",
        path="/v1/chat/completions",
        api=Api.OPENAI_CHAT,
        requested_model=model,
        served_model=model,
        price=Price(input=2_000_000, output=8_000_000, cached_input=0, cache_write=0, reasoning=0),
        provider="openai",
        stream=False,
        input_tokens_estimate=9,
        max_tokens=None,
        cap_injected=False,
        identity=ANONYMOUS,
        metadata={},
        budget=None,
    )
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    response = json.dumps({"object": "chat.completion", "model": model, "usage": usage})
    messages = [
        pb.ProcessingRequest(
            response_headers=pb.HttpHeaders(
                headers=base_pb2.HeaderMap(
                    headers=[
                        base_pb2.HeaderValue(key=":status", raw_value=b"200"),
                        base_pb2.HeaderValue(key="content-type", raw_value=b"application/json"),
                    ]
                )
            )
        ),
        pb.ProcessingRequest(response_body=pb.HttpBody(body=response.encode(), end_of_stream=True)),
    ]
    text = state.encode()
    mac = StateSeal((STATE_SECRET.encode(),)).sign(text)  # as the worker's request phase signs
    for message in messages:
        message.observability_mode = True
        message.metadata_context.filter_metadata[NAMESPACE].update({STATE_KEY: text, MAC_KEY: mac})
    outbox: queue.Queue[pb.ProcessingRequest | None] = queue.Queue()
    for message in messages:
        outbox.put(message)

    def requests() -> Iterator[pb.ProcessingRequest]:
        while (message := outbox.get(timeout=10)) is not None:
            yield message

    with grpc.insecure_channel(sidecar.target) as channel:
        # The client never ends its side: the server closes the stream after the response end.
        replies = pb_grpc.ExternalProcessorStub(channel).Process(
            requests(), timeout=10, metadata=METADATA
        )
        assert list(replies) == []
    deadline = time.monotonic() + 5
    while len(sidecar.audit_lines()) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    (record,) = sidecar.audit_lines()[before:]
    assert record["request_id"] == "grpc-observed-1"
    assert (record["completed"], record["usage_source"], record["status"]) == (
        True,
        "provider",
        200,
    )
    # 10 x $2 + 5 x $8 per million tokens
    assert record["cost_micros"] == 60


def test_process_stream_immediate_response(sidecar: Sidecar) -> None:
    with grpc.insecure_channel(sidecar.target) as channel:
        stub = pb_grpc.ExternalProcessorStub(channel)
        message = _headers(
            {":method": "GET", ":path": "/v1/models", "x-request-id": "m-1"}, end=True
        )
        (reply,) = list(stub.Process(iter([message]), timeout=10, metadata=METADATA))
    assert reply.immediate_response.status.code == 200
    assert json.loads(reply.immediate_response.body)["object"] == "list"


# --- lifecycle ---------------------------------------------------------------------------------


def test_sigterm_drains_then_exits(start: Callable[..., Sidecar], tmp_path: Path) -> None:
    config = tmp_path / "drain.yaml"
    # A drain long enough that the checks below happen inside it on any machine.
    drain_s = 4
    config.write_text(yaml.safe_dump({"sidecar": {"drain_s": drain_s, "grace_s": 1}}))
    sidecar = start("--config", str(config))
    with grpc.insecure_channel(sidecar.target) as channel:
        assert _check(channel, SERVICE) == SERVING
        sent = time.monotonic()
        sidecar.proc.send_signal(signal.SIGTERM)
        deadline = sent + 30
        while (status := _check(channel, SERVICE)) != NOT_SERVING:
            assert status == SERVING and sidecar.proc.poll() is None, "exited without a drain"
            assert time.monotonic() < deadline, "never reported NOT_SERVING"
            time.sleep(0.02)
        assert _check(channel, "") == NOT_SERVING
        assert sidecar.proc.poll() is None, "the sidecar keeps serving while it drains"
    assert sidecar.proc.wait(timeout=30) == 0
    assert time.monotonic() - sent >= drain_s  # it waited the drain out


def test_sigterm_serves_old_and_new_streams_through_the_drain_then_waits_for_old_ones(
    start: Callable[..., Sidecar], tmp_path: Path
) -> None:
    """What Envoy relies on: during drain_s a NOT_SERVING worker still serves every stream (Envoy
    has not noticed yet); afterwards it refuses new ones and lets the open ones finish."""
    config = tmp_path / "drain.yaml"
    sidecar_cfg = {"drain_s": 1, "grace_s": 60, "health_check_interval_s": 0.25}
    # Synchronous: the old stream's own processor audits the request when the stream ends.
    doc = {
        "sidecar": sidecar_cfg,
        "identity": {"allow_anonymous": True},
        "metering": {"mode": "synchronous"},
    }
    config.write_text(yaml.safe_dump(doc))
    sidecar = start("--config", str(config))
    outbox: queue.Queue[pb.ProcessingRequest | None] = queue.Queue()

    def requests() -> Iterator[pb.ProcessingRequest]:
        while (message := outbox.get(timeout=30)) is not None:
            yield message

    def models(channel: grpc.Channel) -> int | grpc.StatusCode:
        """A new stream: the HTTP status of its answer, or the gRPC code refusing it."""
        message = _headers({":method": "GET", ":path": "/v1/models", "x-request-id": "m"}, end=True)
        stub = pb_grpc.ExternalProcessorStub(channel)
        try:
            (reply,) = list(stub.Process(iter([message]), timeout=5, metadata=METADATA))
        except grpc.RpcError as exc:
            return exc.code()
        return int(reply.immediate_response.status.code)

    with grpc.insecure_channel(sidecar.target) as channel:
        replies = pb_grpc.ExternalProcessorStub(channel).Process(
            requests(), timeout=60, metadata=METADATA
        )
        outbox.put(
            _headers({":method": "POST", ":path": "/v1/chat/completions", "x-request-id": "old-1"})
        )
        assert next(replies).WhichOneof("response") == "request_headers"
        sidecar.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _check(channel, SERVICE) != NOT_SERVING:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        # New streams, one after another, until the worker refuses one (the drain's end): each
        # before was served, the first of them at once after NOT_SERVING.
        served = 0
        while (status := models(channel)) == 200:
            served += 1
            assert time.monotonic() < deadline and sidecar.proc.poll() is None
        assert status == grpc.StatusCode.UNAVAILABLE, status
        assert served >= 1, "no new stream was served during the drain"
        assert b"no new streams" in sidecar.stderr.read_bytes()  # refused by the drain's end
        # The stream that was open before SIGTERM still works, and the worker waits for it.
        body = json.dumps({"model": _chat_model(), "messages": [{"role": "user", "content": "x"}]})
        outbox.put(
            pb.ProcessingRequest(request_body=pb.HttpBody(body=body.encode(), end_of_stream=True))
        )
        assert next(replies).WhichOneof("response") == "request_body"
        assert sidecar.proc.poll() is None
        outbox.put(None)
        assert list(replies) == []
    assert sidecar.proc.wait(timeout=30) == 0
    assert [r["request_id"] for r in sidecar.audit_lines()] == ["m"] * served + ["old-1"]


# --- who may call ---------------------------------------------------------------------------------


def _models_request(metadata: tuple[tuple[str, str], ...] | None, channel: grpc.Channel) -> int:
    """GET /v1/models on a Process stream (the sidecar answers it itself with a 200)."""
    message = _headers({":method": "GET", ":path": "/v1/models", "x-request-id": "who"}, end=True)
    stub = pb_grpc.ExternalProcessorStub(channel)
    (reply,) = list(stub.Process(iter([message]), timeout=10, metadata=metadata))
    return int(reply.immediate_response.status.code)


@pytest.mark.parametrize(
    "metadata",
    [None, (("x-gateway-sidecar-token", "not-the-token-0123456789abcdefghijklmnop"),)],
    ids=["no token", "a wrong token"],
)
def test_a_stream_without_the_caller_token_is_refused_before_any_work(
    sidecar: Sidecar, metadata: tuple[tuple[str, str], ...] | None
) -> None:
    """Refused UNAUTHENTICATED before a message is read: no answer, no audit record. Health and
    reflection stay open (they carry no request data, and Envoy's health checks and an exec
    probe use them); the ext_proc service is what only Envoy may call."""
    before = len(sidecar.audit_lines())
    with grpc.insecure_channel(sidecar.target) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            _models_request(metadata, channel)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert _check(channel, SERVICE) == SERVING
        assert _models_request(METADATA, channel) == 200  # Envoy, with the token
    # The refused streams came first: had either left a record, it would precede this one.
    deadline = time.monotonic() + 10
    while not (lines := sidecar.audit_lines()[before:]):
        assert time.monotonic() < deadline, "no audit record for the served stream"
        time.sleep(0.02)
    assert [r["request_id"] for r in lines] == ["who"]
    log = sidecar.stderr.read_text()
    assert "ext_proc stream(s) without the caller token" in log  # once a minute at most
    assert "not-the-token" not in log


def test_a_sidecar_without_its_secrets_does_not_start(tmp_path: Path) -> None:
    env = {k: v for k, v in _environ(tmp_path / "audit.jsonl").items() if k not in SIDECAR_ENV}
    result = subprocess.run(
        [sys.executable, "-m", "gateway_extproc.server", "--address", "127.0.0.1:0"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "sidecar.caller_token: environment variable GATEWAY_SIDECAR_TOKEN is not set" in (
        result.stderr
    )
    assert "sidecar.state_keys: environment variable GATEWAY_STATE_KEYS is not set" in (
        result.stderr
    )


def test_plaintext_ext_proc_is_refused_on_an_address_the_pod_network_reaches(
    tmp_path: Path,
) -> None:
    result = subprocess.run(
        [*SERVER, "--address", "0.0.0.0:0", "--mock-url", MOCK],
        cwd=REPO,
        env=_environ(tmp_path / "audit.jsonl"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "refusing to serve ext_proc in plaintext on 0.0.0.0:0" in result.stderr


def test_a_sidecar_with_tls_requires_a_client_certificate(
    start: Callable[..., Sidecar], tmp_path: Path
) -> None:
    pki = write_pki(tmp_path / "pki")
    stranger = write_pki(tmp_path / "stranger")  # another CA's client certificate
    config = tmp_path / "tls.yaml"
    tls = {"cert_file": pki.file("server.crt"), "key_file": pki.file("server.key")}
    tls["client_ca_file"] = pki.ca
    identity = {"allow_anonymous": True}
    config.write_text(yaml.safe_dump({"sidecar": {"tls": tls}, "identity": identity}))
    sidecar = start("--config", str(config))
    target = f"localhost:{sidecar.port}"

    def channel(client: Pki | None) -> grpc.Channel:
        pem = {}
        if client is not None:
            pem["private_key"] = Path(client.file("client.key")).read_bytes()
            pem["certificate_chain"] = Path(client.file("client.crt")).read_bytes()
        credentials = grpc.ssl_channel_credentials(Path(pki.ca).read_bytes(), **pem)
        return grpc.secure_channel(target, credentials)

    for client in (None, stranger):  # the TLS handshake fails: nothing reaches the servicer
        with channel(client) as refused_channel, pytest.raises(grpc.RpcError) as refused:
            _models_request(METADATA, refused_channel)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    with channel(pki) as ok:
        assert _models_request(METADATA, ok) == 200
        with pytest.raises(grpc.RpcError) as no_token:  # the token is still required here
            _models_request(None, ok)
        assert no_token.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with grpc.insecure_channel(target) as plaintext, pytest.raises(grpc.RpcError) as refused:
        _models_request(METADATA, plaintext)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_bad_config_exits_2_with_every_problem(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listner": {},
                "limits": {"max_request_body_bytes": 1},
                "providers": {"openai": {"base_url": "ftp://x"}},
            }
        )
    )
    audit = tmp_path / "audit.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "gateway_extproc.server", "--config", str(config)],
        cwd=REPO,
        env=_environ(audit),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    for problem in (
        "invalid configuration:",
        "listner: unknown key",
        "limits.max_request_body_bytes: must be an integer in [1024, 536870912] (got 1)",
        "providers.openai.base_url: must be an http(s) URL (got 'ftp://x')",
    ):
        assert problem in result.stderr
    assert result.stdout == ""
    assert not audit.exists()


def test_missing_key_without_mock_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "strict.yaml"
    # Providers the file names must have their keys (an unnamed built-in one is left out).
    doc = {"mock_unconfigured_providers": False, "providers": {"openai": {}, "anthropic": {}}}
    config.write_text(yaml.safe_dump(doc))
    result = subprocess.run(
        [sys.executable, "-m", "gateway_extproc.server", "--config", str(config)],
        cwd=REPO,
        env=_environ(tmp_path / "audit.jsonl"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "providers.openai.auth: no credential in environment variable OPENAI_API_KEY" in (
        result.stderr
    )
    assert "providers.anthropic.auth: no credential in environment variable ANTHROPIC_API_KEY" in (
        result.stderr
    )
