"""Configuration reload through the running stack: static tokens are revoked by a reload, a bad
reload keeps the last good configuration, a changed secret file is picked up on its own.

The stack runs two sidecar workers, each reloading on its own. A revocation counts only once
EVERY worker refuses the token (each is asked directly on its port), never when one lucky
round-robin pick did; after that no request through Envoy gets in with it."""

from __future__ import annotations

import functools
import hashlib
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway_extproc.stack import Stack
from tests.e2e.conftest import start_stack
from tests.e2e.harness import eventually, worker_auth_status

pytestmark = pytest.mark.e2e
WORKERS = 2
# The documented bound (docs/configuration.md) for a revoked token on every worker is
# reload_poll_s plus the time a reload takes (well under a second here): this is a deadline for a
# hung reload, not a race.
RELOAD_DEADLINE_S = 20
BODY = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'


def config_with(tokens: dict[str, str], poll_s: float = 0) -> str:
    entries = "".join(
        f'    {name}: {{sha256: "{hashlib.sha256(secret.encode()).hexdigest()}"}}\n'
        for name, secret in tokens.items()
    )
    return (
        f"sidecar:\n  workers: {WORKERS}\n  reload_poll_s: {poll_s}\n"
        f"identity:\n  static_tokens:\n{entries}"
    )


def status(stack: Stack, secret: str) -> int:
    r = httpx.post(
        stack.gateway_url + "/v1/chat/completions",
        content=BODY,
        headers={"authorization": f"Bearer {secret}", "content-type": "application/json"},
        timeout=10,
    )
    return r.status_code


def every_worker(stack: Stack, accepts: dict[str, bool]) -> None:
    """Wait until each worker, asked directly, accepts exactly the credentials marked True;
    then check that requests through Envoy (enough to reach every worker) agree."""
    assert len(stack.sidecar_ports) == WORKERS
    wanted = {secret: 200 if ok else 401 for secret, ok in accepts.items()}

    def agrees(port: int) -> bool:
        return all(worker_auth_status(stack, port, s) == code for s, code in wanted.items())

    for port in stack.sidecar_ports.values():
        eventually(functools.partial(agrees, port), timeout=RELOAD_DEADLINE_S)
    for _ in range(3 * WORKERS):
        assert {secret: status(stack, secret) for secret in wanted} == wanted


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
    every_worker(stack, {"secret-a": False, "secret-b": True})

    config.write_text("identity:\n  static_tokens:\n    bot-c: {sha256: not-hex}\n")
    stack.signal_sidecars(signal.SIGHUP)
    log = stack.run_dir / "stack.log"
    eventually(lambda: log.read_bytes().count(b"reload (SIGHUP) rejected") == WORKERS)
    every_worker(stack, {"secret-b": True})  # still the last good configuration
    assert b"static_tokens.bot-c.sha256" in log.read_bytes()


def test_a_changed_tokens_file_is_picked_up_without_a_signal(tmp_path: Path) -> None:
    tokens = tmp_path / "static-tokens.yaml"
    digest = hashlib.sha256(b"secret-x").hexdigest()
    tokens.write_text(f'bot-x: {{sha256: "{digest}"}}\n')
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"sidecar:\n  workers: {WORKERS}\n  reload_poll_s: 0.2\n"
        f"identity:\n  static_tokens_file: {tokens}\n"
    )
    stack = start_stack(tmp_path / "run", config_path=config)
    try:
        every_worker(stack, {"secret-x": True})
        digest = hashlib.sha256(b"secret-y").hexdigest()
        tokens.write_text(f'bot-y: {{sha256: "{digest}"}}\n')  # the mounted secret is rotated
        # Each worker polls on its own: secret-x is refused by all of them within the bound.
        every_worker(stack, {"secret-x": False, "secret-y": True})
    finally:
        stack.stop()
