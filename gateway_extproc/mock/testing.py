"""Run the mock provider in-process on an ephemeral loopback port (for tests).

async with running_mock() as mock:
    client = openai.AsyncOpenAI(base_url=mock.openai_base_url, api_key="x", max_retries=0)
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from gateway_extproc.mock.server import SHUTDOWN_GRACE_SECONDS, create_app


@dataclasses.dataclass(frozen=True, slots=True)
class RunningMock:
    host: str
    port: int

    @property
    def url(self) -> str:
        """Base URL without a path: the Anthropic SDK's `base_url`."""
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """The OpenAI SDK's `base_url` (it includes `/v1`)."""
        return f"{self.url}/v1"


@contextlib.asynccontextmanager
async def running_mock(
    fixtures_dir: Path | None = None,
    openai_key: str | None = None,
    anthropic_key: str | None = None,
    gemini_key: str | None = None,
    host: str = "127.0.0.1",
) -> AsyncIterator[RunningMock]:
    """Serve `create_app(...)` on an ephemeral port until the block exits."""
    app = create_app(fixtures_dir, openai_key, anthropic_key, gemini_key)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, 0)
        await site.start()
        yield RunningMock(host, int(runner.addresses[0][1]))
    finally:
        await runner.cleanup()
