"""The mock's managed-identity token endpoint (mock/azure_identity.py), asked by azure-identity's
own ManagedIdentityCredential through the gateway's TokenSource, as the sidecar asks it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web
from azure.identity.aio import ManagedIdentityCredential

from gateway_extproc.errors import ProviderUnavailable
from gateway_extproc.mock import azure_identity
from gateway_extproc.mock.server import create_app
from gateway_extproc.providers.azure.entra import TokenSource

TOKEN = "mock-entra-token"
SECRET = "identity-secret"


@pytest.fixture
async def mock() -> AsyncIterator[str]:
    app = create_app(None, None, None, azure_token=TOKEN, identity_header=SECRET)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def _managed_identity(monkeypatch: pytest.MonkeyPatch, mock: str, header: str) -> None:
    for name in ("MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT", "IDENTITY_SERVER_THUMBPRINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", mock + azure_identity.PATH)
    monkeypatch.setenv("IDENTITY_HEADER", header)


async def test_azure_identity_gets_the_mock_token(
    mock: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _managed_identity(monkeypatch, mock, SECRET)
    source = TokenSource(ManagedIdentityCredential)
    try:
        assert await source.ensure() == TOKEN
    finally:
        await source.close()
    left = source._expires_on - time.time()
    assert azure_identity.LIFETIME_S - 60 < left <= azure_identity.LIFETIME_S
    async with httpx.AsyncClient() as client:
        asked = (await client.get(mock + "/_mock/identity")).json()
    assert asked == [
        {
            "query": {
                "api-version": "2019-08-01",
                "resource": "https://cognitiveservices.azure.com",
            },
            "identity_header": True,
        }
    ]


async def test_a_wrong_identity_header_is_refused(
    mock: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _managed_identity(monkeypatch, mock, "wrong")
    source = TokenSource(ManagedIdentityCredential)
    try:
        with pytest.raises(ProviderUnavailable):
            await source.ensure()
    finally:
        await source.close()
    async with httpx.AsyncClient() as client:
        bare = await client.get(mock + azure_identity.PATH, params={"api-version": "2019-08-01"})
    assert bare.status_code == 401 and TOKEN not in bare.text


async def test_no_endpoint_without_the_secret() -> None:
    app = create_app(None, None, None, azure_token=TOKEN)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}{azure_identity.PATH}"
        async with httpx.AsyncClient() as client:
            reply = await client.get(url, headers={"x-identity-header": SECRET})
        assert reply.status_code == 404 and TOKEN not in reply.text
    finally:
        await runner.cleanup()
