"""The runtime's contexts across reloads: a replaced context stays open exactly as long as a
stream that started with it runs, however long that is, and is closed when its last stream ends
or at shutdown (closing is what settles a context's pending budget work)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway_extproc import runtime as runtime_module
from gateway_extproc.context import GatewayContext
from gateway_extproc.runtime import Runtime, build_context

MOCK = "http://127.0.0.1:9/v1"


def tokens_config(secret: str) -> str:
    digest = hashlib.sha256(secret.encode()).hexdigest()
    return f'identity:\n  static_tokens:\n    bot: {{sha256: "{digest}"}}\n'


@pytest.fixture
def closed(monkeypatch: pytest.MonkeyPatch) -> list[GatewayContext]:
    """Contexts closed, in order (close_context recorded, then run)."""
    seen: list[GatewayContext] = []
    real = runtime_module.close_context

    async def record(ctx: GatewayContext) -> None:
        seen.append(ctx)
        await real(ctx)

    monkeypatch.setattr(runtime_module, "close_context", record)
    return seen


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    path = tmp_path / "gateway.yaml"
    path.write_text(tokens_config("one"))
    env = {"GATEWAY_AUDIT_LOG": str(tmp_path / "audit.jsonl")}
    rt = Runtime(build_context(path, env, MOCK), path, env, MOCK)
    yield rt
    rt.ctx.audit.close()  # shared by every context, closed by the server at exit


async def test_a_replaced_context_lives_until_its_last_stream_ends(
    runtime: Runtime, closed: list[GatewayContext]
) -> None:
    first = runtime.ctx
    with runtime.stream() as a, runtime.stream() as b:
        assert a is b is first and runtime.streams_in_flight == 2
        assert await runtime.reload("test")
        second = runtime.ctx
        assert second is not first
        with runtime.stream() as c:
            assert c is second  # new streams get the new context
            assert runtime.streams_in_flight == 3
        await _settle()
        assert closed == []  # still in use by a and b, however long they run
        assert await runtime.reload("again")  # second has no stream: closed at once
        await _settle()
        assert closed == [second]
    await _settle()
    assert closed == [second, first]  # first closed when its last stream ended
    assert runtime.streams_in_flight == 0
    await runtime.close()
    assert closed == [second, first, runtime.ctx]


async def test_shutdown_closes_replaced_contexts_whose_streams_never_ended(
    runtime: Runtime, closed: list[GatewayContext]
) -> None:
    first = runtime.ctx
    stream = runtime.stream()
    assert stream.__enter__() is first
    assert await runtime.reload("test")
    await runtime.close()
    assert closed == [first, runtime.ctx]
    stream.__exit__(None, None, None)  # a straggler ending later closes nothing twice
    await _settle()
    assert closed == [first, runtime.ctx]


async def test_a_rejected_reload_keeps_the_context_open(
    runtime: Runtime, closed: list[GatewayContext], tmp_path: Path
) -> None:
    (tmp_path / "gateway.yaml").write_text("identity: {static_tokens: {bot: {sha256: x}}}\n")
    current = runtime.ctx
    assert not await runtime.reload("test")
    assert runtime.ctx is current and closed == []
    await runtime.close()


async def _settle() -> None:
    """Let the closing tasks run."""
    for _ in range(5):
        await asyncio.sleep(0)
