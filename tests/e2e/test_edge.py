"""Envoy at the edge, through the real stack: idle connections beyond the connection cap do not
lock a real client out, slow requests get a JSON 408 while a long response stream is never cut,
HTTP/2 clients get the same body limit as HTTP/1 ones and a bounded number of streams, and
Envoy sheds load with a JSON 503 when its memory bound is exceeded (docs/security.md, "Envoy at
the edge")."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import Iterator

import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx
import openai
import pytest

from gateway_extproc.stack import Stack
from tests.e2e.conftest import start_stack, static_tokens_yaml
from tests.e2e.harness import MockLog, eventually

pytestmark = pytest.mark.e2e

CAP = 12  # limits.max_downstream_connections of the edge stack
BODY_LIMIT = 1 << 20  # limits.max_request_body_bytes of the edge stack
FIRST_BYTE_S = 4  # limits.first_byte_timeout_s: long enough to look at a full listener
IDLE_S = 2  # limits.connection_idle_timeout_s
HEADERS_S = 1  # limits.request_headers_timeout_s
REQUEST_S = 3  # limits.request_timeout_s
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def edge_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("edge")
    config = run_dir / "gateway.yaml"
    config.write_text(
        f"identity:\n  allow_anonymous: true\n  static_tokens:\n{static_tokens_yaml()}"
        "limits:\n"
        f"  max_downstream_connections: {CAP}\n"
        f"  max_request_body_bytes: {BODY_LIMIT}\n"
        f"  first_byte_timeout_s: {FIRST_BYTE_S}\n"
        f"  connection_idle_timeout_s: {IDLE_S}\n"
        f"  request_headers_timeout_s: {HEADERS_S}\n"
        f"  request_timeout_s: {REQUEST_S}\n"
    )
    s = start_stack(run_dir, config_path=config)
    yield s
    s.stop()


def address(stack: Stack) -> tuple[str, int]:
    host, port = stack.gateway_url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def envoy_stats(stack: Stack, pattern: str) -> dict[str, int]:
    """Envoy's counters and gauges whose names match `pattern` (the admin's regex filter)."""
    with urllib.request.urlopen(f"{stack.admin_url}/stats?filter={pattern}", timeout=5) as r:
        lines = r.read().decode().splitlines()
    stats = {}
    for line in lines:
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            stats[name] = int(value)
    return stats


def sdk(stack: Stack, **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=stack.gateway_url + "/v1",
        api_key="client-key",
        max_retries=0,
        **kwargs,  # type: ignore[arg-type]
    )


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether Envoy has closed this connection (EOF or a reset), without waiting."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


def exchange(stack: Stack, data: bytes, timeout: float = 30) -> tuple[float, bytes]:
    """Send `data` on a new connection and read until Envoy closes it: (seconds, bytes)."""
    started = time.monotonic()
    with socket.create_connection(address(stack)) as sock:
        sock.settimeout(timeout)
        sock.sendall(data)
        received = bytearray()
        while chunk := sock.recv(65536):
            received.extend(chunk)
    return time.monotonic() - started, bytes(received)


def json_body(response: bytes) -> dict[str, object]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), head
    if b"transfer-encoding: chunked" in head.lower():
        # A reply Envoy makes after the sidecar asked for the request's response (a slow
        # upload's 408) passes the request filter, which takes the content-length off.
        body = dechunk(body)
    parsed: dict[str, object] = json.loads(body)
    return parsed


def dechunk(body: bytes) -> bytes:
    """An HTTP/1.1 chunked body, whole (chunk extensions and trailers are not expected here)."""
    out = bytearray()
    while True:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return bytes(out)
        out.extend(rest[:size])
        assert rest[size : size + 2] == b"\r\n", "a chunk without its CRLF"
        body = rest[size + 2 :]


# --- idle connections and the connection cap -------------------------------------------------


def test_silent_connections_beyond_the_cap_do_not_lock_out_a_client(edge_stack: Stack) -> None:
    """An attacker opens more silent TCP connections than the whole cap. Envoy refuses the ones
    beyond it at once, its admin (the drain hook, the readiness checks) still answers while the
    listener is full, and it closes the silent ones when the first-byte timeout runs out: a real
    SDK request then gets through. Before this, they were held for Envoy's 1 h idle timeout."""
    listener = "listener.127.0.0.1_0."  # the gateway listener's stats (bound to port 0)

    def active() -> int:
        stats = envoy_stats(edge_stack, listener + "downstream_(pre_cx_active|cx_active)")
        return (
            stats[listener + "downstream_pre_cx_active"] + stats[listener + "downstream_cx_active"]
        )

    # Start from an empty listener: a connection left by an earlier client (the stack's own
    # readiness requests) would take a slot of the cap and count as accepted.
    eventually(lambda: active() == 0, timeout=IDLE_S + 15, what="no earlier connection left")
    refused_before = envoy_stats(edge_stack, listener + "downstream_cx_overflow")
    opened = time.monotonic()
    silent = [socket.create_connection(address(edge_stack)) for _ in range(CAP + 8)]
    try:
        # The admin answers while the listener is full, and counts who got in: accepted (waiting
        # for a first byte in the listener filters, or past them) or refused at the cap.
        counted: dict[str, int] = {}

        def all_counted() -> bool:
            stats = envoy_stats(
                edge_stack, listener + "downstream_(cx_overflow|pre_cx_active|cx_active)"
            )
            counted["accepted"] = (
                stats[listener + "downstream_pre_cx_active"]
                + stats[listener + "downstream_cx_active"]
            )
            counted["refused"] = stats[listener + "downstream_cx_overflow"] - sum(
                refused_before.values()
            )
            return counted == {"accepted": CAP, "refused": 8}

        # Envoy's admin reads the gauges and the overflow counter one after another while its
        # workers change them: one fresh-clone run read 13 accepted and 7 refused (a refused
        # connection not yet off the accepted gauge, or its overflow not yet counted), which the
        # old "all counted" test (accepted + refused >= CAP + 8) took as final. Wait for the
        # settled counts; over-acceptance that lasts still fails here, with the last count.
        try:
            eventually(all_counted, timeout=FIRST_BYTE_S - 1, what="Envoy's settled counts")
        except AssertionError as exc:
            raise AssertionError(f"counted {counted}, want {CAP} accepted, 8 refused") from exc
        eventually(
            lambda: all(closed_by_peer(s) for s in silent),
            timeout=FIRST_BYTE_S + 30,
            what="Envoy closing the silent connections",
        )
        held_for = time.monotonic() - opened
    finally:
        for s in silent:
            s.close()
    assert held_for >= FIRST_BYTE_S - 0.5  # closed by the first-byte timeout, not before
    client = sdk(edge_stack)
    with client:
        completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert completion.usage is not None and completion.usage.total_tokens > 0


def test_a_kept_alive_connection_is_closed_when_idle(edge_stack: Stack) -> None:
    """A connection that has sent a request keeps its slot only `connection_idle_timeout_s`
    (plus Envoy's drain and delayed close: ~6 s) without another."""
    with socket.create_connection(address(edge_stack)) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nhost: gateway\r\n\r\n")
        sock.settimeout(30)
        answered = time.monotonic()
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        while sock.recv(65536):
            pass
        idle_for = time.monotonic() - answered
    assert IDLE_S - 0.5 <= idle_for < 30


# --- slow requests, long responses -------------------------------------------------------------


def test_slow_headers_get_a_json_408(edge_stack: Stack) -> None:
    took, response = exchange(edge_stack, b"POST /v1/chat/completions HTTP/1.1\r\nhost: g\r\n")
    assert response.startswith(b"HTTP/1.1 408")
    error = json_body(response)["error"]
    assert isinstance(error, dict) and error["code"] == "request_timeout"
    assert took >= HEADERS_S - 0.5


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_a_slow_upload_gets_a_json_408_in_the_clients_format(edge_stack: Stack, path: str) -> None:
    head = f"POST {path} HTTP/1.1\r\nhost: g\r\ncontent-type: application/json\r\n"
    took, response = exchange(edge_stack, (head + "content-length: 100\r\n\r\n{").encode())
    assert response.startswith(b"HTTP/1.1 408")
    body = json_body(response)
    if path == "/v1/messages":
        assert body["type"] == "error"
        assert body["error"] == {
            "type": "request_timeout",
            "message": f"the request was not received within {REQUEST_S} s",
        }
    else:
        error = body["error"]
        assert isinstance(error, dict) and error["code"] == "request_timeout"
    assert took >= REQUEST_S - 0.5


def test_the_request_timeout_never_cuts_a_response_stream(edge_stack: Stack) -> None:
    """`request_timeout` ends when the request has gone upstream: a stream three times as long
    as it completes (test_streams.py's long stream crosses every such timer at once)."""
    client = sdk(edge_stack)
    headers = {"x-mock-output-tokens": "10", "x-mock-chunk-delay-ms": str(REQUEST_S * 100)}
    started = time.monotonic()
    with client:
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers=headers
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert time.monotonic() - started >= REQUEST_S
    assert len(text.split()) == 10


def test_a_header_named_with_an_underscore_is_refused_as_json(edge_stack: Stack) -> None:
    mock = MockLog(str(edge_stack.mock_url).removesuffix("/v1"))
    mock.clear()
    request = b"GET /v1/models HTTP/1.1\r\nhost: g\r\nx_api_key: sk-guess\r\n\r\n"
    _, response = exchange(edge_stack, request)
    assert response.startswith(b"HTTP/1.1 400")
    assert json_body(response)["error"] == {
        "message": "request header names must not contain underscores",
        "type": "gateway_error",
        "param": None,
        "code": "invalid_request",
    }
    assert mock.received() == []


def test_client_x_envoy_headers_do_not_make_envoy_retry(edge_stack: Stack) -> None:
    """With `use_remote_address` every client is external: Envoy ignores its x-envoy-* request
    headers, so a client cannot make Envoy send (and the provider bill) one request twice."""
    mock = MockLog(str(edge_stack.mock_url).removesuffix("/v1"))
    mock.clear()
    headers = {
        "authorization": "Bearer client-key",
        "x-mock-status": "503",
        "x-envoy-max-retries": "3",
        "x-envoy-retry-on": "5xx",
    }
    body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES})
    response = httpx.post(
        edge_stack.gateway_url + "/v1/chat/completions", content=body, headers=headers, timeout=30
    )
    assert response.status_code == 503
    received = mock.received()
    assert len(received) == 1
    assert not [k for k in received[0]["headers"] if k.startswith("x-envoy-retry")]


# --- HTTP/2 clients (the default configuration) -------------------------------------------------


def test_http2_settings_bound_streams_and_admit_the_body_limit(stack: Stack) -> None:
    """What Envoy advertises to an HTTP/2 client: at most 100 streams at once on a connection,
    a stream window as large as the body limit, a 1 MiB connection window."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    settings: dict[int, int] = {}
    connection_window = 0
    with socket.create_connection(address(stack)) as sock:
        sock.settimeout(10)
        sock.sendall(conn.data_to_send())
        while not settings or not connection_window:
            data = sock.recv(65536)  # at most 10 s each (the socket timeout)
            assert data, "Envoy closed the connection before its settings and window update"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RemoteSettingsChanged):
                    settings = {int(k): v.new_value for k, v in event.changed_settings.items()}
                elif isinstance(event, h2.events.WindowUpdated) and event.stream_id == 0:
                    connection_window = 65_535 + event.delta
            sock.sendall(conn.data_to_send())
    assert settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] == 100
    assert (
        settings[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE]
        == stack.config.limits.max_request_body_bytes
    )
    assert connection_window == 1 << 20


def h2_sdk(stack: Stack) -> openai.OpenAI:
    """The openai SDK speaking HTTP/2 to Envoy (prior knowledge: the listener has no TLS)."""
    return sdk(stack, http_client=httpx.Client(http1=False, http2=True, timeout=120))


def test_an_http2_client_may_send_a_body_up_to_the_limit(stack: Stack) -> None:
    """Envoy buffers at most a stream's window of an HTTP/2 body: with its default window
    (16 MiB) an HTTP/2 client got 413 for a 20 MB body that an HTTP/1 client may send."""
    with h2_sdk(stack) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "x " * 10_000_000}],  # 20 MB of text
            max_tokens=5,
        )
    assert raw.http_response.http_version == "HTTP/2"
    assert raw.parse().usage is not None


def test_an_http2_body_over_the_limit_gets_the_json_413(edge_stack: Stack) -> None:
    """The limit holds for HTTP/2 too (the edge stack's is 1 MiB): before, Envoy took HTTP/2
    bodies up to its 16 MiB window whatever the limit, and the sidecar's gRPC limit failed them."""
    limit = edge_stack.config.limits.max_request_body_bytes
    with h2_sdk(edge_stack) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "x" * (limit - 1000)}],
            max_tokens=5,
        )
        assert raw.http_response.http_version == "HTTP/2"
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "x" * (limit + 1)}],
                max_tokens=5,
            )
    assert refused.value.status_code == 413
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["code"] == "request_too_large"


# --- memory: the overload manager ---------------------------------------------------------------


@pytest.fixture(scope="module")
def overloaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Envoy alone (no sidecar: nothing gets that far) with a memory bound it is already over."""
    run_dir = tmp_path_factory.mktemp("overloaded")
    config = run_dir / "gateway.yaml"
    config.write_text("limits:\n  envoy_memory_limit_bytes: 1048576\n")
    s = start_stack(run_dir, config_path=config, start_sidecar=False)
    yield s
    s.stop()


def test_envoy_over_its_memory_bound_sheds_requests_with_a_json_503(overloaded: Stack) -> None:
    actions = (
        "reduce_timeouts",
        "disable_http_keepalive",
        "shrink_heap",
        "reset_high_memory_stream",
        "stop_accepting_requests",
    )

    def saturated() -> bool:
        stats = envoy_stats(overloaded, "overload.envoy.overload_actions")
        return all(stats.get(f"overload.envoy.overload_actions.{a}.active") == 1 for a in actions)

    eventually(saturated, timeout=30, what="every overload action active")
    with sdk(overloaded) as client, pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert refused.value.status_code == 503
    assert isinstance(refused.value.body, dict) and refused.value.body["code"] == "overloaded"
