"""The ext_proc gRPC server: grpc.aio with health and reflection, graceful drain on SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway_extproc import handoff
from gateway_extproc.admin import recon_schedule
from gateway_extproc.admin import server as admin_server
from gateway_extproc.admin.recon_runner import Reconciler
from gateway_extproc.budgets.journal import Journal
from gateway_extproc.config.gateway import GatewayConfig
from gateway_extproc.errors import ConfigError
from gateway_extproc.logs import setup_logging
from gateway_extproc.observability.telemetry import start_telemetry
from gateway_extproc.request.attempt import AttemptProcessor
from gateway_extproc.request.processor import StreamProcessor
from gateway_extproc.response.stream_observer import StreamObserver
from gateway_extproc.runtime import Runtime, build_context
from gateway_extproc.sidecar_auth.settings import plaintext_bind_problem
from gateway_extproc.ui import server as page_server
from gateway_extproc.ui.settings import page_socket

log = logging.getLogger("gateway.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ExternalProcessor"].full_name
# After the last stream, how long settles still on their way to Redis may take at shutdown;
# what is left then is journaled and settled by the worker's next start.
SETTLE_GRACE_S = 10.0
# gRPC overhead allowed on top of the largest body Envoy may send in one message.
GRPC_MESSAGE_SLACK = 1024 * 1024


class ExternalProcessor(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def Process(
        self,
        request_iterator: AsyncIterator[pb.ProcessingRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        # Who is calling, before anything else: only Envoy holds the token (sidecar_auth/).
        metadata = context.invocation_metadata()
        auth = self.runtime.ctx.sidecar_auth
        refusal = auth.caller.refusal(metadata)
        if refusal is not None:
            unlogged = auth.stats.refused_stream(refusal, time.monotonic())
            if unlogged:
                log.warning(
                    "refused %d ext_proc stream(s) without the caller token (%s, last from "
                    "%s): only this deployment's Envoy may call the sidecar",
                    unlogged,
                    refusal.value,
                    context.peer(),
                )
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "caller token required")
        if not self.runtime.accepting:  # drained: Envoy's health checks stopped sending these
            await context.abort(grpc.StatusCode.UNAVAILABLE, "draining: no new streams")
        # context.read() / write(): an observer stream reads and never writes, a request
        # stream writes one reply per message.
        # The context current when the stream starts serves the whole stream, across reloads;
        # the runtime keeps it open until its last stream ends.
        if _is_attempt(metadata):  # a chain cluster's per-attempt filter (request/attempt.py)
            with self.runtime.stream() as ctx:
                attempt = AttemptProcessor(ctx)
                while (message := await context.read()) is not grpc.aio.EOF:
                    await context.write(await attempt.handle(message))
            return
        with self.runtime.stream() as ctx:
            processor: StreamProcessor | None = None
            observer = StreamObserver(ctx)
            busy, messages = 0.0, 0  # the sidecar's own time on this request
            try:
                while True:
                    message = await context.read()
                    if message is grpc.aio.EOF:
                        return
                    started = time.perf_counter()
                    messages += 1
                    if message.observability_mode:  # Envoy waits for no reply
                        done = observer.handle(message)
                        busy += time.perf_counter() - started
                        if done:  # close it now rather than after Envoy's deferred close
                            return
                        continue
                    if processor is None:
                        processor = StreamProcessor(ctx)
                        if ctx.config.observability.envoy_otlp_endpoint:  # Envoy's span: parent
                            processor.trace_context = trace_context(metadata)
                    reply = await processor.handle(message)
                    busy += time.perf_counter() - started
                    await context.write(reply)
            finally:
                # Runs on normal end, on cancellation (client gone, Envoy reset) and on errors.
                if processor is not None:
                    processor.close()
                observer.close()
                ctx.telemetry.stream_done(busy, messages)


def _is_attempt(metadata: object) -> bool:
    """Whether Envoy opened this stream from a chain cluster's per-attempt filter: the gRPC
    metadata its generated config sets (envoy/filters.py upstream_filter); a client of the
    gateway cannot set it, and the caller token was checked first."""
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key == handoff.STREAM_KIND_KEY:
            return bool(value == handoff.UPSTREAM_STREAM)
    return False


def trace_context(metadata: object) -> tuple[str | None, str | None]:
    """`traceparent` / `tracestate` from the ext_proc stream's gRPC metadata (Envoy injects
    its span's context there when it traces)."""
    found: dict[str, str] = {}
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key in ("traceparent", "tracestate") and isinstance(value, str):
            found[key] = value
    return found.get("traceparent"), found.get("tracestate")


def grpc_options(config: GatewayConfig) -> list[tuple[str, int]]:
    limit = config.limits.max_request_body_bytes + GRPC_MESSAGE_SLACK
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.so_reuseport", 0),
    ]


async def serve(
    runtime: Runtime,
    address: str,
    port_file: Path | None,
    admin_address: str | None = None,
    admin_port_file: Path | None = None,
    page_address: str | None = None,
    page_port_file: Path | None = None,
) -> None:
    ctx = runtime.ctx
    server = grpc.aio.server(options=grpc_options(ctx.config))
    pb_grpc.add_ExternalProcessorServicer_to_server(ExternalProcessor(runtime), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    await runtime.start()
    tls = ctx.sidecar_auth.tls
    if tls is None:  # main() allowed only loopback or a unix socket
        port = server.add_insecure_port(address)
    else:  # a sidecar apart from its Envoy: Envoy proves itself with a client certificate
        credentials = grpc.ssl_server_credentials(
            [(tls.key, tls.cert)], root_certificates=tls.client_ca, require_client_auth=True
        )
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise RuntimeError(f"cannot listen on {address}")
    # Before the port file says "ready": a SIGTERM from then on always drains.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    background: set[asyncio.Task[Any]] = set()

    def reload_now() -> None:
        task = asyncio.create_task(runtime.reload("SIGHUP"))
        background.add(task)
        task.add_done_callback(background.discard)

    loop.add_signal_handler(signal.SIGHUP, reload_now)
    background.add(asyncio.create_task(runtime.reap_forever()))
    if ctx.config.reload_poll_s > 0:
        background.add(asyncio.create_task(runtime.watch(ctx.config.reload_poll_s)))
    await server.start()
    admin = reconciler = None
    if admin_address is not None:  # worker 0 only (the admin API's own port)
        # Reconciliation runs here too: on demand (the admin API) and on its schedule.
        reconciler = Reconciler(runtime.mock_url, os.environ)
        await reconciler.start()
        background.add(
            asyncio.create_task(recon_schedule.run_forever(lambda: runtime.ctx, reconciler))
        )
        admin, admin_port = await admin_server.start(
            lambda: runtime.ctx, admin_address, reconciler=reconciler
        )
        if admin_port_file is not None:
            admin_port_file.with_suffix(".tmp").write_text(str(admin_port))
            admin_port_file.with_suffix(".tmp").replace(admin_port_file)
    page = None
    if page_address is not None:  # worker 0 only, beside the admin API
        host, _, page_port = page_address.rpartition(":")
        socket = page_socket(ctx.config.admin_api.socket) if ctx.config.admin_api.tls else None
        page, bound = await page_server.start(
            lambda: runtime.ctx, host, int(page_port), socket, os.environ
        )
        if page_port_file is not None:
            page_port_file.with_suffix(".tmp").write_text(str(bound))
            page_port_file.with_suffix(".tmp").replace(page_port_file)
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    if port_file is not None:
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(str(port))
        tmp.replace(port_file)
    log.info("ext_proc listening on %s", address.rsplit(":", 1)[0] + f":{port}")
    if ctx.config.drain_s < ctx.config.unhealthy_after_s:
        log.warning(
            "sidecar.drain_s (%gs) is shorter than Envoy may take to notice a draining worker "
            "(%gs): streams that start in between fail at shutdown",
            ctx.config.drain_s,
            ctx.config.unhealthy_after_s,
        )
    await stop.wait()
    if page is not None:
        await page.cleanup()
    if admin is not None:
        await admin.stop(1.0)
    await drain(server, health_servicer, runtime)
    if reconciler is not None:
        await reconciler.close()
    for task in background:
        task.cancel()
    await runtime.close(SETTLE_GRACE_S)
    runtime.ctx.audit.close()
    runtime.ctx.telemetry.shutdown()
    log.info("stopped")


async def drain(
    server: grpc.aio.Server, health_servicer: health.aio.HealthServicer, runtime: Runtime
) -> None:
    """SIGTERM: report NOT_SERVING but keep serving, streams in flight and new ones, until
    Envoy's health checks have stopped sending new ones (drain_s); then stop accepting and
    let the streams in flight end, for up to grace_s (an LLM stream runs for minutes)."""
    config = runtime.ctx.config
    log.info(
        "draining: NOT_SERVING, still serving for %gs while Envoy stops sending streams",
        config.drain_s,
    )
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    await asyncio.sleep(config.drain_s)
    # New streams are refused with UNAVAILABLE by the servicer itself from here on, not by the
    # server's shutdown: a stream arriving while grpc shuts down is CANCELLED or UNAVAILABLE
    # depending on timing (test_server saw CANCELLED in one fresh-clone run).
    runtime.accepting = False
    log.info(
        "no new streams; waiting up to %gs for %d in flight",
        config.grace_s,
        runtime.streams_in_flight,
    )
    if not await runtime.streams_ended(config.grace_s):
        log.warning("grace period over: cancelling %d streams", runtime.streams_in_flight)
    # Streams still running when grace_s ends are cancelled: metered as far as they got.
    await server.stop(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway-extproc", description=__doc__)
    parser.add_argument("--config", type=Path, default=None, help="operator config file")
    parser.add_argument("--address", default=None, help="host:port or unix:PATH (default: config)")
    parser.add_argument("--port-file", type=Path, default=None, help="write the bound port here")
    parser.add_argument(
        "--mock-url", default=None, help="base URL of the mock provider, if running"
    )
    parser.add_argument(
        "--journal",
        type=Path,
        default=None,
        help="file journaling spend owed to Redis (fail-open admissions, unfinished settles)",
    )
    parser.add_argument(
        "--adopt-journals",
        type=Path,
        default=None,
        metavar="DIR",
        help="take over the journals in DIR whose worker is gone (its lock is free), at start "
        "and every reap interval: a shared volume keeps a replaced pod's owed spend (needs "
        "--journal)",
    )
    parser.add_argument(
        "--admin-address", default=None, help="serve the admin API on host:port (worker 0)"
    )
    parser.add_argument("--admin-port-file", type=Path, default=None)
    parser.add_argument(
        "--spend-page-address", default=None, help="serve the spend page on host:port (worker 0)"
    )
    parser.add_argument("--spend-page-port-file", type=Path, default=None)
    parser.add_argument("--worker", type=int, default=0, help="this worker's index (telemetry)")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="the /metrics port (default: observability.metrics_port + worker; 0: any free)",
    )
    parser.add_argument(
        "--metrics-port-file", type=Path, default=None, help="write the bound /metrics port here"
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        ctx = build_context(args.config, os.environ, args.mock_url)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    address = args.address or f"{ctx.config.sidecar_host}:{ctx.config.sidecar_port}"
    if ctx.sidecar_auth.tls is None and (problem := plaintext_bind_problem(address)):
        print(problem, file=sys.stderr)
        return 2
    runtime = Runtime(ctx, args.config, os.environ, args.mock_url)
    if args.adopt_journals is not None and args.journal is None:
        print("--adopt-journals needs --journal (adopted entries go into it)", file=sys.stderr)
        return 2
    if args.journal is not None:
        try:
            journal = Journal(args.journal)
        except OSError as exc:
            print(f"cannot open the journal: {exc}", file=sys.stderr)
            return 2
        runtime.services.use_journal(journal, args.adopt_journals)
    elif ctx.config.budgets or ctx.config.rate_limits:
        log.warning("no --journal: fail-open spend is kept in memory only")
    config = ctx.config
    obs = config.observability
    metrics_port = args.metrics_port
    if metrics_port is None:
        metrics_port = obs.metrics_port + args.worker if obs.metrics_port else 0
    try:
        telemetry = start_telemetry(
            obs,
            os.environ,
            worker=args.worker,
            metrics_port=metrics_port,
            current=lambda: runtime.ctx,
        )
    except OSError as exc:
        print(f"cannot serve /metrics on {obs.metrics_host}:{metrics_port}: {exc}", file=sys.stderr)
        return 2
    runtime.ctx = dataclasses.replace(runtime.ctx, telemetry=telemetry)
    if telemetry.metrics is not None:
        runtime.services.on_call = telemetry.metrics.store_call
    if telemetry.metrics_port is not None:
        log.info("metrics on http://%s:%d/metrics", obs.metrics_host, telemetry.metrics_port)
        if args.metrics_port_file is not None:
            tmp = args.metrics_port_file.with_suffix(".tmp")
            tmp.write_text(str(telemetry.metrics_port))
            tmp.replace(args.metrics_port_file)
    run = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        run = uvloop.run
    run(
        serve(
            runtime,
            address,
            args.port_file,
            args.admin_address,
            args.admin_port_file,
            args.spend_page_address,
            args.spend_page_port_file,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
