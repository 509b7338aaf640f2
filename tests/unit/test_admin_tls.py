"""TLS on the admin API: the setting and its problems, then the real server on an ephemeral
port with certificates made at test time - plaintext refused, TLS and mutual TLS (no, a
foreign, the right client certificate), a renewed certificate picked up without a restart, the
pod-local unix socket for Envoy, and `gatewayctl budgets` with its TLS options."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway_extproc.admin import server as admin_server
from gateway_extproc.admin._generated.gateway.admin.v1 import admin_pb2 as pb
from gateway_extproc.admin.api import AdminClient
from gateway_extproc.admin.settings import parse_admin_api
from gateway_extproc.admin.tls import AdminTls, channel_credentials, parse_tls
from gateway_extproc.runtime import build_context, close_context, start_context
from tests.redis_servers import RedisEndpoint, redis_standalone_server  # noqa: F401
from tests.selfsigned import CertAuthority
from tests.sidecar_secrets import ENV as SIDECAR_ENV

TOKEN = "admin-secret-for-tls-tests"
LIST = pb.ListBudgetsRequest()


# -- the setting ------------------------------------------------------------------------------


def test_tls_setting(tmp_path: Path) -> None:
    pem = tmp_path / "x.pem"
    pem.write_text("x")
    problems: list[str] = []
    assert parse_tls(None, problems) is None
    full = {"cert_file": str(pem), "key_file": str(pem), "client_ca_file": str(pem)}
    assert parse_tls(full, problems) == AdminTls(str(pem), str(pem), str(pem))
    assert parse_tls({"cert_file": str(pem), "key_file": str(pem)}, problems) == AdminTls(
        str(pem), str(pem)
    )
    assert problems == []


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ("on", ["admin_api.tls: must be a mapping with cert_file, key_file"]),
        (
            {"cert_file": "/nonexistent/tls.crt"},
            [
                "admin_api.tls.cert_file: cannot read /nonexistent/tls.crt: No such file or "
                "directory",
                "admin_api.tls.key_file: required (a PEM file)",
            ],
        ),
        (
            {"key_file": "PEM", "cert_file": 3, "ca": "x"},
            [
                "admin_api.tls.ca: unknown key (expected one of cert_file, key_file, "
                "client_ca_file)",
                "admin_api.tls.cert_file: must be a path (got 3)",
                "admin_api.tls.key_file: cannot read PEM: No such file or directory",
            ],
        ),
    ],
)
def test_tls_setting_problems(doc: object, expected: list[str]) -> None:
    problems: list[str] = []
    assert parse_tls(doc, problems) is None
    assert problems == expected


def test_json_over_https_needs_the_pod_local_socket(tmp_path: Path) -> None:
    pem = tmp_path / "x.pem"
    pem.write_text("x")
    tls = {"cert_file": str(pem), "key_file": str(pem)}
    problems: list[str] = []
    parse_admin_api({"enabled": True, "http_port": 10091, "tls": tls}, problems)
    assert problems == [
        "admin_api.socket: required with tls and http_port: Envoy's JSON listener reaches "
        "worker 0 over this unix socket (e.g. /run/llm-gateway/admin-api.sock)"
    ]
    problems.clear()
    ok = parse_admin_api(
        {"enabled": True, "http_port": 10091, "tls": tls, "socket": "/run/x.sock"}, problems
    )
    assert (problems, ok.socket) == ([], "/run/x.sock")
    for bad in ("relative.sock", "/" + "s" * 107):
        problems.clear()
        parse_admin_api({"socket": bad}, problems)
        assert problems == [
            f"admin_api.socket: must be an absolute path of at most 107 bytes (got {bad!r})"
        ]
    problems.clear()
    assert parse_admin_api({"socket": "/" + "s" * 106}, problems).socket is not None
    assert problems == []


# -- the server -------------------------------------------------------------------------------


class Pki:
    """A server CA and certificate for 127.0.0.1, a client CA, and certificates it and a
    stranger's CA signed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.server_ca = CertAuthority("admin-server-ca")
        self.ca_file = self.server_ca.write_ca(root / "server-ca.crt")
        self.cert, self.key = self.server_ca.issue(root / "tls.crt", root / "tls.key", "127.0.0.1")
        self.client_ca = CertAuthority("admin-client-ca")
        self.client_ca_file = self.client_ca.write_ca(root / "client-ca.crt")
        self.client = self.client_ca.issue(
            root / "client.crt", root / "client.key", "ops", client=True
        )
        self.stranger = CertAuthority("stranger").issue(
            root / "stranger.crt", root / "stranger.key", "ops", client=True
        )


Connect = Callable[..., grpc.aio.Channel]


class Served:
    def __init__(self, port: int, pki: Pki, socket: Path) -> None:
        self.port, self.pki, self.socket = port, pki, socket
        self.address = f"127.0.0.1:{port}"

    def tls(self, client: tuple[Path, Path] | None = None, ca: Path | None = None) -> Any:
        cert, key = client if client else (None, None)
        credentials = channel_credentials(
            str(ca or self.pki.ca_file), cert and str(cert), key and str(key)
        )
        return grpc.aio.secure_channel(self.address, credentials)

    async def list_budgets(self, channel: grpc.aio.Channel) -> grpc.StatusCode:
        async with channel:
            try:
                await AdminClient(channel, TOKEN).call("ListBudgets", LIST, timeout_s=10)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
        return grpc.StatusCode.OK


async def serve(
    tmp_path: Path, redis: RedisEndpoint, pki: Pki, *, mutual: bool
) -> AsyncIterator[Served]:
    socket = tmp_path / "admin.sock"
    client_ca = f"\n    client_ca_file: {pki.client_ca_file}" if mutual else ""
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"""
identity:
  static_tokens:
    ops: {{sha256: "{digest}", groups: [gateway-admins]}}
admin_api:
  enabled: true
  static_tokens: [ops]
  socket: {socket}
  tls:
    cert_file: {pki.cert}
    key_file: {pki.key}{client_ca}
budget_store: {{key_prefix: t{uuid.uuid4().hex[:8]}}}
audit: {{stdout: false}}
"""
    )
    env = {"GATEWAY_REDIS_URL": f"redis://{redis.host}:{redis.port}/0", **SIDECAR_ENV}
    ctx = build_context(config, env, "http://127.0.0.1:9/v1")
    await start_context(ctx)
    await ctx.budgets.services.start()
    server, port = await admin_server.start(lambda: ctx, "127.0.0.1:0")
    yield Served(port, pki, socket)
    await server.stop(None)
    await close_context(ctx)
    await ctx.budgets.services.close()
    ctx.audit.close()


@pytest.fixture
async def tls_server(
    tmp_path: Path,
    redis_standalone_server: RedisEndpoint,  # noqa: F811
) -> AsyncIterator[Served]:
    async for served in serve(tmp_path, redis_standalone_server, Pki(tmp_path), mutual=False):
        yield served


@pytest.fixture
async def mtls_server(
    tmp_path: Path,
    redis_standalone_server: RedisEndpoint,  # noqa: F811
) -> AsyncIterator[Served]:
    async for served in serve(tmp_path, redis_standalone_server, Pki(tmp_path), mutual=True):
        yield served


async def test_tls_server_refuses_plaintext_and_serves_tls(tls_server: Served) -> None:
    plain = grpc.aio.insecure_channel(tls_server.address)
    assert await tls_server.list_budgets(plain) is grpc.StatusCode.UNAVAILABLE
    assert await tls_server.list_budgets(tls_server.tls()) is grpc.StatusCode.OK
    other = CertAuthority("other").write_ca(tls_server.pki.root / "other-ca.crt")
    untrusted = tls_server.tls(ca=other)  # a server this client cannot verify
    assert await tls_server.list_budgets(untrusted) is grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_needs_a_client_certificate_from_the_client_ca(
    mtls_server: Served,
) -> None:
    pki = mtls_server.pki
    assert await mtls_server.list_budgets(mtls_server.tls()) is grpc.StatusCode.UNAVAILABLE
    foreign = mtls_server.tls(client=pki.stranger)
    assert await mtls_server.list_budgets(foreign) is grpc.StatusCode.UNAVAILABLE
    assert await mtls_server.list_budgets(mtls_server.tls(client=pki.client)) is grpc.StatusCode.OK
    # The certificate says which machine; the token still says who.
    async with mtls_server.tls(client=pki.client) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await AdminClient(channel, None).call("ListBudgets", LIST, timeout_s=10)
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_a_renewed_certificate_is_served_without_a_restart(tls_server: Served) -> None:
    pki = tls_server.pki
    renewed = CertAuthority("renewed-ca")
    renewed_ca = renewed.write_ca(pki.root / "renewed-ca.crt")
    new_cert, new_key = renewed.issue(pki.root / "new.crt", pki.root / "new.key", "127.0.0.1")
    # As a Secret update does: the files at the configured paths are replaced.
    os.replace(new_key, pki.key)
    os.replace(new_cert, pki.cert)
    assert await tls_server.list_budgets(tls_server.tls(ca=renewed_ca)) is grpc.StatusCode.OK
    assert await tls_server.list_budgets(tls_server.tls()) is grpc.StatusCode.UNAVAILABLE


async def test_the_pod_local_socket_is_plaintext_for_envoy(mtls_server: Served) -> None:
    channel = grpc.aio.insecure_channel(f"unix:{mtls_server.socket}")
    assert await mtls_server.list_budgets(channel) is grpc.StatusCode.OK


async def gatewayctl(served: Served, *flags: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a thread: the server under test runs on this event loop."""
    env = {**os.environ, "GATEWAY_ADMIN_ADDRESS": served.address, "GATEWAY_ADMIN_TOKEN": TOKEN}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway_extproc.cli", "budgets", *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_gatewayctl_speaks_mutual_tls(mtls_server: Served) -> None:
    pki = mtls_server.pki
    plain = await gatewayctl(mtls_server)
    assert plain.returncode == 1 and "UNAVAILABLE" in plain.stderr
    no_cert = await gatewayctl(mtls_server, "--tls-ca", str(pki.ca_file))
    assert no_cert.returncode == 1 and "UNAVAILABLE" in no_cert.stderr
    flags = ["--tls-ca", str(pki.ca_file), "--tls-cert", str(pki.client[0])]
    half = await gatewayctl(mtls_server, *flags)
    assert half.returncode == 1
    assert "TLS: a client certificate needs both its certificate and key file" in half.stderr
    done = await gatewayctl(
        mtls_server, *flags, "--tls-key", str(pki.client[1]), "--format", "json"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"  # no budget configured: an empty list, over mutual TLS
