"""The chart's safe defaults (issue 21, item 7; docs/security.md "Chart defaults"): the bundled
Redis requires a generated password that the gateway sends, the admin API stays on loopback, the
ops and metrics ports are reachable only from the namespaces the values name and never through
the clients' Service, images can be pinned by digest, and Envoy's ops listener still answers when
clients have taken every connection. Rendered offline, and run on the real binaries."""

from __future__ import annotations

import base64
import copy
import os
import re
import socket
import urllib.request
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import redis

from gateway_extproc.stack import find_binary
from tests.deploy.pod import CHART, Pod, notes, one, render
from tests.deploy.test_chart_render import CASES, MONITORING, pod_spec
from tests.deploy.test_chart_runs import Processes, fake_secrets, http_status, wait_until
from tests.redis_servers import free_port

DIGEST = "sha256:" + "ab" * 32
BUNDLED = CASES["bundled-redis"]
SECRET = "gw-llm-gateway-redis-auth"


def containers_with_sidecar_env(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every container that gets the sidecar's environment (llm-gateway.sidecarEnv)."""
    spec = pod_spec(docs)
    tests = [c for d in docs if d["kind"] == "Pod" for c in d["spec"]["containers"]]
    every = spec["initContainers"] + spec["containers"] + tests
    return [c for c in every if any(e["name"] == "PYTHONUNBUFFERED" for e in c.get("env", []))]


def redis_password(docs: list[dict[str, Any]]) -> str:
    secret = one(docs, "Secret", "-redis-auth")
    return base64.b64decode(secret["data"]["redis-password"]).decode()


# --- the bundled Redis requires a password --------------------------------------------------


def test_the_bundled_redis_requires_a_generated_password() -> None:
    docs = render(BUNDLED)
    password = redis_password(docs)
    assert re.fullmatch(r"[A-Za-z0-9]{32}", password)
    assert redis_password(render(BUNDLED)) != password  # random (kept on upgrade via lookup)
    redis_container = one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    script = redis_container["command"]
    assert script[:2] == ["/bin/sh", "-c"] and '--requirepass "$REDIS_PASSWORD"' in script[2]
    assert "--protected-mode" not in redis_container["args"]
    (env,) = redis_container["env"]
    ref = {"name": SECRET, "key": "redis-password"}
    assert env == {"name": "REDIS_PASSWORD", "valueFrom": {"secretKeyRef": ref}}
    # Every gateway container (check-config, envoy-config, the workers, the helm test) sends it.
    users = containers_with_sidecar_env(docs)
    assert {c["name"] for c in users} >= {"check-config", "envoy-config", "sidecar", "check-redis"}
    for c in users:
        (var,) = [e for e in c["env"] if e["name"] == "GATEWAY_REDIS_PASSWORD"]
        assert var["valueFrom"]["secretKeyRef"] == ref, c["name"]
    # The value lives in the Secret only.
    assert sum(password in str(d) for d in docs) == 0
    assert "Secret gw-llm-gateway-redis-auth" in notes(BUNDLED)


def test_the_generated_password_is_read_back_on_upgrade() -> None:
    """Offline renders cannot exercise `lookup` (it returns nothing without a cluster): this
    keeps the read-back in the template, which a cluster install exercises."""
    text = (CHART / "templates" / "redis-auth-secret.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $name' in text
    assert "index $existing.data $key" in text


def test_an_operator_secret_replaces_the_generated_one() -> None:
    values = copy.deepcopy(BUNDLED)
    values["redis"]["bundled"]["auth"] = {"existingSecret": "team-redis", "passwordKey": "pw"}
    docs = render(values)
    secrets = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    assert secrets == {"gw-llm-gateway-sidecar-auth"}  # no Redis password generated
    redis_container = one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    ref = {"name": "team-redis", "key": "pw"}
    assert redis_container["env"][0]["valueFrom"]["secretKeyRef"] == ref
    for c in containers_with_sidecar_env(docs):
        (var,) = [e for e in c["env"] if e["name"] == "GATEWAY_REDIS_PASSWORD"]
        assert var["valueFrom"]["secretKeyRef"] == ref


def test_the_bundled_redis_as_rendered_refuses_clients_without_the_password(
    tmp_path: Path,
) -> None:
    """The StatefulSet's own command on this machine's redis-server (plus a free port): a client
    without the password gets NOAUTH; the `helm test` check, with the environment the chart
    gives the gateway, gets in and finds the Redis safe for money."""
    docs = render(BUNDLED)
    password = redis_password(docs)
    container = one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    args = [data.as_posix() if a == "/data" else a for a in container["args"]] + [
        "--port",
        str(port),
    ]
    env = {
        "PATH": f"{Path(find_binary('redis-server')).parent}{os.pathsep}{os.environ['PATH']}",
        "REDIS_PASSWORD": password,
    }
    procs = Processes(tmp_path / "redis.log")
    try:
        procs.start([*container["command"], *args], env)
        anonymous = redis.Redis(port=port)
        wait_until(lambda: _answers(port), "redis-server not up", 20, tmp_path / "redis.log")
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        secrets = fake_secrets(docs, tmp_path) | {SECRET: {"redis-password": password}}
        pod = Pod(docs, tmp_path / "pod", secrets)
        config = Path(pod.path("/etc/llm-gateway/gateway.yaml"))
        config.write_text(  # the Service name, resolved as the cluster's DNS would
            config.read_text().replace("gw-llm-gateway-redis:6379", f"127.0.0.1:{port}")
        )
        check = pod.run("check-redis")
        assert check.returncode == 0, check.stdout + check.stderr
        assert password not in check.stdout + check.stderr
        # The running process shows no password: Redis replaces its command line.
        pid = procs.procs[0].pid
        assert password not in Path(f"/proc/{pid}/cmdline").read_text()
    finally:
        procs.stop()


def _refused(sock: socket.socket) -> bool:
    """Whether Envoy closes this new connection at once (refused at the connection cap)."""
    sock.settimeout(1)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# --- the ops and metrics ports --------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_clients_service_never_carries_ops_or_metrics(case: str) -> None:
    docs = render(CASES[case])
    public = one(docs, "Service", "gw-llm-gateway")
    assert [p["targetPort"] for p in public["spec"]["ports"]] == ["http"]


def test_ops_and_metrics_only_from_the_monitoring_namespace_by_default() -> None:
    policy = one(render(CASES["company"]), "NetworkPolicy")["spec"]
    listener, scrape = policy["ingress"]
    assert "from" not in listener  # clients: networkPolicy.ingressFrom ([] = anyone)
    assert [p["port"] for p in scrape["ports"]] == [9902, 9464]
    assert scrape["from"] == [MONITORING]
    assert "namespace(s) monitoring may scrape" in notes(CASES["company"])


def test_named_namespaces_and_peers_or_nobody() -> None:
    peers = [{"podSelector": {"matchLabels": {"app": "prometheus"}}}]
    values = {"networkPolicy": {"metricsNamespaces": ["obs", "sre"], "metricsFrom": peers}}
    (_, scrape) = one(render(values), "NetworkPolicy")["spec"]["ingress"]
    selector = scrape["from"][0]["namespaceSelector"]["matchExpressions"][0]
    assert selector["values"] == ["obs", "sre"] and scrape["from"][1:] == peers
    # Neither: no rule at all (a rule without `from` would admit everyone).
    nobody = {"networkPolicy": {"metricsNamespaces": [], "metricsFrom": []}}
    (listener,) = one(render(nobody), "NetworkPolicy")["spec"]["ingress"]
    assert [p["port"] for p in listener["ports"]] == [10000]
    assert "No pod may scrape them" in notes(nobody)


# --- images pinned by digest ------------------------------------------------------------------


def test_every_image_can_be_pinned_by_digest() -> None:
    values = copy.deepcopy(BUNDLED)
    values["image"] = {"repository": "registry.example.com/gw", "tag": "1.2.3", "digest": DIGEST}
    values["envoy"] = {"image": {"repository": "envoyproxy/envoy", "digest": DIGEST}}
    values["redis"]["bundled"]["image"] = {"repository": "redis", "digest": DIGEST}
    docs = render(values)
    images = {
        c["image"]
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet", "Pod")
        for spec in [d["spec"].get("template", d)["spec"]]
        for c in spec.get("initContainers", []) + spec["containers"]
    }
    assert images == {
        f"registry.example.com/gw@{DIGEST}",
        f"envoyproxy/envoy@{DIGEST}",
        f"redis@{DIGEST}",
    }
    default = {c["image"] for c in pod_spec(render({}))["containers"]}
    assert default == {"envoyproxy/envoy:v1.40.0", "ghcr.io/owner/llm-spend-gateway:0.1.0"}


BAD = [
    ({"image": {"digest": "sha256:abc"}}, "/image/digest"),
    ({"envoy": {"image": {"digest": "latest"}}}, "/envoy/image/digest"),
    ({"redis": {"bundled": {"auth": {"password": "hunter2"}}}}, "additional properties"),
    ({"adminApi": {"host": "10.0.0.1"}}, "/adminApi/host"),
    ({"networkPolicy": {"metricsNamespaces": ["Not A Namespace"]}}, "/networkPolicy/metrics"),
    ({"config": {"limits": {"first_byte_timeout_s": 0}}}, "/config/limits/first_byte_timeout_s"),
    ({"config": {"limits": {"headers_with_underscores": "x"}}}, "headers_with_underscores"),
]


@pytest.mark.parametrize(("values", "names"), BAD, ids=[b[1] for b in BAD])
def test_bad_hardening_values_fail_at_render(values: dict[str, Any], names: str) -> None:
    with pytest.raises(helm.HelmError) as caught:
        render(values)
    assert names in str(caught.value)
    assert "hunter2" not in str(caught.value)


# --- Envoy's ops listener at the connection cap -------------------------------------------------


def test_ops_answers_when_clients_hold_every_connection(tmp_path: Path) -> None:
    """Clients hold all of `max_downstream_connections` (silent, before the first-byte timeout
    closes them): Envoy, started as rendered, still answers the kubelet's probe and Prometheus
    on the ops port, and those take no client slot. Before, clients could take every connection
    of the cap: readiness and liveness failed and the kubelet restarted a healthy pod."""
    values = copy.deepcopy(CASES["company"])
    ports = {"port": free_port(), "opsPort": free_port(), "adminPort": free_port()}
    values["envoy"] = {**ports, "concurrency": 1}
    values["sidecar"] = {"port": free_port()}
    values["metrics"] = {"port": free_port()}
    # Silent connections are closed after first_byte_timeout_s: long enough to look.
    values["config"]["limits"] = {"max_downstream_connections": 4, "first_byte_timeout_s": 60}
    docs = render(values)
    pod = Pod(docs, tmp_path / "pod", fake_secrets(docs, tmp_path))
    for init in ("check-config", "envoy-config", "envoy-validate"):
        result = pod.run(init)
        assert result.returncode == 0, (init, result.stdout, result.stderr)
    log = tmp_path / "envoy.log"
    procs = Processes(log)
    held: list[socket.socket] = []
    try:
        procs.start(pod.argv("envoy"), pod.env("envoy"))
        ops = f"http://127.0.0.1:{ports['opsPort']}"
        wait_until(lambda: http_status(ops + "/ready") == 503, "no ops listener", 30, log)
        # Take every connection clients may have, with silent ones, until Envoy refuses one.
        while len(held) <= 4:
            sock = socket.create_connection(("127.0.0.1", ports["port"]))
            if _refused(sock):
                sock.close()
                break
            held.append(sock)
        assert len(held) == 4
        for _ in range(5):  # the kubelet's probes and Prometheus, again and again
            assert http_status(ops + "/ready") == 503  # answered: no sidecar runs here
            with urllib.request.urlopen(ops + "/stats/prometheus", timeout=5) as r:
                assert b"envoy_listener_downstream_cx_overflow" in r.read()
        # They took no client slot (Envoy 1.40 gave one away per connection to a listener
        # exempt from the global cap: the reason the clients' listener has a cap of its own).
        probe = socket.create_connection(("127.0.0.1", ports["port"]))
        assert _refused(probe), "a probe freed a client slot"
        probe.close()
    finally:
        for s in held:
            s.close()
        procs.stop()
