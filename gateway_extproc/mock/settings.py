"""What the mock was started with: the fixtures directory, the keys each provider's routes
require (none: any or no key is taken), the report APIs' admin keys and which project or
workspace each serving key belongs to."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
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
    # The report APIs' admin keys (reports.py), and the project or workspace each serving key
    # belongs to (a key not listed: the default project / workspace).
    openai_admin_key: str = "sk-admin-mock-openai"
    anthropic_admin_key: str = "sk-ant-admin01-mock"
    key_projects: Mapping[str, str] = dataclasses.field(default_factory=dict)


CONFIG = web.AppKey("mock_config", MockConfig)
