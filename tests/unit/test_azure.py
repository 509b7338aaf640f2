"""Azure OpenAI's pure parts: the `azure:` block, upstream and inbound paths, and the Entra ID
token source's caching, refresh-ahead and single flight (a fake credential and clock)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from gateway_extproc.apis import Api
from gateway_extproc.errors import ProviderUnavailable
from gateway_extproc.providers.azure.entra import SCOPE, TokenSource
from gateway_extproc.providers.azure.paths import InboundPath, parse_inbound, upstream_path
from gateway_extproc.providers.azure.settings import AzureSettings, parse_azure


def test_settings_parsed_and_every_problem_reported() -> None:
    problems: list[str] = []
    doc = {"api": "deployments", "api_version": "2024-10-21", "deployments": {"a/b": "dep-1"}}
    got = parse_azure(doc, "providers.azure.azure", problems)
    assert problems == []
    assert got == AzureSettings(
        api="deployments", api_version="2024-10-21", deployments={"a/b": "dep-1"}
    )
    assert got.deployment("a/b") == "dep-1"
    assert got.deployment("azure/gpt-4o") == "gpt-4o"  # the catalog's prefix is not a deployment
    bad = {"api": "v2", "api_version": "yesterday", "deployments": {"m": "no spaces"}, "x": 1}
    parse_azure(bad, "p", problems)
    assert problems == [
        "p.x: unknown key",
        "p.api: must be one of v1, deployments (got 'v2')",
        "p.api_version: must be a date YYYY-MM-DD[-preview], preview or latest (got 'yesterday')",
        "p.deployments.m: 'no spaces' is not an Azure deployment name (letters, digits, '-', "
        "'_', '.'; at most 64)",
    ]
    problems.clear()
    parse_azure({"api": "deployments"}, "p", problems)
    assert problems == ["p.api_version: required with api: deployments (e.g. 2024-10-21)"]


V1 = AzureSettings()
CLASSIC = AzureSettings(api="deployments", api_version="2024-10-21")


@pytest.mark.parametrize(
    ("settings", "api", "want"),
    [
        (V1, Api.OPENAI_CHAT, "/openai/v1/chat/completions"),
        (V1, Api.OPENAI_RESPONSES, "/openai/v1/responses"),
        (V1, Api.OPENAI_EMBEDDINGS, "/openai/v1/embeddings"),
        (
            dataclasses.replace(V1, api_version="preview"),
            Api.OPENAI_CHAT,
            "/openai/v1/chat/completions?api-version=preview",
        ),
        (
            CLASSIC,
            Api.OPENAI_CHAT,
            "/openai/deployments/dep/chat/completions?api-version=2024-10-21",
        ),
        (
            CLASSIC,
            Api.OPENAI_EMBEDDINGS,
            "/openai/deployments/dep/embeddings?api-version=2024-10-21",
        ),
        (CLASSIC, Api.OPENAI_RESPONSES, "/openai/responses?api-version=2024-10-21"),
    ],
)
def test_upstream_paths(settings: AzureSettings, api: Api, want: str) -> None:
    assert upstream_path(settings, api, "dep") == want


def test_inbound_paths() -> None:
    assert parse_inbound("/openai/deployments/my%2Ddep/chat/completions?api-version=x") == (
        InboundPath(Api.OPENAI_CHAT, "my-dep")
    )
    assert parse_inbound("/openai/v1/responses") == InboundPath(Api.OPENAI_RESPONSES, None)
    assert parse_inbound("/openai/v1/responses").gateway_path == "/v1/responses"  # type: ignore[union-attr]
    for other in ("/v1/chat/completions", "/openai/deployments//chat/completions", "/openai/v1/x"):
        assert parse_inbound(other) is None


@dataclasses.dataclass
class _Token:
    token: str
    expires_on: int


class _Credential:
    def __init__(self, clock: list[float], lifetime: int = 3600) -> None:
        self.clock, self.lifetime, self.calls, self.fail = clock, lifetime, 0, False
        self.gate = asyncio.Event()
        self.gate.set()

    async def get_token(self, *scopes: str) -> _Token:
        assert scopes == (SCOPE,)
        self.calls += 1
        await self.gate.wait()
        if self.fail:
            raise RuntimeError("tenant secret in this message")
        return _Token(f"tok{self.calls}", int(self.clock[0]) + self.lifetime)

    async def close(self) -> None:
        pass


def test_token_cached_refreshed_ahead_single_flight() -> None:
    async def run() -> None:
        clock = [1000.0]
        cred = _Credential(clock)
        source = TokenSource(lambda: cred, clock=lambda: clock[0], refresh_before_s=300)
        assert source.current() is None
        cred.gate.clear()  # ten requests at once before any token: one fetch, all wait for it
        waiting = [asyncio.ensure_future(source.ensure()) for _ in range(10)]
        await asyncio.sleep(0)
        cred.gate.set()
        assert await asyncio.gather(*waiting) == ["tok1"] * 10 and cred.calls == 1
        clock[0] += 3000  # 600 s left: cached, no fetch
        assert await source.ensure() == "tok1" and cred.calls == 1
        clock[0] += 400  # 200 s left: this request keeps tok1, a refresh starts behind it
        cred.gate.clear()
        assert await source.ensure() == "tok1"
        await asyncio.sleep(0)
        assert cred.calls == 2 and source.current() == "tok1"
        cred.gate.set()
        await asyncio.sleep(0)
        assert source.current() == "tok2"
        # Fetches fail: the valid token is still used; once none is valid, 503.
        cred.fail = True
        clock[0] += 3400
        assert await source.ensure() == "tok2"
        clock[0] += 200
        with pytest.raises(ProviderUnavailable):
            await source.ensure()
        assert "tok" not in repr(source)

    asyncio.run(run())
