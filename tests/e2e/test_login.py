"""`gatewayctl login` end to end: a real stack (Envoy, sidecar, redis, mock) that trusts the test
IdP (tests/idp.py) and publishes it at /.well-known/llm-gateway; `gatewayctl` run as a
subprocess with its own config directory; the person approves through the IdP's /device form.
Then the official SDKs use the stored token, `token --print` refreshes it, `logout` revokes it."""

from __future__ import annotations

import itertools
import json
import os
import queue
import stat
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from gateway_extproc.stack import Stack
from tests.e2e.conftest import start_stack
from tests.e2e.harness import AuditLog
from tests.idp import DEVICE_GRANT, IdpClient, IdpUser, OidcProvider
from tests.paths import REPO

pytestmark = pytest.mark.e2e
GATEWAYCTL = str(REPO / ".venv" / "bin" / "gatewayctl")
ADA = IdpUser("ada@example.com", "pw-ada", ("eng", "ml-team"))


@pytest.fixture(scope="module")
def idp() -> Iterator[OidcProvider]:
    provider = OidcProvider([ADA], [IdpClient("gatewayctl")], device_interval=1)
    yield provider
    provider.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, idp: OidcProvider) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("login")
    config = run_dir / "gateway.yaml"
    config.write_text(
        f"""
identity:
  issuers:
    corp:
      issuer: {idp.issuer}
      audiences: [llm-gateway]
      jwks_url: {idp.jwks_url}
      claims: {{user: [email], groups: [groups]}}
login:
  issuer: corp
  client_id: gatewayctl
"""
    )
    s = start_stack(run_dir, config_path=config)
    yield s
    s.stop()


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """The environment of one person's gatewayctl: their own config directory."""
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_BASE_URL"))}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "config"), PYTHONUNBUFFERED="1")
    env.pop("GATEWAY_URL", None)
    return env


def credentials(env: dict[str, str]) -> Path:
    return Path(env["XDG_CONFIG_HOME"]) / "llm-gateway" / "credentials.json"


class LoginProcess:
    """`gatewayctl login` running; reads its output until it shows the code."""

    def __init__(self, stack: Stack, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [GATEWAYCTL, "login", "--gateway", stack.gateway_url],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # A reader thread: a buffered pipe defeats select.
        stdout = self.proc.stdout
        assert stdout is not None
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(
            target=lambda: [self.lines.put(x) for x in iter(stdout.readline, "")], daemon=True
        )
        self.reader.start()
        self.shown = self._read_until("Waiting for approval", timeout=30)
        code_line = next(x for x in self.shown if "enter the code:" in x)
        self.user_code = code_line.rsplit(" ", 1)[1]

    def _read_until(self, marker: str, timeout: float) -> list[str]:
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            seen.append(line.rstrip("\n"))
            if marker in line:
                return seen
        self.proc.kill()
        _, _, err = self.finish()
        raise AssertionError(f"login never showed {marker!r}: {seen} {err}")

    def finish(self, timeout: float = 30) -> tuple[int, str, str]:
        """Exit status, the rest of stdout, stderr."""
        self.proc.wait(timeout)
        assert self.proc.stderr is not None and self.proc.stdout is not None
        with self.proc.stderr:
            err = self.proc.stderr.read()
        self.reader.join(10)
        self.proc.stdout.close()
        rest = []
        while not self.lines.empty():
            rest.append(self.lines.get())
        return self.proc.returncode, "".join(rest), err


def approve_in_browser(idp: OidcProvider, user_code: str) -> None:
    """What the person does: the IdP's /device page, code and credentials, Sign in."""
    page = httpx.get(f"{idp.issuer}/device", params={"user_code": user_code})
    assert page.status_code == 200 and 'name="user_code"' in page.text
    form = {"user_code": user_code, "username": ADA.email, "password": ADA.password}
    answer = httpx.post(f"{idp.issuer}/device", data={**form, "action": "allow"})
    assert answer.status_code == 200 and "approved" in answer.text


def gatewayctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GATEWAYCTL, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def ext_proc_streams(stack: Stack) -> int:
    with urllib.request.urlopen(stack.admin_url + "/stats?filter=ext_proc", timeout=5) as r:
        lines = r.read().decode().splitlines()
    return sum(
        int(x.split(": ")[1])
        for x in lines
        if x.endswith(("streams_started",)) or ".streams_started: " in x
    )


def log_in(stack: Stack, idp: OidcProvider, env: dict[str, str]) -> LoginProcess:
    login = LoginProcess(stack, env)
    approve_in_browser(idp, login.user_code)
    status, out, err = login.finish()
    assert status == 0, err
    assert f"Logged in to {stack.gateway_url}" in out
    return login


def test_the_document_is_envoys_answer(stack: Stack, idp: OidcProvider) -> None:
    before = ext_proc_streams(stack)
    answer = httpx.get(stack.gateway_url + "/.well-known/llm-gateway")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {
        "version": 1,
        "openai": {"base_url": "/v1"},
        "anthropic": {"base_url": "/"},
        "login": {
            "issuer": idp.issuer,
            "discovery_url": f"{idp.issuer}/.well-known/openid-configuration",
            "client_id": "gatewayctl",
            "scopes": ["openid", "email", "profile", "offline_access"],
            "token": "access_token",
        },
    }
    assert ext_proc_streams(stack) == before  # never reached the sidecar


def test_login_token_refresh_and_the_gateway_accepts_each(
    stack: Stack, idp: OidcProvider, home: dict[str, str]
) -> None:
    login = log_in(stack, idp, home)
    assert any(idp.issuer + "/device" in line for line in login.shown)
    assert any(f"user_code={login.user_code}" in line for line in login.shown)  # the complete URI
    path = credentials(home)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    stored = json.loads(path.read_text())["gateways"][stack.gateway_url]
    assert stored["issuer"] == idp.issuer and stored["client_id"] == "gatewayctl"

    printed = gatewayctl(home, "token", "--print", "--gateway", stack.gateway_url)
    assert printed.returncode == 0 and printed.stderr == ""
    token = printed.stdout.strip()
    assert token == stored["access_token"] and printed.stdout == token + "\n"

    audit = AuditLog(stack.run_dir / "audit.jsonl")

    def call(credential: str) -> dict[str, object]:
        with openai.OpenAI(
            base_url=stack.gateway_url + "/v1", api_key=credential, max_retries=0
        ) as oai:
            raw = oai.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
        return audit.wait_for(raw.headers["x-gateway-request-id"])

    identity = call(token)["identity"]
    assert isinstance(identity, dict)
    assert (identity["user"], identity["groups"], identity["issuer"]) == (
        "ada@example.com",
        ["eng", "ml-team"],
        "corp",
    )

    # Refreshed when it expires within the margin (here: any token), the rotated refresh token
    # stored (the IdP rotates it: the old one is spent).
    refreshes = len(idp.grants("refresh_token"))
    printed = gatewayctl(
        home, "token", "--print", "--gateway", stack.gateway_url, "--margin", "1e9"
    )
    assert printed.returncode == 0, printed.stderr
    fresh = printed.stdout.strip()
    assert [c.outcome for c in idp.grants("refresh_token")[refreshes:]] == ["ok"]
    rotated = json.loads(path.read_text())["gateways"][stack.gateway_url]
    assert rotated["access_token"] == fresh and rotated["refresh_token"] != stored["refresh_token"]
    identity = call(fresh)["identity"]
    assert isinstance(identity, dict) and identity["user"] == "ada@example.com"

    # env: the SDKs' own variables, read by the SDKs themselves.
    script = (
        'eval "$('
        + GATEWAYCTL
        + " env --gateway "
        + stack.gateway_url
        + ')" && '
        + str(REPO / ".venv" / "bin" / "python")
        + " -c 'import anthropic, openai; "
        "o = openai.OpenAI(max_retries=0).chat.completions.with_raw_response.create("
        'model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]); '
        "a = anthropic.Anthropic(max_retries=0).messages.with_raw_response.create("
        'model="claude-haiku-4-5", max_tokens=16, messages=[{"role": "user", "content": "hi"}]); '
        'print(o.headers["x-gateway-request-id"], a.headers["x-gateway-request-id"])\''
    )
    ran = subprocess.run(
        ["sh", "-c", script], env=home, capture_output=True, text=True, timeout=60, check=False
    )
    assert ran.returncode == 0, ran.stderr
    for request_id in ran.stdout.split():
        identity = audit.wait_for(request_id)["identity"]
        assert isinstance(identity, dict) and identity["user"] == "ada@example.com"

    # logout: the refresh token revoked at the IdP, the tokens forgotten, token --print refuses.
    last_refresh = json.loads(path.read_text())["gateways"][stack.gateway_url]["refresh_token"]
    out = gatewayctl(home, "logout", "--gateway", stack.gateway_url)
    assert out.returncode == 0, out.stderr
    assert last_refresh in idp.revoked
    assert json.loads(path.read_text())["gateways"] == {}
    refused = gatewayctl(home, "token", "--print", "--gateway", stack.gateway_url)
    assert refused.returncode == 1 and refused.stdout == ""
    assert f"not logged in to {stack.gateway_url}: run gatewayctl login" in refused.stderr


def test_token_print_without_login_fails_clearly(stack: Stack, home: dict[str, str]) -> None:
    refused = gatewayctl(home, "token", "--print", "--gateway", stack.gateway_url)
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr == (
        f"gatewayctl token: not logged in to {stack.gateway_url}: "
        f"run gatewayctl login --gateway {stack.gateway_url}\n"
    )


@pytest.mark.parametrize(
    ("act", "message"),
    [
        ("deny", "the sign-in was denied at the IdP; nothing was stored"),
        ("expire", "the code expired before it was approved; run gatewayctl login again"),
    ],
)
def test_denied_or_expired_ends_with_nothing_stored(
    stack: Stack, idp: OidcProvider, home: dict[str, str], act: str, message: str
) -> None:
    login = LoginProcess(stack, home)
    getattr(idp, act)(login.user_code)
    status, _, err = login.finish()
    assert status == 1
    assert err.strip() == f"gatewayctl login: {message}"
    assert not credentials(home).exists()


def test_slow_down_paces_every_later_poll(
    stack: Stack, idp: OidcProvider, home: dict[str, str]
) -> None:
    """Polls come `interval` (1 s) apart; after the IdP answers slow_down, 1 + 5 s apart (a
    poll sooner would only hear slow_down again: the IdP raised its interval too)."""
    start = len(idp.grants(DEVICE_GRANT))

    def wait_for_polls(count: int) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(idp.grants(DEVICE_GRANT)) < start + count:
            time.sleep(0.05)
        assert len(idp.grants(DEVICE_GRANT)) >= start + count, "the CLI stopped polling"

    login = LoginProcess(stack, home)
    wait_for_polls(1)
    idp.slow_down_polls = 1  # the second poll hears slow_down
    wait_for_polls(2)
    approve_in_browser(idp, login.user_code)
    status, _, err = login.finish()
    assert status == 0, err
    polls = idp.grants(DEVICE_GRANT)[start:]
    assert [c.outcome for c in polls] == ["authorization_pending", "slow_down", "ok"]
    pending_to_slow, slow_to_ok = (b.at - a.at for a, b in itertools.pairwise(polls))
    assert pending_to_slow >= 1
    assert slow_to_ok >= 6
