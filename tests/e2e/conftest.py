"""The end-to-end stack: real Envoy, the real sidecar, a real redis-server and the mock provider,
started once per session on ephemeral loopback ports by the same code `make run` uses."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import anthropic
import openai
import pytest
import yaml

from gateway_extproc.stack import Stack
from tests.e2e.harness import RETIRED_MODELS, AuditLog, MockLog
from tests.paths import recorded_openai

pytestmark = pytest.mark.e2e


# Static service tokens the metering tests' clients use (secret -> service name).
CLIENT_TOKENS = {"client-key": "e2e-client", "sk-leak-me-not-0815": "leak-test"}


def static_tokens_yaml(indent: str = "    ") -> str:
    return "".join(
        f'{indent}{name}: {{sha256: "{hashlib.sha256(secret.encode()).hexdigest()}"}}\n'
        for secret, name in CLIENT_TOKENS.items()
    )


def stack_environ(run_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(GATEWAY_AUDIT_LOG=str(run_dir / "audit.jsonl"), PYTHONUNBUFFERED="1", **extra)
    return env


def start_stack(run_dir: Path, *, drain: bool = False, **kwargs: object) -> Stack:
    """A stack on ephemeral ports. Its sidecars stop without the production drain period
    (`sidecar.drain_s: 0`, unless the config sets it or `drain`): a test stack has no load
    balancer to wait for, and the suite starts two dozen of them."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = kwargs.get("config_path")
    if not drain and isinstance(config_path, Path):
        doc = yaml.safe_load(config_path.read_text()) or {}
        sidecar = doc.setdefault("sidecar", {})
        if isinstance(sidecar, dict) and "drain_s" not in sidecar:
            sidecar["drain_s"] = 0
            config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    environ = kwargs.pop("environ", None) or stack_environ(run_dir)
    stack = Stack(
        run_dir=run_dir,
        environ=environ,  # type: ignore[arg-type]
        listen_port=0,
        admin_port=0,
        log_path=run_dir / "stack.log",
        **kwargs,  # type: ignore[arg-type]
    )
    try:
        return stack.start()
    except BaseException:
        print((run_dir / "stack.log").read_text(errors="replace")[-5000:])
        raise


def _metering_stack(run_dir: Path, mode: str) -> Stack:
    config = run_dir / "gateway.yaml"
    # Metering tests run as anonymous callers or with static service tokens;
    # tests/e2e/test_identity.py covers identity.
    config.write_text(
        f"catalog:\n  files: [{RETIRED_MODELS}]\n"
        f"identity:\n  allow_anonymous: true\n  static_tokens:\n{static_tokens_yaml()}"
        f"metering:\n  mode: {mode}\n"
    )
    replays = ("--fixtures-dir", str(recorded_openai()))  # the mock replays the recordings
    return start_stack(run_dir, config_path=config, mock_args=replays)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The default `metering.mode: observe`: Envoy never waits for the response side."""
    s = _metering_stack(tmp_path_factory.mktemp("stack"), "observe")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def sync_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`metering.mode: synchronous`: the sidecar answers every response message, event streams'
    chunks too."""
    s = _metering_stack(tmp_path_factory.mktemp("sync-stack"), "synchronous")
    yield s
    s.stop()


@dataclasses.dataclass
class Metered:
    """A client of one of the two metering stacks, with that stack's audit log."""

    oai: openai.OpenAI
    claude: anthropic.Anthropic
    audit: AuditLog
    synchronous: bool

    def cost_header(self, headers: Mapping[str, str], cost_micros: int) -> None:
        """A non-streamed JSON response carries its cost in both modes (observe mode meters it
        on the request's own stream), equal to its audit record's."""
        assert headers["x-gateway-cost-usd"] == f"{cost_micros / 1e6:.6f}"


@pytest.fixture(params=["observe", "synchronous"])
def metered(request: pytest.FixtureRequest) -> Iterator[Metered]:
    """The test runs against both metering modes."""
    synchronous = request.param == "synchronous"
    s: Stack = request.getfixturevalue("sync_stack" if synchronous else "stack")
    oai = openai.OpenAI(base_url=s.gateway_url + "/v1", api_key="client-key", max_retries=0)
    claude = anthropic.Anthropic(base_url=s.gateway_url, api_key="client-key", max_retries=0)
    yield Metered(oai, claude, AuditLog(s.run_dir / "audit.jsonl"), synchronous)
    oai.close()
    claude.close()


@pytest.fixture(scope="session")
def audit(stack: Stack) -> AuditLog:
    return AuditLog(stack.run_dir / "audit.jsonl")


@pytest.fixture(scope="session")
def mock(stack: Stack) -> MockLog:
    assert stack.mock_url is not None
    return MockLog(stack.mock_url.removesuffix("/v1"))


@pytest.fixture
def oai(stack: Stack) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=stack.gateway_url + "/v1", api_key="client-key", max_retries=0)
    yield client
    client.close()


@pytest.fixture
def claude(stack: Stack) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(base_url=stack.gateway_url, api_key="client-key", max_retries=0)
    yield client
    client.close()
