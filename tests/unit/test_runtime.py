"""The runtime's contexts across reloads: a replaced context stays open exactly as long as a
stream that started with it runs, however long that is, and is closed when its last stream ends
or at shutdown (closing is what settles a context's pending budget work)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway_extproc.extproc.context import GatewayContext
from gateway_extproc.observability.telemetry import Telemetry
from gateway_extproc.runtime import Runtime, build_context
from gateway_extproc.runtime import reload as runtime_module  # where Runtime looks them up
from tests.sidecar_secrets import ENV as SIDECAR_ENV

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
    env = {"GATEWAY_AUDIT_LOG": str(tmp_path / "audit.jsonl"), **SIDECAR_ENV}
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
        await _retired(runtime)
        assert closed == []  # still in use by a and b, however long they run
        assert await runtime.reload("again")  # second has no stream: closed at once
        await _retired(runtime)
        assert closed == [second]
    await _retired(runtime)
    assert closed == [second, first]  # first closed when its last stream ended
    assert runtime.streams_in_flight == 0
    await runtime.close()
    assert closed == [second, first, runtime.ctx]


async def test_a_reload_keeps_the_caller_check_and_state_keys(runtime: Runtime) -> None:
    """Read once at start (Envoy's bootstrap carries the token and changes only with a restart
    too): every context a reload builds shares them, counters included."""
    first = runtime.ctx.sidecar_auth
    runtime._environ = {**runtime._environ, "GATEWAY_SIDECAR_TOKEN": "x" * 40}  # ignored
    assert await runtime.reload("test")
    assert runtime.ctx.sidecar_auth is first
    await runtime.close()


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
    await _retired(runtime)
    assert closed == [first, runtime.ctx]


async def test_a_rejected_reload_keeps_the_context_open(
    runtime: Runtime, closed: list[GatewayContext], tmp_path: Path
) -> None:
    (tmp_path / "gateway.yaml").write_text("identity: {static_tokens: {bot: {sha256: x}}}\n")
    current = runtime.ctx
    assert not await runtime.reload("test")
    assert runtime.ctx is current and closed == []
    await runtime.close()


async def _retired(runtime: Runtime) -> None:
    """Wait for every context being closed to be closed: a context is retired by a task
    started at once (when its last stream ends, or a reload replaces an unused one)."""
    if runtime._retiring:
        await asyncio.wait_for(asyncio.wait(list(runtime._retiring)), 10)


# --- the file watch: every change is seen, so every worker converges within reload_poll_s ----


def services(rt: Runtime) -> list[str]:
    return [t.service for t in rt.ctx.config.identity.static_tokens]


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Runtime, Path]]:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f'bot-x: {{sha256: "{hashlib.sha256(b"x").hexdigest()}"}}\n')
    path = tmp_path / "gateway.yaml"
    path.write_text(f"identity:\n  static_tokens_file: {tokens}\n")
    env = {"GATEWAY_AUDIT_LOG": str(tmp_path / "audit.jsonl"), **SIDECAR_ENV}
    rt = Runtime(build_context(path, env, MOCK), path, env, MOCK)
    yield rt, tokens
    rt.ctx.audit.close()


async def _until(check: Callable[[], bool], timeout_s: float = 10) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_a_rewrite_of_the_same_size_within_one_mtime_tick_is_seen(
    watched: tuple[Runtime, Path],
) -> None:
    rt, tokens = watched
    before = os.stat(tokens)
    tokens.write_text(f'bot-y: {{sha256: "{hashlib.sha256(b"y").hexdigest()}"}}\n')
    os.utime(tokens, ns=(before.st_atime_ns, before.st_mtime_ns))  # same size, same mtime
    watch = asyncio.create_task(rt.watch(0.01))
    try:
        await _until(lambda: services(rt) == ["bot-y"])
    finally:
        watch.cancel()
    await rt.close()


async def test_a_change_while_a_reload_reads_the_files_is_loaded_next(
    watched: tuple[Runtime, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    rt, tokens = watched
    real = runtime_module.build_context
    rotations = iter(["bot-z"])

    def build_then_rotate(*args: Any, **kwargs: Any) -> GatewayContext:
        ctx = real(*args, **kwargs)
        # The secret is rotated again just after this reload read it.
        for name in rotations:
            tokens.write_text(f'{name}: {{sha256: "{hashlib.sha256(b"z").hexdigest()}"}}\n')
        return ctx

    monkeypatch.setattr(runtime_module, "build_context", build_then_rotate)
    tokens.write_text(f'bot-y: {{sha256: "{hashlib.sha256(b"y").hexdigest()}"}}\n')
    watch = asyncio.create_task(rt.watch(0.01))
    try:
        await _until(lambda: services(rt) == ["bot-z"])  # not stuck on bot-y
    finally:
        watch.cancel()
    assert rt.reloads == 2
    await rt.close()


async def test_a_reload_keeps_the_process_telemetry(runtime: Runtime) -> None:
    telemetry = Telemetry()
    runtime.ctx = dataclasses.replace(runtime.ctx, telemetry=telemetry)
    assert await runtime.reload("test")
    assert runtime.ctx.telemetry is telemetry  # spans and metrics outlive a configuration
    await runtime.close()


CHAIN = (
    "fallback:\n  chains:\n    gpt-4.1-mini: [openai/gpt-4.1-mini, openai/gpt-5-nano, openai/o3]\n"
)
NO_NANO = "policies:\n  rules:\n    - {groups: [no-nano], allow: ['*'], deny: [gpt-5-nano]}\n"


async def test_a_reload_routes_only_to_the_clusters_envoy_was_started_with(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A reload adding a policy that needs a new variant (and a new chain): the running
    configuration keeps to the start's chain clusters, and the reload names the missing ones
    in one warning."""
    path = tmp_path / "gateway.yaml"
    path.write_text(CHAIN)
    env = {"GATEWAY_AUDIT_LOG": str(tmp_path / "audit.jsonl"), **SIDECAR_ENV}
    rt = Runtime(build_context(path, env, MOCK), path, env, MOCK)
    try:
        path.write_text(CHAIN + "    gpt-4o: [openai/gpt-4o, openai/gpt-4o-mini]\n" + NO_NANO)
        with caplog.at_level("WARNING", logger="gateway.runtime"):
            assert await rt.reload("test")
        fallback = rt.ctx.config.fallback
        assert fallback.variants  # the reloaded configuration wants the variant...
        chain = fallback.chains["gpt-4.1-mini"]
        # ...but Envoy has only the chain's own cluster: cut after the head.
        assert fallback.cluster_for("gpt-4.1-mini", [chain[0], chain[2]])[::2] == (
            "chain_gpt-4.1-mini",
            1,
        )
        assert fallback.cluster_for("gpt-4o", fallback.chains["gpt-4o"]) == ("", (), 0)
        messages = [r.getMessage() for r in caplog.records]
        warned = [m for m in messages if "Envoy has no cluster" in m]
        assert len(warned) == 1
        assert "chain_gpt-4.1-mini.t0_2" in warned[0] and "chain_gpt-4o" in warned[0]
    finally:
        await rt.close()
        rt.ctx.audit.close()
