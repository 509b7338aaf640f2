"""Configuration reload through the running stack: static tokens are revoked by a reload, a bad
reload keeps the last good configuration, a changed secret file is picked up on its own."""

from __future__ import annotations

import hashlib
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from gateway_extproc.stack import Stack
from tests.e2e.conftest import start_stack

pytestmark = pytest.mark.e2e
BODY = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'


def config_with(tokens: dict[str, str], poll_s: float = 0) -> str:
    entries = "".join(
        f'    {name}: {{sha256: "{hashlib.sha256(secret.encode()).hexdigest()}"}}\n'
        for name, secret in tokens.items()
    )
    return f"sidecar:\n  reload_poll_s: {poll_s}\nidentity:\n  static_tokens:\n{entries}"


def status(stack: Stack, secret: str) -> int:
    r = httpx.post(
        stack.gateway_url + "/v1/chat/completions",
        content=BODY,
        headers={"authorization": f"Bearer {secret}", "content-type": "application/json"},
        timeout=10,
    )
    return r.status_code


def eventually(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


@pytest.fixture
def reloadable(tmp_path: Path) -> Iterator[tuple[Stack, Path]]:
    config = tmp_path / "gateway.yaml"
    config.write_text(config_with({"bot-a": "secret-a"}))
    stack = start_stack(tmp_path / "run", config_path=config)
    yield stack, config
    stack.stop()


def test_sighup_revokes_a_static_token_and_a_bad_reload_keeps_the_last_good(
    reloadable: tuple[Stack, Path],
) -> None:
    stack, config = reloadable
    assert status(stack, "secret-a") == 200
    config.write_text(config_with({"bot-b": "secret-b"}))
    stack.signal_sidecars(signal.SIGHUP)
    eventually(lambda: status(stack, "secret-a") == 401)
    assert status(stack, "secret-b") == 200

    config.write_text("identity:\n  static_tokens:\n    bot-c: {sha256: not-hex}\n")
    stack.signal_sidecars(signal.SIGHUP)
    eventually(lambda: b"reload (SIGHUP) rejected" in (stack.run_dir / "stack.log").read_bytes())
    assert status(stack, "secret-b") == 200  # still the last good configuration
    assert b"static_tokens.bot-c.sha256" in (stack.run_dir / "stack.log").read_bytes()


def test_a_changed_tokens_file_is_picked_up_without_a_signal(tmp_path: Path) -> None:
    tokens = tmp_path / "static-tokens.yaml"
    digest = hashlib.sha256(b"secret-x").hexdigest()
    tokens.write_text(f'bot-x: {{sha256: "{digest}"}}\n')
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"sidecar:\n  reload_poll_s: 0.2\nidentity:\n  static_tokens_file: {tokens}\n"
    )
    stack = start_stack(tmp_path / "run", config_path=config)
    try:
        assert status(stack, "secret-x") == 200
        digest = hashlib.sha256(b"secret-y").hexdigest()
        tokens.write_text(f'bot-y: {{sha256: "{digest}"}}\n')  # the mounted secret is rotated
        eventually(lambda: status(stack, "secret-y") == 200)
        assert status(stack, "secret-x") == 401
    finally:
        stack.stop()
