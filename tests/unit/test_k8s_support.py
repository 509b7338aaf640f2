"""What the Helm chart needs from gatewayctl: the ops listener (readiness reflecting the
sidecar's health, metrics), Envoy dialing workers on loopback, the preStop drain of Envoy, and a
Redis password from the environment that never shows in a repr or URL."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from gateway_extproc.budgets.loader import parse_budget_store
from gateway_extproc.cli import main
from gateway_extproc.envoy.drain import ACTIVE_STAT, drain_envoy
from gateway_extproc.envoy.filters import EXTPROC_CLUSTER
from gateway_extproc.stack import validate_envoy_config
from tests.redis_servers import RedisEndpoint, standalone_redis
from tests.selfsigned import write_pki, write_self_signed
from tests.sidecar_secrets import CALLER_TOKEN
from tests.sidecar_secrets import ENV as SIDECAR_ENV


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the sidecar's containers and envoy-config read: the caller token, the state keys."""
    for name, value in SIDECAR_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.mark.usefixtures("token_env")
def test_envoy_config_with_ops_port_and_loopback_sidecar(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("listener: {host: 0.0.0.0}\nsidecar: {host: 0.0.0.0, workers: 2}\n")
    out = tmp_path / "envoy.yaml"
    argv = ["envoy-config", "--config", str(config), "--out", str(out), "--ops-port", "8081"]
    assert main([*argv, "--sidecar-host", "127.0.0.1", "--sidecar-port", "50051"]) == 0
    validate_envoy_config(out)
    b = yaml.safe_load(out.read_text())
    listeners = {x["name"]: x for x in b["static_resources"]["listeners"]}
    assert listeners["ops"]["address"]["socket_address"] == {
        "address": "0.0.0.0",
        "port_value": 8081,
    }
    (chain,) = listeners["ops"]["filter_chains"]
    manager = chain["filters"][0]["typed_config"]
    health = manager["http_filters"][0]["typed_config"]
    assert health["pass_through_mode"] is False
    assert health["cluster_min_healthy_percentages"] == {EXTPROC_CLUSTER: {"value": 1}}
    clusters = {c["name"]: c for c in b["static_resources"]["clusters"]}
    sidecar = clusters[EXTPROC_CLUSTER]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"] for e in sidecar] == [
        {"address": "127.0.0.1", "port_value": 50051},
        {"address": "127.0.0.1", "port_value": 50052},
    ]
    admin = clusters["envoy_admin"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert admin["endpoint"]["address"]["socket_address"]["address"] == "127.0.0.1"
    assert b["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


class FakeAdmin(http.server.BaseHTTPRequestHandler):
    posts: list[str]
    active: list[int]

    def do_POST(self) -> None:
        self.posts.append(self.path)
        self.send_response(200)
        self.end_headers()

    def do_GET(self) -> None:
        value = self.active.pop(0) if len(self.active) > 1 else self.active[0]
        body = f"{ACTIVE_STAT}: {value}\n".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def admin() -> Iterator[tuple[str, type[FakeAdmin]]]:
    handler = type("Handler", (FakeAdmin,), {"posts": [], "active": [2, 1, 0]})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def test_drain_fails_health_drains_and_waits_for_active_requests(
    admin: tuple[str, type[FakeAdmin]], tmp_path: Path
) -> None:
    url, handler = admin
    now = [0.0]
    lines: list[str] = []
    done = tmp_path / "run" / "envoy-drained"
    drain_envoy(
        url,
        600,
        0,
        done,
        lines.append,
        clock=lambda: now[0],
        sleep=lambda s: now.__setitem__(0, now[0] + s),
    )
    assert handler.posts == ["/healthcheck/fail", "/drain_listeners?graceful"]
    assert now[0] == 2.0  # two polls saw requests in flight, the third none
    assert done.read_text() == "drained\n"
    assert lines[1:] == [  # why it waits, said once; then what it left behind
        "envoy: waiting for 2 requests in flight (at most 600s)",
        "envoy: 0 requests active after 2s",
    ]


def test_drain_waits_at_least_min_wait_and_at_most_timeout(
    admin: tuple[str, type[FakeAdmin]], tmp_path: Path
) -> None:
    url, handler = admin
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    drain_envoy(url, 600, 5, None, lambda _: None, clock=lambda: now[0], sleep=sleep)
    assert now[0] == 5.0
    handler.active[:] = [3]  # a stream that never ends
    now[0] = 0.0
    drain_envoy(url, 30, 5, None, lambda _: None, clock=lambda: now[0], sleep=sleep)
    assert now[0] == 30.0


def test_drain_of_an_envoy_that_is_gone_still_writes_the_file(tmp_path: Path) -> None:
    lines: list[str] = []
    done = tmp_path / "drained"
    drain_envoy("http://127.0.0.1:9", 600, 5, done, lines.append)  # discard port: refused
    assert done.exists()
    assert "cannot drain" in lines[-1]


@pytest.fixture(scope="module")
def protected_redis() -> Iterator[RedisEndpoint]:
    with standalone_redis() as endpoint:
        with redis.Redis(host=endpoint.host, port=endpoint.port) as c:
            c.config_set("requirepass", "pa:ss@w/rd")
        yield endpoint


def test_redis_password_from_the_environment_is_used_and_never_shown(
    protected_redis: RedisEndpoint, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    environ = {"GATEWAY_REDIS_PASSWORD": "pa:ss@w/rd"}
    problems: list[str] = []
    store = parse_budget_store({}, environ, problems)
    assert problems == []
    assert store.redis_password == "pa:ss@w/rd"
    assert "pa:ss" not in repr(store)
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"budget_store: {{redis_url: 'redis://{protected_redis.host}:{protected_redis.port}/0'}}\n"
    )
    mp = pytest.MonkeyPatch()
    with mp.context() as m:
        m.setenv("GATEWAY_REDIS_PASSWORD", "pa:ss@w/rd")
        m.delenv("GATEWAY_REDIS_URL", raising=False)
        assert main(["check-config", "--config", str(config), "--redis"]) in (0, 1)
        m.setenv("GATEWAY_REDIS_PASSWORD", "wrong")
        assert main(["check-config", "--config", str(config), "--redis"]) == 2
    out = capsys.readouterr()
    assert "noeviction" in out.out or "warning" in out.out
    assert "pa:ss" not in out.out + out.err


@pytest.mark.usefixtures("token_env")
def test_envoy_config_with_tls_at_the_listener(tmp_path: Path) -> None:
    write_self_signed(tmp_path / "tls.crt", tmp_path / "tls.key")
    out = tmp_path / "envoy.yaml"
    tls = ["--tls-cert", str(tmp_path / "tls.crt"), "--tls-key", str(tmp_path / "tls.key")]
    assert main(["envoy-config", "--out", str(out), "--workers", "1", *tls]) == 0
    validate_envoy_config(out)
    b = yaml.safe_load(out.read_text())
    (gateway,) = (x for x in b["static_resources"]["listeners"] if x["name"] == "gateway")
    socket = gateway["filter_chains"][0]["transport_socket"]
    assert socket["typed_config"]["@type"].endswith("DownstreamTlsContext")
    assert main(["envoy-config", "--out", str(out), "--tls-cert", "x.crt"]) == 2


def test_check_config_can_require_every_provider_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "openai-key"
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "providers:\n"
        f"  openai: {{auth: {{header: authorization, prefix: 'Bearer ', file: {key}}}}}\n"
        "  anthropic: null\n"
    )
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    for name in SIDECAR_ENV:
        monkeypatch.delenv(name, raising=False)
    assert main(["check-config", "--config", str(config)]) == 0
    assert main(["check-config", "--config", str(config), "--require-credentials"]) == 2
    err = capsys.readouterr().err
    assert f"providers.openai.auth: no credential in file {key}" in err
    # The sidecar's own secrets too, in the same list.
    assert "sidecar.caller_token: environment variable GATEWAY_SIDECAR_TOKEN is not set" in err
    assert "sidecar.state_keys: environment variable GATEWAY_STATE_KEYS is not set" in err
    key.write_text("sk-secret-value\n")
    for name, value in SIDECAR_ENV.items():
        monkeypatch.setenv(name, value)
    assert main(["check-config", "--config", str(config), "--require-credentials"]) == 0
    out = capsys.readouterr()
    assert "sk-secret" not in out.out + out.err
    for value in SIDECAR_ENV.values():
        assert value not in out.out + out.err


# -- how Envoy proves itself to the sidecar -----------------------------------------------------


def _ext_proc_services(b: dict[str, Any]) -> list[dict[str, Any]]:
    (gateway,) = (x for x in b["static_resources"]["listeners"] if x["name"] == "gateway")
    manager = gateway["filter_chains"][0]["filters"][0]["typed_config"]
    return [
        f["typed_config"]["grpc_service"]
        for f in manager["http_filters"]
        if f["typed_config"]["@type"].endswith("ext_proc.v3.ExternalProcessor")
    ]


@pytest.mark.parametrize("mode", ["observe", "synchronous"])
def test_envoy_config_sends_the_caller_token_on_every_ext_proc_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    token_file = tmp_path / "caller-token"
    token_file.write_text(f"{CALLER_TOKEN}\nan-older-token-still-accepted-0123456789\n")
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {"sidecar": {"caller_token": {"file": str(token_file)}}, "metering": {"mode": mode}}
        )
    )
    monkeypatch.delenv("GATEWAY_SIDECAR_TOKEN", raising=False)
    out = tmp_path / "envoy.yaml"
    assert main(["envoy-config", "--config", str(config), "--out", str(out), "--workers", "1"]) == 0
    validate_envoy_config(out)
    services = _ext_proc_services(yaml.safe_load(out.read_text()))
    assert len(services) == (2 if mode == "observe" else 1)
    for service in services:  # the first line: the one the sidecars accept first
        assert service["initial_metadata"] == [
            {"key": "x-gateway-sidecar-token", "value": CALLER_TOKEN}
        ]


def test_envoy_config_without_the_caller_token_fails_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GATEWAY_SIDECAR_TOKEN", raising=False)
    out = tmp_path / "envoy.yaml"
    assert main(["envoy-config", "--out", str(out)]) == 2
    assert "sidecar.caller_token: environment variable GATEWAY_SIDECAR_TOKEN is not set" in (
        capsys.readouterr().err
    )
    assert not out.exists()


@pytest.mark.usefixtures("token_env")
def test_envoy_config_with_a_client_certificate_for_a_sidecar_apart(tmp_path: Path) -> None:
    pki = write_pki(tmp_path / "pki", server_name="llm-gateway-sidecar.gateway.svc")
    out = tmp_path / "envoy.yaml"
    tls = [
        "--sidecar-tls-cert",
        pki.file("client.crt"),
        "--sidecar-tls-key",
        pki.file("client.key"),
    ]
    tls += [
        "--sidecar-tls-ca",
        pki.ca,
        "--sidecar-tls-server-name",
        "llm-gateway-sidecar.gateway.svc",
    ]
    assert main(["envoy-config", "--out", str(out), "--workers", "1", *tls]) == 0
    validate_envoy_config(out)
    b = yaml.safe_load(out.read_text())
    (cluster,) = (c for c in b["static_resources"]["clusters"] if c["name"] == EXTPROC_CLUSTER)
    context = cluster["transport_socket"]["typed_config"]
    assert context["@type"].endswith("UpstreamTlsContext")
    assert context["sni"] == "llm-gateway-sidecar.gateway.svc"
    common = context["common_tls_context"]
    assert common["alpn_protocols"] == ["h2"]
    assert common["tls_certificates"] == [
        {
            "certificate_chain": {"filename": pki.file("client.crt")},
            "private_key": {"filename": pki.file("client.key")},
        }
    ]
    assert common["validation_context"]["trusted_ca"] == {"filename": pki.ca}
    assert common["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "llm-gateway-sidecar.gateway.svc"}}
    ]
    for service in _ext_proc_services(b):  # the token travels too (inside TLS)
        assert service["initial_metadata"][0]["value"] == CALLER_TOKEN
    assert main(["envoy-config", "--out", str(out), "--sidecar-tls-cert", "x.crt"]) == 2
