"""The parties of the Envoy facts for fallback (test_envoy_upstream_extproc.py), each recording
what it saw per `x-fact-id`: the upstream ext_proc (one gRPC stream per attempt; it rewrites the
request for the attempt's target), the downstream ext_proc (the sidecar's position) and the HTTP
targets, which do what the request's `x-act-<target>` header says. The Envoy that joins them is
upstream_stack.py's."""

from __future__ import annotations

import json
import socket
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf import json_format, struct_pb2

from gateway_extproc.extproc.messages import headers_of

TARGET_NS = "gw.target"  # endpoint metadata namespace naming the target
# The attribute the upstream ext_proc asks for: the metadata of the host THIS attempt got.
TARGET_ATTR = f"xds.upstream_host_metadata.filter_metadata['{TARGET_NS}']['name']"
# A key pool's endpoints also name their key (cluster `pool`): the credential this attempt uses.
KEY_ATTR = f"xds.upstream_host_metadata.filter_metadata['{TARGET_NS}']['key']"
STATE_NS = "gw"  # downstream filter -> upstream filter (the reservation, in the product)
ATTEMPT_NS = "gw.attempt"  # upstream filter -> ? (does a per-attempt record reach downstream?)
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
                key = str(attempt.attributes.get(KEY_ATTR, target))
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
                    "authorization": f"Bearer key-{key}",
                    "x-key": key,  # the target acts on x-act-<target>.<key> first
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
                # `x-status-<target>: 503`: answer the router with that status instead (the
                # 429 -> 503 idea: does outlier detection count what the filter rewrote?)
                status = headers.get(f"x-status-{target}")
                rewrite = _mutation({":status": status}) if status else None
                yield pb.ProcessingResponse(
                    response_headers=pb.HeadersResponse(
                        response=pb.CommonResponse(header_mutation=rewrite)
                    ),
                    dynamic_metadata=_struct(
                        # One key per attempt: does the downstream side see them all?
                        {
                            ATTEMPT_NS: {
                                f"attempt_{attempt.attempt_count}": f"{key} {attempt.status}"
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
                act = headers.get(f"x-act-{name}.{headers.get('x-key')}")
                target.act(self, act or headers.get(f"x-act-{name}", "ok"))

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
        served_by = h.headers.get("x-key") or self.name
        payload = json.dumps({"served_by": served_by, "status": status}).encode()
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


def grpc_server(servicer: pb_grpc.ExternalProcessorServicer) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pb_grpc.add_ExternalProcessorServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port
