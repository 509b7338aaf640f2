"""Provider token sources across reloads and at shutdown (runtime/): a reload that keeps a
provider's Entra ID settings (providers/azure/entra.py) or Vertex credentials
(providers/vertex/tokens.py) keeps its source (cached token, backoff, credential, refresher);
a source no configuration uses any more is closed (a Vertex refresher stopped) once the last
stream of the configurations that held it ended; shutdown closes every one. The credentials are
fakes that count their closes."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from gateway_extproc.errors import ProviderUnavailable
from gateway_extproc.providers.azure.entra import SCOPE, EntraTokens, TokenSource
from gateway_extproc.providers.vertex.settings import VertexSettings
from gateway_extproc.providers.vertex.tokens import TokenSource as VertexTokens
from gateway_extproc.providers.vertex.tokens import TokenSources
from gateway_extproc.runtime import Runtime, build_context
from tests.sidecar_secrets import ENV as SIDECAR_ENV

MOCK = "http://127.0.0.1:9/v1"
NOW = 1_000_000.0


@dataclasses.dataclass
class _Token:
    token: str
    expires_on: int


class _Credential:
    """azure-identity's async credential, counting tokens given and closes."""

    def __init__(self, number: int) -> None:
        self.number, self.calls, self.closes = number, 0, 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.asked = asyncio.Event()  # set once get_token was called

    async def get_token(self, *scopes: str) -> _Token:
        assert scopes == (SCOPE,)
        self.calls += 1
        self.asked.set()
        await self.gate.wait()
        return _Token(f"cred{self.number}-tok{self.calls}", int(NOW) + 3600)

    async def close(self) -> None:
        self.closes += 1


def _config(entra: dict[str, bool], note: str = "") -> str:
    """Azure providers by name, each on Entra ID (True) or on a key (False)."""
    lines = [f"# {note}", "mock_unconfigured_providers: false", "providers:"]
    for name, on in entra.items():
        auth = "null" if on else "{header: api-key, env: AZURE_OPENAI_API_KEY}"
        lines += [
            f"  {name}:",
            "    schema: openai",
            "    base_url: https://contoso.openai.azure.com",
            f"    auth: {auth}",
            f"    azure: {{api: v1, entra_id: {'true' if on else 'false'}}}",
        ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def credentials() -> list[_Credential]:
    return []


def _runtime(path: Path, tmp_path: Path, credentials: list[_Credential]) -> Runtime:
    def make() -> TokenSource:
        cred = _Credential(len(credentials) + 1)
        credentials.append(cred)
        return TokenSource(lambda: cred, clock=lambda: NOW)

    env = {
        "GATEWAY_AUDIT_LOG": str(tmp_path / "audit.jsonl"),
        "AZURE_OPENAI_API_KEY": "azure-test-key",
        **SIDECAR_ENV,
    }
    ctx = build_context(path, env, MOCK, entra_tokens=EntraTokens(make))
    return Runtime(ctx, path, env, MOCK)


async def _retired(runtime: Runtime) -> None:
    if runtime._retiring:
        await asyncio.wait_for(asyncio.wait(list(runtime._retiring)), 10)


async def test_a_reload_keeps_the_source_and_its_cached_token(
    tmp_path: Path, credentials: list[_Credential]
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(_config({"azure": True}))
    rt = _runtime(path, tmp_path, credentials)
    try:
        source = rt.ctx.upstreams["azure"].token
        assert source is not None
        assert await source.ensure() == "cred1-tok1"
        path.write_text(_config({"azure": True}, "a reload that keeps azure on Entra ID"))
        assert await rt.reload("test")
        await _retired(rt)  # the replaced context (no stream) is closed at once
        kept = rt.ctx.upstreams["azure"].token
        assert kept is source and kept.current() == "cred1-tok1"  # no second fetch
        assert [(c.calls, c.closes) for c in credentials] == [(1, 0)]
    finally:
        await rt.close()
        rt.ctx.audit.close()
    assert [(c.calls, c.closes) for c in credentials] == [(1, 1)]  # closed at shutdown


async def test_a_source_no_longer_used_is_closed_after_its_last_stream(
    tmp_path: Path, credentials: list[_Credential]
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(_config({"azure": True}))
    rt = _runtime(path, tmp_path, credentials)
    try:
        with rt.stream() as first:
            source = first.upstreams["azure"].token
            assert source is not None and await source.ensure() == "cred1-tok1"
            path.write_text(_config({"azure": False}))  # azure now takes a key
            assert await rt.reload("test")
            assert rt.ctx.upstreams["azure"].token is None
            await _retired(rt)
            assert credentials[0].closes == 0  # the stream that started with it still runs
            assert source.current() == "cred1-tok1"
        await _retired(rt)
        assert credentials[0].closes == 1
        # Back on Entra ID: a new source (the old one is closed), fetching its own token.
        path.write_text(_config({"azure": True}))
        assert await rt.reload("again")
        fresh = rt.ctx.upstreams["azure"].token
        assert fresh is not None and fresh is not source
        assert await fresh.ensure() == "cred2-tok1"
    finally:
        await rt.close()
        rt.ctx.audit.close()
    assert [c.closes for c in credentials] == [1, 1]


async def test_shutdown_closes_every_source_and_cancels_a_fetch_in_flight(
    tmp_path: Path, credentials: list[_Credential]
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(_config({"azure": True, "azure-eu": True}))
    rt = _runtime(path, tmp_path, credentials)
    stream = rt.stream()
    first = stream.__enter__()
    eu = first.upstreams["azure-eu"].token
    assert eu is not None and await eu.ensure() == "cred2-tok1"
    path.write_text(_config({"azure": True}))  # azure-eu removed while a stream uses it
    assert await rt.reload("test")
    source = rt.ctx.upstreams["azure"].token
    assert source is not None
    credentials[0].gate.clear()  # azure's first fetch hangs until shutdown cancels it
    waiting = asyncio.ensure_future(source.ensure())
    await asyncio.wait_for(credentials[0].asked.wait(), 10)
    assert credentials[0].calls == 1 and [c.closes for c in credentials] == [0, 0]
    await rt.close()  # the stream never ended
    rt.ctx.audit.close()
    assert [c.closes for c in credentials] == [1, 1]
    with pytest.raises(ProviderUnavailable):  # the request waiting on it: no token, a 503
        await waiting
    stream.__exit__(None, None, None)  # a straggler ending later closes nothing twice
    await _retired(rt)
    assert [c.closes for c in credentials] == [1, 1]


# --- Vertex: one refresher per credential source, stopped when no configuration uses it -----


def _vertex_config(credentials_file: str, note: str = "") -> str:
    return f"""# {note}
mock_unconfigured_providers: false
providers:
  vertex:
    schema: vertex
    vertex: {{project: acme-ml, location: global, credentials: {{file: {credentials_file}}}}}
"""


def _vertex_runtime(path: Path, tmp_path: Path, made: dict[str, VertexTokens]) -> Runtime:
    def load(settings: VertexSettings, environ: Any) -> tuple[Any, Any]:
        return settings.credential_source(environ), "acme-ml"  # the file stands for credentials

    def make(credentials: Any) -> VertexTokens:
        tokens = VertexTokens(credentials, object())
        tokens.start = lambda: None  # type: ignore[method-assign]  # no thread in this test
        made[credentials] = tokens
        return tokens

    env = {"GATEWAY_AUDIT_LOG": str(tmp_path / "audit.jsonl"), **SIDECAR_ENV}
    ctx = build_context(path, env, MOCK, vertex_tokens=TokenSources(load, make))
    return Runtime(ctx, path, env, MOCK)


def _stopped(tokens: VertexTokens) -> bool:
    return tokens._stop.is_set()


async def test_vertex_refreshers_are_kept_by_a_reload_and_stopped_when_unused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(_vertex_config("/sa-one.json"))
    made: dict[str, VertexTokens] = {}
    rt = _vertex_runtime(path, tmp_path, made)
    try:
        one = made["/sa-one.json"]
        path.write_text(_vertex_config("/sa-one.json", "same credentials"))
        assert await rt.reload("test")
        await _retired(rt)
        assert rt.ctx.upstreams["vertex"].tokens is one and not _stopped(one)
        with rt.stream():
            path.write_text(_vertex_config("/sa-two.json"))  # other credentials
            assert await rt.reload("again")
            two = made["/sa-two.json"]
            assert rt.ctx.upstreams["vertex"].tokens is two
            await _retired(rt)
            assert not _stopped(one)  # the stream that started with it still runs
        await _retired(rt)
        assert _stopped(one) and not _stopped(two)
    finally:
        await rt.close()
        rt.ctx.audit.close()
    assert _stopped(two) and len(rt.ctx.vertex_tokens) == 0
