"""Envoy facts for fallback (issue 26), proven on the pip Envoy 1.40 with no gateway code: an
ext_proc filter among a cluster's UPSTREAM http_filters runs once per attempt, learns the
attempt's target from endpoint metadata, and rewrites path, credential, host and body for it,
while the route's retry policy walks priority levels. The downstream ext_proc (the sidecar's
position) is there to show what it sees of the attempts. docs/fallback.md builds on these.

One Envoy, two tiny ext_proc servers (downstream and upstream) and two HTTP upstreams, `a` at
priority 0 and `b` at priority 1 of cluster `pair`; cluster `refused` has a closed port at
priority 0 and `b` at priority 1. The client's `x-act-<target>` header tells a target what to do
(`ok`, `500`, `429`, `stall`, `midbody-*`); `x-fact-id` ties every party's record to one request.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import subprocess
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf import json_format, struct_pb2

from gateway_extproc.extproc.messages import headers_of
from gateway_extproc.launch import free_port, launch_envoy

pytestmark = pytest.mark.e2e

TARGET_NS = "gw.target"  # endpoint metadata namespace naming the target
# The attribute the upstream ext_proc asks for: the metadata of the host THIS attempt got.
TARGET_ATTR = f"xds.upstream_host_metadata.filter_metadata['{TARGET_NS}']['name']"
STATE_NS = "gw"  # downstream filter -> upstream filter (the reservation, in the product)
ATTEMPT_NS = "gw.attempt"  # upstream filter -> ? (does a per-attempt record reach downstream?)
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
PER_TRY_TIMEOUT_S = 0.5
STALL_S = 5.0  # a stalled target never answers within the test


@dataclass
class Attempt:
    """What the upstream ext_proc saw of one attempt (one gRPC stream)."""

    fact_id: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)  # metadata from the downstream filter
    attempt_count: str = ""  # x-envoy-attempt-count on the upstream request
    body: bytes | None = None
    status: str | None = None  # the attempt's response status, if it saw one
    retry_after: str | None = None


@dataclass
class Downstream:
    """What the downstream ext_proc saw of one request."""

    statuses: list[str] = field(default_factory=list)
    response_headers: list[dict[str, str]] = field(default_factory=list)
    metadata: list[dict[str, Any]] = field(default_factory=list)


def _mutation(set_headers: dict[str, str]) -> pb.HeaderMutation:
    m = pb.HeaderMutation()
    for k, v in set_headers.items():
        option = m.set_headers.add()
        option.header.key = k
        option.header.raw_value = v.encode()
    return m


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


# Called with a request's fact id and request headers when a processor is sent response headers,
# before it replies: how a test puts a target's failure in a chosen window.
Hook = Callable[[str, dict[str, str]], None]


class UpstreamProcessor(pb_grpc.ExternalProcessorServicer):
    """The per-attempt filter: rewrites the request for the target the attempt got."""

    def __init__(self, before_response: Hook) -> None:
        self.attempts: dict[str, list[Attempt]] = defaultdict(list)
        self.lock = threading.Lock()
        self.before_response = before_response

    def Process(self, request_iterator: Iterator[pb.ProcessingRequest], context: Any) -> Any:
        attempt, target, headers = Attempt(), "?", {}
        for req in request_iterator:
            kind = req.WhichOneof("request")
            if kind == "request_headers":
                headers = headers_of(req.request_headers)
                attempt.fact_id = headers.get("x-fact-id", "")
                attempt.attempt_count = headers.get("x-envoy-attempt-count", "")
                attrs = req.attributes.get("envoy.filters.http.ext_proc")
                attempt.attributes = json_format.MessageToDict(attrs) if attrs else {}
                target = str(attempt.attributes.get(TARGET_ATTR, "?"))
                state = req.metadata_context.filter_metadata.get(STATE_NS)
                attempt.state = json_format.MessageToDict(state) if state else {}
                with self.lock:
                    self.attempts[attempt.fact_id].append(attempt)
                if skip := headers.get(f"x-refuse-{target}"):  # a local reply, no provider call
                    yield pb.ProcessingResponse(
                        immediate_response=pb.ImmediateResponse(
                            status={"code": int(skip)}, body=b"refused by the upstream filter"
                        )
                    )
                    return
                rewrite = {
                    ":path": f"/{target}/v1/chat",
                    "authorization": f"Bearer key-{target}",
                    ":authority": f"{target}.example",
                }
                yield pb.ProcessingResponse(
                    request_headers=pb.HeadersResponse(
                        response=pb.CommonResponse(header_mutation=_mutation(rewrite))
                    )
                )
            elif kind == "request_body":
                attempt.body = req.request_body.body
                body = json.dumps({"target": target, "original": json.loads(attempt.body)})
                mutation = pb.BodyMutation(body=body.encode())
                yield pb.ProcessingResponse(
                    request_body=pb.BodyResponse(
                        response=pb.CommonResponse(
                            header_mutation=_mutation({"content-length": str(len(body))}),
                            body_mutation=mutation,
                        )
                    )
                )
            elif kind == "response_headers":
                response = headers_of(req.response_headers)
                attempt.status, attempt.retry_after = (
                    response[":status"],
                    response.get("retry-after"),
                )
                self.before_response(attempt.fact_id, headers)
                yield pb.ProcessingResponse(
                    response_headers=pb.HeadersResponse(),
                    dynamic_metadata=_struct(
                        # One key per attempt: does the downstream side see them all?
                        {
                            ATTEMPT_NS: {
                                f"attempt_{attempt.attempt_count}": f"{target} {attempt.status}"
                            }
                        }
                    ),
                )


class DownstreamProcessor(pb_grpc.ExternalProcessorServicer):
    """The sidecar's position: before the router, once per request."""

    def __init__(self, before_response: Hook) -> None:
        self.seen: dict[str, Downstream] = defaultdict(Downstream)
        self.before_response = before_response

    def Process(self, request_iterator: Iterator[pb.ProcessingRequest], context: Any) -> Any:
        fact_id, request = "", {}
        for req in request_iterator:
            kind = req.WhichOneof("request")
            if kind == "request_headers":
                request = headers_of(req.request_headers)
                fact_id = request.get("x-fact-id", "")
                yield pb.ProcessingResponse(request_headers=pb.HeadersResponse())
            elif kind == "request_body":
                yield pb.ProcessingResponse(
                    request_body=pb.BodyResponse(),
                    dynamic_metadata=_struct({STATE_NS: {"reservation": f"res-{fact_id}"}}),
                )
            elif kind == "response_headers":
                seen = self.seen[fact_id]
                headers = headers_of(req.response_headers)
                seen.statuses.append(headers.get(":status", ""))
                seen.response_headers.append(headers)
                seen.metadata.append(
                    {
                        ns: json_format.MessageToDict(s)
                        for ns, s in req.metadata_context.filter_metadata.items()
                    }
                )
                # Recorded first: a hook may hold the reply while Envoy answers the client.
                self.before_response(fact_id, request)
                yield pb.ProcessingResponse(response_headers=pb.HeadersResponse())


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class Target:
    """A local HTTP upstream that does what the request's `x-act-<name>` header says."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.received: dict[str, list[Received]] = defaultdict(list)
        self.release = threading.Event()
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        target = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                target.received[headers.get("x-fact-id", "")].append(
                    Received(self.path, headers, body)
                )
                target.act(self, headers.get(f"x-act-{name}", "ok"))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def event(self, key: str) -> threading.Event:
        with self._lock:
            return self._events.setdefault(key, threading.Event())

    def act(self, h: BaseHTTPRequestHandler, action: str) -> None:
        fact_id = h.headers.get("x-fact-id", "")
        if action == "stall":
            self.release.wait(STALL_S)
            return
        if action.startswith("midbody"):  # headers and part of the body, then a drop
            h.send_response(200)
            h.send_header("content-type", "application/json")
            h.send_header("content-length", "1000")
            h.end_headers()
            h.wfile.write(b'{"partial": ')
            h.wfile.flush()
            if action == "midbody-late":  # drop once the client has the headers
                self.event(f"drop {fact_id}").wait(STALL_S)
            elif action == "midbody-at-router":  # drop once the router passed the headers on
                self.event(f"router passed {fact_id}").wait(STALL_S)
            elif action == "midbody-at-upstream-filter":  # drop once that filter has them
                self.event(f"upstream filter has {fact_id}").wait(STALL_S)
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            self.event(f"dropped {fact_id}").set()
            return
        status = {"ok": 200, "500": 500, "429": 429}[action]
        payload = json.dumps({"served_by": self.name, "status": status}).encode()
        h.send_response(status)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(payload)))
        if status == 429:
            h.send_header("retry-after", "7")
        h.end_headers()
        h.wfile.write(payload)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def _ext_proc(port: int, mode: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": {"envoy_grpc": {"cluster_name": f"extproc_{port}"}},
        "failure_mode_allow": False,
        "message_timeout": "5s",
        "processing_mode": {
            "request_trailer_mode": "SKIP",
            "response_trailer_mode": "SKIP",
            **mode,
        },
        **extra,
    }


def _grpc_cluster(port: int) -> dict[str, Any]:
    return {
        "name": f"extproc_{port}",
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            HTTP_OPTIONS: {
                "@type": "type.googleapis.com/" + HTTP_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": f"extproc_{port}",
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _addr(port)}}]},
            ],
        },
    }


def _addr(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _target_cluster(
    name: str, upstream_port: int, by_priority: list[tuple[str, int]]
) -> dict[str, Any]:
    """A cluster with one endpoint per priority, each naming its target in endpoint metadata,
    and the upstream ext_proc as a per-attempt filter (before the mandatory upstream_codec)."""
    upstream_filter = _ext_proc(
        upstream_port,
        {
            "request_header_mode": "SEND",
            "request_body_mode": "BUFFERED",
            "response_header_mode": "SEND",
            "response_body_mode": "NONE",
        },
        request_attributes=[TARGET_ATTR, "xds.cluster_name", "upstream.address"],
        # Without this, Envoy silently drops a mutation of :authority / host (measured).
        mutation_rules={"allow_all_routing": True},
        metadata_options={
            "forwarding_namespaces": {"untyped": [STATE_NS]},
            "receiving_namespaces": {"untyped": [ATTEMPT_NS]},
        },
    )
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "0.25s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "priority": priority,
                    "lb_endpoints": [
                        {
                            "endpoint": {"address": _addr(port)},
                            "metadata": {"filter_metadata": {TARGET_NS: {"name": target}}},
                        }
                    ],
                }
                for priority, (target, port) in enumerate(by_priority)
            ],
        },
        "typed_extension_protocol_options": {
            HTTP_OPTIONS: {
                "@type": "type.googleapis.com/" + HTTP_OPTIONS,
                "explicit_http_config": {"http_protocol_options": {}},
                "http_filters": [
                    {"name": "upstream.ext_proc", "typed_config": upstream_filter},
                    {
                        "name": "envoy.filters.http.upstream_codec",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http."
                            "upstream_codec.v3.UpstreamCodec"
                        },
                    },
                ],
            }
        },
    }


RETRY_POLICY = {
    # 5xx and 429 answers, a reset before the response started, a refused connection, and a
    # per-try timeout (always retried when a retry policy is in place).
    "retry_on": "5xx,reset,connect-failure,retriable-status-codes",
    "retriable_status_codes": [429],
    "num_retries": 1,
    "per_try_timeout": f"{PER_TRY_TIMEOUT_S}s",
    # Each retry moves to the next priority level: the fallback chain.
    "retry_priority": {
        "name": "envoy.retry_priorities.previous_priorities",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3."
            "PreviousPrioritiesConfig",
            "update_frequency": 1,
        },
    },
    "retry_back_off": {"base_interval": "0.005s", "max_interval": "0.01s"},
}


def _bootstrap(down_port: int, up_port: int, a: int, b: int, closed: int) -> dict[str, Any]:
    downstream_filter = _ext_proc(
        down_port,
        {
            "request_header_mode": "SEND",
            "request_body_mode": "BUFFERED",
            "response_header_mode": "SEND",
            "response_body_mode": "NONE",
        },
        metadata_options={
            "receiving_namespaces": {"untyped": [STATE_NS]},
            "forwarding_namespaces": {"untyped": [STATE_NS, ATTEMPT_NS]},
        },
    )
    action = {"timeout": "0s", "retry_policy": RETRY_POLICY}
    routes = [
        {
            "match": {
                "prefix": "/",
                "headers": [{"name": "x-fact-cluster", "string_match": {"exact": "refused"}}],
            },
            "route": {**action, "cluster": "refused"},
        },
        {"match": {"prefix": "/"}, "route": {**action, "cluster": "pair"}},
    ]
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager."
        "v3.HttpConnectionManager",
        "stat_prefix": "facts",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "facts",
                    "domains": ["*"],
                    "include_request_attempt_count": True,
                    "include_attempt_count_in_response": True,
                    "routes": routes,
                }
            ]
        },
        "http_filters": [
            {"name": "downstream.ext_proc", "typed_config": downstream_filter},
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
    }
    return {
        "admin": {"address": _addr(0)},
        "static_resources": {
            "listeners": [
                {
                    "name": "facts",
                    "address": _addr(0),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                _grpc_cluster(down_port),
                _grpc_cluster(up_port),
                _target_cluster("pair", up_port, [("a", a), ("b", b)]),
                _target_cluster("refused", up_port, [("dead", closed), ("b", b)]),
            ],
        },
    }


REQUEST_BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()


@dataclass
class Answer:
    fact_id: str
    status: int
    body: bytes
    headers: dict[str, str]

    def served_by(self) -> str:
        return str(json.loads(self.body)["served_by"])


@dataclass
class Facts:
    url: str
    upstream: UpstreamProcessor
    downstream: DownstreamProcessor
    a: Target
    b: Target

    @contextlib.contextmanager
    def send(
        self,
        fact_id: str,
        acts: dict[str, str],
        cluster: str = "pair",
        extra: dict[str, str] | None = None,
    ) -> Iterator[http.client.HTTPResponse]:
        """Send one request; yields the response once its headers arrived."""
        extra = extra or {}
        headers = {"content-type": "application/json", "x-fact-id": fact_id}
        headers.update({f"x-{k}": v for k, v in extra.items()})
        headers.update({f"x-act-{t}": a for t, a in acts.items()})
        if cluster != "pair":
            headers["x-fact-cluster"] = cluster
        host, port = self.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request("POST", "/v1/chat/completions", body=REQUEST_BODY, headers=headers)
            yield conn.getresponse()
        finally:
            conn.close()

    def post(
        self, acts: dict[str, str], cluster: str = "pair", extra: dict[str, str] | None = None
    ) -> Answer:
        fact_id = uuid.uuid4().hex
        with self.send(fact_id, acts, cluster, extra) as resp:
            try:
                body = resp.read()
            except http.client.IncompleteRead as e:
                body = e.partial
            headers = {k.lower(): v for k, v in resp.getheaders()}
            return Answer(fact_id, resp.status, body, headers)


def _grpc_server(servicer: pb_grpc.ExternalProcessorServicer) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pb_grpc.add_ExternalProcessorServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.fixture(scope="module")
def facts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Facts]:
    run_dir: Path = tmp_path_factory.mktemp("envoy-upstream-extproc")
    a, b = Target("a"), Target("b")

    def at_upstream_filter(fact_id: str, request: dict[str, str]) -> None:
        """`midbody-at-upstream-filter`: the upstream filter has `a`'s response headers and
        holds them until `a` has dropped the connection."""
        if request.get("x-act-a") == "midbody-at-upstream-filter":
            a.event(f"upstream filter has {fact_id}").set()
            a.event(f"dropped {fact_id}").wait(STALL_S)

    def at_downstream_filter(fact_id: str, request: dict[str, str]) -> None:
        """`midbody-at-router`: the router has passed `a`'s response headers on to the
        downstream filter, which holds them until `a` has dropped the connection."""
        if request.get("x-act-a") == "midbody-at-router":
            a.event(f"router passed {fact_id}").set()
            a.event(f"dropped {fact_id}").wait(STALL_S)

    upstream = UpstreamProcessor(at_upstream_filter)
    downstream = DownstreamProcessor(at_downstream_filter)
    up_server, up_port = _grpc_server(upstream)
    down_server, down_port = _grpc_server(downstream)
    config = run_dir / "envoy.yaml"
    config.write_text(yaml.safe_dump(_bootstrap(down_port, up_port, a.port, b.port, free_port())))
    log = (run_dir / "envoy.log").open("wb")
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(argv: list[str]) -> subprocess.Popen[bytes]:
        procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
        return procs[-1]

    try:
        url, _admin, _pid = launch_envoy(config, spawn, 1)
        yield Facts(url, upstream, downstream, a, b)
    finally:
        for proc in procs:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.close()
        a.close()
        b.close()
        up_server.stop(0)
        down_server.stop(0)


def _rewritten_for(target: str) -> bytes:
    return json.dumps({"target": target, "original": json.loads(REQUEST_BODY)}).encode()


def test_each_attempt_is_rewritten_for_the_target_it_got(facts: Facts) -> None:
    """(a) one upstream ext_proc stream per attempt, each with the original body (Envoy's retry
    buffer), the downstream filter's dynamic metadata, and the metadata of the endpoint that
    attempt got; (b) its rewrite of path, credential, host and body is what that target
    receives, with a correct content-length."""
    answer = facts.post({"a": "500"})
    assert (answer.status, answer.served_by()) == (200, "b")

    attempts = facts.upstream.attempts[answer.fact_id]
    assert [(x.attributes[TARGET_ATTR], x.attempt_count) for x in attempts] == [
        ("a", "1"),
        ("b", "2"),
    ]
    assert [x.status for x in attempts] == ["500", "200"]
    assert all(x.body == REQUEST_BODY for x in attempts)
    assert all(x.attributes["xds.cluster_name"] == "pair" for x in attempts)
    reservation = {"reservation": f"res-{answer.fact_id}"}
    assert all(x.state == reservation for x in attempts)

    for target in (facts.a, facts.b):
        [got] = target.received[answer.fact_id]
        body = _rewritten_for(target.name)
        assert (got.path, got.body) == (f"/{target.name}/v1/chat", body)
        assert got.headers["authorization"] == f"Bearer key-{target.name}"
        assert got.headers["host"] == f"{target.name}.example"
        assert got.headers["content-length"] == str(len(body))
        assert "transfer-encoding" not in got.headers


@pytest.mark.parametrize(
    ("acts", "cluster"),
    [({"a": "500"}, "pair"), ({"a": "429"}, "pair"), ({}, "refused"), ({"a": "stall"}, "pair")],
    ids=["500", "429", "connection-refused", "stall-before-first-byte"],
)
def test_a_failed_attempt_falls_over_to_the_next_priority(
    facts: Facts, acts: dict[str, str], cluster: str
) -> None:
    """(c) a 500, a 429 and a refused connection at priority 0 are answered by priority 1;
    (e) so is a target that sends nothing before the per-try timeout."""
    started = time.monotonic()
    answer = facts.post(acts, cluster)
    elapsed = time.monotonic() - started
    assert (answer.status, answer.served_by()) == (200, "b")
    assert answer.headers["x-envoy-attempt-count"] == "2"
    seen = [x.attributes[TARGET_ATTR] for x in facts.upstream.attempts[answer.fact_id]]
    if cluster == "refused":
        # The upstream filters run once the attempt has a connection: a refused connection
        # never reaches the upstream ext_proc (only the attempt count tells of it).
        assert seen == ["b"]
    else:
        assert seen == ["a", "b"]
    if acts.get("a") == "429":
        first = facts.upstream.attempts[answer.fact_id][0]
        assert (first.status, first.retry_after) == ("429", "7")  # seen per attempt, upstream
    if acts.get("a") == "stall":
        assert PER_TRY_TIMEOUT_S <= elapsed < STALL_S / 2
        assert facts.upstream.attempts[answer.fact_id][0].status is None
    else:
        assert elapsed < PER_TRY_TIMEOUT_S


def test_no_fallback_once_the_response_headers_reached_the_client(facts: Facts) -> None:
    """(d) a stream that fails mid-body after its headers reached the client is not retried:
    the client gets a truncated 200 and priority 1 never hears of the request."""
    fact_id = uuid.uuid4().hex
    with facts.send(fact_id, {"a": "midbody-late"}) as resp:
        assert resp.status == 200  # the client has the headers ...
        facts.a.event(f"drop {fact_id}").set()  # ... then the target drops the connection
        with pytest.raises(http.client.IncompleteRead):
            resp.read()
    assert [x.attributes[TARGET_ATTR] for x in facts.upstream.attempts[fact_id]] == ["a"]
    assert fact_id not in facts.b.received


def test_no_fallback_once_the_router_passed_the_headers_on(facts: Facts) -> None:
    """(d, the narrow window) the target drops after its headers, while the downstream filter
    still holds them: not retried either (the router had passed them on), and the client gets
    Envoy's 502 - although the downstream ext_proc was shown a 200 it never sent."""
    answer = facts.post({"a": "midbody-at-router"})
    assert answer.status == 502
    assert b"reset" in answer.body
    assert facts.downstream.seen[answer.fact_id].statuses == ["200"]
    assert [x.attributes[TARGET_ATTR] for x in facts.upstream.attempts[answer.fact_id]] == ["a"]
    assert answer.fact_id not in facts.b.received


def test_a_drop_while_the_upstream_filter_holds_the_headers_is_retried(facts: Facts) -> None:
    """The other window: the upstream ext_proc is sent the attempt's response headers before
    the router sees them, so a target that sent a 200 and dropped while that filter held them
    failed "before headers" for the router, which retries it. The client and the downstream
    filter see only the fallback's answer; the first target may have billed its attempt."""
    answer = facts.post({"a": "midbody-at-upstream-filter"})
    assert (answer.status, answer.served_by()) == (200, "b")
    attempts = facts.upstream.attempts[answer.fact_id]
    assert [(x.attributes[TARGET_ATTR], x.status) for x in attempts] == [("a", "200"), ("b", "200")]
    assert facts.downstream.seen[answer.fact_id].statuses == ["200"]


def test_the_downstream_filter_sees_the_final_response_only(facts: Facts) -> None:
    """(f) the downstream ext_proc (the sidecar's place) is sent the answering attempt's
    response headers once; a failed attempt's never reach it. What it can know of the others:
    `x-envoy-attempt-count`, and dynamic metadata each attempt's upstream filter wrote under its
    own key (the namespaces merge key by key)."""
    answer = facts.post({"a": "429"})
    seen = facts.downstream.seen[answer.fact_id]
    assert seen.statuses == ["200"]
    assert "retry-after" not in seen.response_headers[0]
    assert seen.response_headers[0]["x-envoy-attempt-count"] == "2"
    assert seen.metadata[0][ATTEMPT_NS] == {"attempt_1": "a 429", "attempt_2": "b 200"}
    assert seen.metadata[0][STATE_NS] == {"reservation": f"res-{answer.fact_id}"}


@pytest.mark.parametrize("status", ["503", "429"])
def test_a_local_reply_from_the_upstream_filter_is_final(facts: Facts, status: str) -> None:
    """An upstream ext_proc that refuses an attempt (immediate_response) ends the request: Envoy
    1.40 does not retry it, even as a 503 under `retry_on: 5xx`, and priority 1 is never tried.
    So a target the caller's policy forbids cannot be skipped by refusing its attempt."""
    answer = facts.post({}, extra={"refuse-a": status})
    assert (answer.status, answer.body) == (int(status), b"refused by the upstream filter")
    assert [x.attributes[TARGET_ATTR] for x in facts.upstream.attempts[answer.fact_id]] == ["a"]
    assert answer.fact_id not in facts.a.received
    assert answer.fact_id not in facts.b.received
    assert facts.downstream.seen[answer.fact_id].statuses == [status]
