"""`python -m gateway_extproc.mock`: run the mock provider until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from gateway_extproc.mock.ledger import key_projects
from gateway_extproc.mock.server import SHUTDOWN_GRACE_SECONDS, create_app


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m gateway_extproc.mock",
        description="Mock OpenAI/Anthropic provider for the gateway's tests and `make run`.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks an ephemeral port")
    parser.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    parser.add_argument(
        "--fixtures-dir", type=Path, help="directory of NAME.yaml for x-mock-replay"
    )
    parser.add_argument("--openai-key", help="require `Authorization: Bearer KEY` on OpenAI paths")
    parser.add_argument("--anthropic-key", help="require `x-api-key: KEY` on /v1/messages")
    parser.add_argument("--gemini-key", help="require `x-goog-api-key: KEY` on Gemini paths")
    parser.add_argument("--azure-key", help="accept `api-key: KEY` on Azure paths (/openai/...)")
    parser.add_argument(
        "--azure-token", help="accept `Authorization: Bearer TOKEN` on Azure paths (Entra ID)"
    )
    parser.add_argument(
        "--identity-header",
        help="with --azure-token: serve a managed-identity token endpoint (GET /msi/token, App "
        "Service style) that issues TOKEN to callers sending `X-IDENTITY-HEADER: SECRET`",
    )
    parser.add_argument(
        "--openai-admin-key", help="the admin key OpenAI's usage and costs reports take"
    )
    parser.add_argument(
        "--anthropic-admin-key", help="the admin key Anthropic's usage and cost reports take"
    )
    parser.add_argument(
        "--key-project",
        action="append",
        default=[],
        metavar="KEY=PROJECT",
        help="the project (OpenAI) or workspace (Anthropic) a serving key belongs to in the "
        "reports (repeatable; other keys: the default project / workspace)",
    )
    return parser.parse_args(argv)


def write_port_file(path: Path, port: int) -> None:
    """Write atomically (temp file, then rename) so a reader never sees a partial number."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(str(port), encoding="ascii")
    os.replace(temporary, path)


async def serve(args: argparse.Namespace) -> None:
    app = create_app(
        args.fixtures_dir,
        args.openai_key,
        args.anthropic_key,
        args.gemini_key,
        args.azure_key,
        args.azure_token,
        args.identity_header,
        admin_keys=(args.openai_admin_key, args.anthropic_admin_key),
        key_projects=key_projects(args.key_project),
    )
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS)
    await runner.setup()
    try:
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        port = int(runner.addresses[0][1])
        if args.port_file is not None:
            write_port_file(args.port_file, port)
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"mock provider listening on http://{host}:{port}", file=sys.stderr, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))
    return 0
