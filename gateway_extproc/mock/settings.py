"""What the mock was started with: the fixtures directory and the keys each provider's routes
require (none: any or no key is taken)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from aiohttp import web

from gateway_extproc.mock.vertex_api import VERTEX_TOKEN


@dataclasses.dataclass(frozen=True, slots=True)
class MockConfig:
    fixtures_dir: Path | None
    openai_key: str | None
    anthropic_key: str | None
    gemini_key: str | None = None
    azure_key: str | None = None  # `api-key` on Azure paths
    azure_token: str | None = None  # `Authorization: Bearer` on Azure paths (Entra ID)
    vertex_token: str = VERTEX_TOKEN


CONFIG = web.AppKey("mock_config", MockConfig)
