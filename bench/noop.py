"""The no-op ext_proc: the floor of a Python ext_proc sidecar (grpc.aio + uvloop).

`python -m bench.noop --port-file F` answers every ProcessingRequest at once with an empty
reply of its kind. Response headers of an event stream get `mode_override` response body
STREAMED, as the gateway's do, so Envoy sends both the same phases. Observability-mode
messages (the `noop-observe` setup: the gateway's two-filter observe mode) get no reply, and
the stream closes at the response's end, as the gateway's observer does: the floor of
observe mode's transport. Server options are the
gateway's own (`gateway_extproc.server.grpc_options` for the built-in config), and it answers
Envoy's gRPC health checks SERVING like the gateway, so Envoy treats both setups alike.

`--handoff state` (the `noop-state` setup) also hands a realistic request state (bench/trust.py)
to the observer in dynamic metadata, as the gateway does, and its observer reads it;
`--handoff signed` (`noop-trust`) does exactly the same plus the gateway's caller checks: the
caller token checked on every stream, the state signed per request and verified once per
observer stream (HMAC-SHA256, the token and key from the environment as the sidecar reads
them). The two differ only by that work: what the caller checks cost, against the same floor.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bench.service import run_service
from bench.trust import sample_state
from gateway_extproc.config.gateway import load_config
from gateway_extproc.extproc import messages as msgs
from gateway_extproc.handoff import MAC_KEY, NAMESPACE, STATE_KEY
from gateway_extproc.server import SERVICE_NAME, grpc_options
from gateway_extproc.sidecar_auth.guard import SidecarAuth
from gateway_extproc.sidecar_auth.settings import SidecarAuthConfig, load_secrets

HANDOFFS = ("none", "state", "signed")

# Built once: the servicer only picks one.
_REPLIES = {
    "request_headers": msgs.request_headers_reply(pb.CommonResponse(), forwarded=True),
    "request_body": msgs.request_body_reply(pb.CommonResponse()),
    "response_headers": msgs.response_headers_reply(pb.CommonResponse(), stream_body=False),
    "response_body": msgs.response_body_reply(),
    "request_trailers": pb.ProcessingResponse(request_trailers=pb.TrailersResponse()),
    "response_trailers": pb.ProcessingResponse(response_trailers=pb.TrailersResponse()),
}
_STREAM_HEADERS_REPLY = msgs.response_headers_reply(pb.CommonResponse(), stream_body=True)


def _is_event_stream(message: pb.HttpHeaders) -> bool:
    for header in message.headers.headers:
        if header.key.lower() == "content-type":
            value = header.raw_value or header.value.encode()
            return bool(value.startswith(b"text/event-stream"))
    return False


def _response_ended(message: pb.ProcessingRequest) -> bool:
    phase = message.WhichOneof("request")
    if phase == "response_headers":
        return bool(message.response_headers.end_of_stream)
    return phase == "response_body" and bool(message.response_body.end_of_stream)


def _handoff_reply(fields: dict[str, str]) -> pb.ProcessingResponse:
    metadata = struct_pb2.Struct()
    metadata.update({NAMESPACE: fields})
    return msgs.request_body_reply(pb.CommonResponse(), dynamic_metadata=metadata)


class NoopProcessor(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(self, handoff: str = "none", auth: SidecarAuth | None = None) -> None:
        self.handoff = handoff
        self.auth = auth
        self.state = sample_state()
        self.state_reply = _handoff_reply({STATE_KEY: self.state})  # noop-state: built once

    async def Process(
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: Any
    ) -> AsyncIterator[pb.ProcessingResponse]:
        auth = self.auth
        if auth is not None and auth.caller.refusal(context.invocation_metadata()) is not None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "caller token required")
        checked = False  # an observer stream's state: read (and verified) once
        async for message in request_iterator:
            phase = message.WhichOneof("request")
            if message.observability_mode:
                if not checked and self.handoff != "none":
                    checked = True
                    text = msgs.observed_state(message, NAMESPACE, STATE_KEY)
                    if auth is not None:
                        mac = msgs.observed_state(message, NAMESPACE, MAC_KEY)
                        if text is None or not auth.seal.verify(text, mac):
                            return
                if _response_ended(message):
                    return
                continue
            if phase == "response_headers" and _is_event_stream(message.response_headers):
                yield _STREAM_HEADERS_REPLY
            elif phase == "request_body" and self.handoff == "signed" and auth is not None:
                mac = auth.seal.sign(self.state)  # per request, as the gateway signs
                yield _handoff_reply({STATE_KEY: self.state, MAC_KEY: mac})
            elif phase == "request_body" and self.handoff == "state":
                yield self.state_reply
            else:
                yield _REPLIES[phase]


async def serve(port_file: Path | None, handoff: str = "none") -> None:
    auth = None
    if handoff == "signed":
        auth = SidecarAuth.of(load_secrets(SidecarAuthConfig(), os.environ))
    server = grpc.aio.server(options=grpc_options(load_config(None, os.environ)))
    pb_grpc.add_ExternalProcessorServicer_to_server(NoopProcessor(handoff, auth), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    if port_file is not None:
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(str(port))
        tmp.replace(port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    handoff = "none"
    if "--handoff" in argv:  # the rest is run_service's (--port-file)
        at = argv.index("--handoff")
        handoff = argv[at + 1]
        del argv[at : at + 2]
    if handoff not in HANDOFFS:
        raise SystemExit(f"bench.noop: --handoff must be one of {', '.join(HANDOFFS)}")
    run_service("bench.noop", __doc__, lambda port_file: serve(port_file, handoff), argv)


if __name__ == "__main__":
    main()
