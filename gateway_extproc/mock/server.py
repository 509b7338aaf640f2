"""The mock provider's aiohttp application: its state and its routes, wired in order.

Thin I/O around the pure builders: the provider routes (routes.py) run the one request handler
(handler.py), which reads the body, records it (recorder.py), parses the control headers, waits
as they ask (faults.py), then sends the `Reply` a builder returned (send.py), applying write
splitting, per-write delays, gzip and aborts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from aiohttp import web

from gateway_extproc.mock import azure_identity, faults, recorder, reports, routes
from gateway_extproc.mock.settings import CONFIG, MockConfig

SHUTDOWN_GRACE_SECONDS = 0.5  # in-flight requests get this long on shutdown, then are cut
MAX_BODY_BYTES = 64 * 1024 * 1024


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app(
    fixtures_dir: Path | None,
    openai_key: str | None,
    anthropic_key: str | None,
    gemini_key: str | None = None,
    azure_key: str | None = None,
    azure_token: str | None = None,
    identity_header: str | None = None,
    *,
    admin_keys: tuple[str | None, str | None] = (None, None),
    key_projects: Mapping[str, str] | None = None,
) -> web.Application:
    """The mock provider. Keys, when given, are required on their provider's endpoints."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    config = MockConfig(
        fixtures_dir,
        openai_key or None,
        anthropic_key or None,
        gemini_key or None,
        azure_key or None,
        azure_token or None,
        key_projects=dict(key_projects or {}),
    )
    openai_admin, anthropic_admin = admin_keys
    if openai_admin:
        config = dataclasses.replace(config, openai_admin_key=openai_admin)
    if anthropic_admin:
        config = dataclasses.replace(config, anthropic_admin_key=anthropic_admin)
    app[CONFIG] = config
    routes.install(app)  # in the order aiohttp matches them: the catch-all last
    recorder.install(app)
    reports.install(app)
    app.router.add_get("/_mock/health", _health)
    faults.install(app)
    azure_identity.install(app, azure_token or None, identity_header or None)
    app.router.add_route("*", "/{tail:.*}", routes.not_found)
    return app
