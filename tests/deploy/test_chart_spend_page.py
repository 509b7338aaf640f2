"""The chart's spend page, `gatewayctl login` and reconciliation values (issues 27 and 28),
rendered without a cluster (helm-python-sdk; the `spend-page` CI case is also linted and
validated against the Kubernetes schemas with every other case in test_chart_render.py): what
lands in the gateway configuration - accepted by the gateway's own config loader, as the
check-config init container runs it - the secrets given to worker 0 alone, the page served
through the admin JSON listener only (the Envoy bootstrap the envoy-config init container
generates from that very configuration), and bad values refused at render naming the value."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from gateway_extproc.config.gateway import load_config
from tests.deploy.pod import CHART, notes, one, render

VALUES: dict[str, Any] = yaml.safe_load((CHART / "ci" / "spend-page-values.yaml").read_text())


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return render(VALUES)


def gateway_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(
        one(docs, "ConfigMap", "gw-llm-gateway")["data"]["gateway.yaml"]
    )
    return config


def pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def as_in_the_pod(config: dict[str, Any], tmp: Path) -> Path:
    """The rendered configuration with the files the pod mounts (keys, tokens) made here."""
    config = copy.deepcopy(config)
    for name, provider in config["providers"].items():
        key = tmp / f"{name}-key"
        key.write_text("sk-test")
        provider["auth"]["file"] = str(key)
    for name in ("caller_token", "state_keys"):
        secret = tmp / name
        secret.write_text("s" * 43 + "\n")
        config["sidecar"][name] = {"file": str(secret)}
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_values_become_the_spend_page_login_and_reconcile_sections(
    docs: list[dict[str, Any]], tmp_path: Path
) -> None:
    config = gateway_config(docs)
    assert config["spend_page"] == {
        "enabled": True,
        "port": 10092,
        "public_url": "https://spend.example.com",
        "session_ttl_s": 3600,
        "oidc": {
            "issuer": "corp",
            "client_id": "llm-gateway-page",
            "client_secret_env": "SPEND_PAGE_CLIENT_SECRET",
            "scopes": ["openid", "email", "profile"],
        },
    }
    assert config["login"] == {
        "issuer": "corp",
        "client_id": "llm-gateway-cli",
        "scopes": ["openid", "email", "profile", "offline_access"],
        "token": "id_token",
    }
    assert config["reconcile"] == {
        "schedule": "03:15",
        "rerun_days": 2,
        "providers": {
            "openai": {"admin_key_env": "OPENAI_ADMIN_KEY", "projects": ["proj_gateway"]},
            "anthropic": {
                "admin_key_env": "ANTHROPIC_ADMIN_KEY",
                "workspaces": ["wrkspc_gateway", "default"],
            },
        },
        "alert": {
            "unexplained_pct": "0.5",
            "outside_usd_per_day": "0",
            "webhook": "https://hooks.example.com/reconcile",
        },
    }
    # What check-config does in the init container: the gateway accepts all of it.
    loaded = load_config(as_in_the_pod(config, tmp_path), {})
    assert loaded.spend_page.oidc is not None and loaded.spend_page.secure_cookies
    assert {p.provider for p in loaded.reconcile.providers} == {"openai", "anthropic"}
    assert loaded.reconcile.alert.outside_micros == 0
    assert loaded.login is not None and loaded.login.token == "id_token"


def test_secrets_reach_worker_0_alone_by_reference(docs: list[dict[str, Any]]) -> None:
    spec = pod(docs)
    envoy, worker0, worker1 = spec["containers"]
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in worker0["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs == {
        "SPEND_PAGE_CLIENT_SECRET": {"name": "spend-page-oidc", "key": "client-secret"},
        "OPENAI_ADMIN_KEY": {"name": "openai-admin", "key": "admin-key"},
        "ANTHROPIC_ADMIN_KEY": {"name": "anthropic-admin", "key": "admin-key"},
    }
    others = [envoy, worker1, *spec["initContainers"]]
    for container in others:
        names = {e["name"] for e in container.get("env", [])}
        assert not names & set(refs), container["name"]
    text = json.dumps(docs)
    assert "sk-" not in text  # no key in any manifest, only Secret names
    # Worker 0 serves the page on loopback, beside the admin API; worker 1 serves neither.
    assert worker0["args"][-4:] == [
        "--admin-address",
        "0.0.0.0:10090",
        "--spend-page-address",
        "127.0.0.1:10092",
    ]
    assert "--spend-page-address" not in worker1["args"]
    assert all(p["containerPort"] != 10092 for c in spec["containers"] for p in c["ports"])


def test_the_page_is_reached_on_the_admin_json_port_only(
    docs: list[dict[str, Any]], tmp_path: Path
) -> None:
    """The Envoy bootstrap the envoy-config init container generates from the rendered
    configuration: /ui/ is routed on the admin JSON listener alone - the port the admin
    Service's `admin-json` targets - to worker 0's loopback page port; the public Service's
    listener has no page."""
    out = tmp_path / "envoy.yaml"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway_extproc.cli",
            "envoy-config",
            "--config",
            str(as_in_the_pod(gateway_config(docs), tmp_path)),
            "--out",
            str(out),
            "--workers",
            "2",
            "--sidecar-host",
            "127.0.0.1",
            "--sidecar-port",
            "50051",
            "--ops-port",
            "9902",
            "--ca-file",
            "/etc/ssl/certs/ca-certificates.crt",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    bootstrap = yaml.safe_load(out.read_text())
    resources = bootstrap["static_resources"]
    with_page = [
        listener["address"]["socket_address"]["port_value"]
        for listener in resources["listeners"]
        if '"prefix": "/ui"' in json.dumps(listener)
    ]
    assert with_page == [10091]
    admin = one(docs, "Service", "-admin")
    assert [(p["port"], p["targetPort"]) for p in admin["spec"]["ports"]] == [
        (10090, "admin-api"),
        (10091, "admin-json"),
    ]
    envoy = pod(docs)["containers"][0]
    assert {"name": "admin-json", "containerPort": 10091, "protocol": "TCP"} in envoy["ports"]
    public = one(docs, "Service", "gw-llm-gateway")
    assert [p["targetPort"] for p in public["spec"]["ports"]] == ["http"]  # port 10000
    (page,) = [c for c in resources["clusters"] if c["name"] == "gateway_spend_page"]
    (endpoint,) = page["load_assignment"]["endpoints"][0]["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    assert (address["address"], address["port_value"]) == ("127.0.0.1", 10092)


def test_notes_say_where_the_page_is() -> None:
    text = notes(VALUES)
    assert "https://spend.example.com/ui/" in text
    assert "kubectl -n llm port-forward svc/gw-llm-gateway-admin 10091" in text
    assert "http://127.0.0.1:10091/ui/ with Authorization: Bearer (sign-in with corp" in text
    assert "finance, platform-admins" in text and "and the reconciliation" in text
    assert "spend page" not in notes({"adminApi": {"enabled": True}, **ADMIN})


def test_none_of_it_by_default() -> None:
    docs = render({})
    config = gateway_config(docs)
    assert not {"spend_page", "login", "reconcile"} & set(config)
    (worker,) = pod(docs)["containers"][1:]
    assert "--spend-page-address" not in worker["args"]
    # with the admin API but no page: no page address either
    values = {"adminApi": {"enabled": True, "httpPort": 10091}}
    docs = render(values | {"redis": {"external": {"url": "redis://redis:6379/0"}}})
    assert "--spend-page-address" not in pod(docs)["containers"][1]["args"]


def test_a_public_client_has_no_secret_and_thresholds_left_null_are_off() -> None:
    values = copy.deepcopy(VALUES)
    del values["spendPage"]["oidc"]["clientSecret"]
    values["reconcile"]["alert"] = {"unexplainedUsdPerDay": 5}
    docs = render(values)
    config = gateway_config(docs)
    assert "client_secret_env" not in config["spend_page"]["oidc"]
    assert config["reconcile"]["alert"] == {"unexplained_usd_per_day": "5"}
    worker0 = pod(docs)["containers"][1]
    assert "SPEND_PAGE_CLIENT_SECRET" not in {e["name"] for e in worker0["env"]}


ADMIN = {
    "redis": {"external": {"url": "redis://redis:6379/0"}},
    "adminApi": {"enabled": True, "httpPort": 10091},
}
KEY = {"existingSecret": "openai-admin", "key": "admin-key"}
BAD: list[tuple[dict[str, Any], str]] = [
    ({"spendPage": {"enabled": True}}, "spendPage.enabled: needs adminApi.enabled and"),
    (
        {**ADMIN, "adminApi": {"enabled": True}, "spendPage": {"enabled": True}},
        "spendPage.enabled: needs adminApi.enabled and adminApi.httpPort",
    ),
    (
        {**ADMIN, "spendPage": {"enabled": True, "port": 10091}},
        "spendPage.port: 10091 is already used by adminApi.httpPort",
    ),
    (
        {**ADMIN, "spendPage": {"enabled": True, "port": 9464}},
        "spendPage.port: 9464 is already used by metrics.port + 0",
    ),
    (
        {**ADMIN, "spendPage": {"enabled": True, "oidc": {"issuer": "corp", "clientId": "p"}}},
        "spendPage.publicUrl: required with spendPage.oidc.issuer",
    ),
    (
        {
            **ADMIN,
            "spendPage": {
                "enabled": True,
                "publicUrl": "https://spend.example.com",
                "oidc": {"issuer": "corp"},
            },
        },
        "spendPage.oidc.clientId: required",
    ),
    ({"spendPage": {"publicUrl": "https://spend.example.com/ui"}}, "/spendPage/publicUrl"),
    ({"spendPage": {"sessionTtlSeconds": 10}}, "/spendPage/sessionTtlSeconds"),
    ({"spendPage": {"oidc": {"scopes": ["email"]}}}, "/spendPage/oidc/scopes"),
    (
        {"spendPage": {"oidc": {"clientSecret": {"value": "hunter2"}}}},
        "additional properties 'value' not allowed",
    ),
    ({"config": {"spend_page": {"enabled": True}}}, "config.spend_page: set by the chart"),
    ({"config": {"login": {"issuer": "corp"}}}, "config.login: set by the chart from login"),
    ({"config": {"reconcile": {}}}, "config.reconcile: set by the chart from reconcile"),
    ({"login": {"issuer": "corp"}}, "login.clientId: required with login.issuer"),
    ({"login": {"token": "refresh_token"}}, "/login/token"),
    ({"login": {"discoveryUrl": "http://idp/x"}}, "/login/discoveryUrl"),
    (
        {"reconcile": {"providers": {"openai": {"adminKey": KEY, "projects": ["p"]}}}},
        "reconcile.providers: needs adminApi.enabled",
    ),
    (
        {
            **ADMIN,
            "config": {"spend": {"timezone": "Europe/Berlin"}},
            "reconcile": {"providers": {"openai": {"adminKey": KEY, "projects": ["p"]}}},
        },
        "reconcile.providers: the providers bill by UTC day",
    ),
    ({"reconcile": {"providers": {"openai": {"projects": ["p"]}}}}, "adminKey"),
    ({"reconcile": {"providers": {"openai": {"adminKey": KEY}}}}, "projects"),
    (
        {"reconcile": {"providers": {"gemini": {"adminKey": KEY, "projects": ["p"]}}}},
        "additional properties 'gemini' not allowed",
    ),
    (
        {"reconcile": {"providers": {"openai": {"adminKey": {"value": "sk-hunter2"}}}}},
        "/reconcile/providers/openai/adminKey",
    ),
    ({"reconcile": {"schedule": "25:00"}}, "/reconcile/schedule"),
    ({"reconcile": {"rerunDays": 40}}, "/reconcile/rerunDays"),
    ({"reconcile": {"alert": {"unexplainedPct": -1}}}, "/reconcile/alert/unexplainedPct"),
    ({"reconcile": {"alert": {"outsideUsdPerDay": "0.0000001"}}}, "/reconcile/alert"),
    ({"reconcile": {"alert": {"webhook": "hooks.example.com"}}}, "/reconcile/alert/webhook"),
]


@pytest.mark.parametrize(("values", "names"), BAD, ids=[b[1] for b in BAD])
def test_bad_values_fail_at_render_naming_the_value(values: dict[str, Any], names: str) -> None:
    with pytest.raises(helm.HelmError) as caught:
        render(values)
    assert names in str(caught.value)
    assert "hunter2" not in str(caught.value)
