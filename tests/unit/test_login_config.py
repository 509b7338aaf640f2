"""The `login:` section (config/login.py) and the public document Envoy serves from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway_extproc.cli import main
from gateway_extproc.config.gateway import load_config
from gateway_extproc.config.login import discovery_document
from gateway_extproc.envoy.filters import ext_proc_filters
from gateway_extproc.envoy.wellknown import well_known_route
from gateway_extproc.errors import ConfigError

IDENTITY = {
    "issuers": {
        "corp": {
            "issuer": "https://login.example.com/realms/corp/",
            "audiences": ["llm-gateway"],
            "jwks_url": "https://login.example.com/realms/corp/certs",
        },
        "ci": {
            "issuer": "https://ci.example.com",
            "audiences": ["llm-gateway"],
            "hs_secret": {"env": "CI_SECRET"},
        },
    }
}
ENV = {"CI_SECRET": "x" * 40}


def write(tmp_path: Path, login: Any, **more: Any) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"identity": IDENTITY, "login": login, **more}))
    return path


def problems(tmp_path: Path, login: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, login), ENV)
    return info.value.problems


def test_defaults(tmp_path: Path) -> None:
    login = load_config(write(tmp_path, {"issuer": "corp", "client_id": "cli"}), ENV).login
    assert login is not None
    assert login.issuer == "https://login.example.com/realms/corp/"
    assert login.discovery_url == (
        "https://login.example.com/realms/corp/.well-known/openid-configuration"
    )
    assert login.scopes == ("openid", "email", "profile", "offline_access")
    assert (login.token, login.audience, login.client_secret_env) == ("access_token", None, None)


def test_no_section_no_login(tmp_path: Path) -> None:
    assert load_config(None, {}).login is None
    assert "login" not in discovery_document(None)


def test_every_problem_at_once(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        {
            "issuer": "okta",
            "client_secret_env": "NOT A NAME",
            "discovery_url": "http://idp.example.com/.well-known/openid-configuration",
            "scopes": ["openid", "has space"],
            "token": "refresh_token",
            "extra": 1,
        },
    )
    text = "\n".join(found)
    assert "login.extra: unknown key" in text
    assert "login.issuer: 'okta' is not one of identity.issuers (ci, corp)" in text
    assert "login.client_id: required" in text
    assert "login.client_secret_env: must be an environment variable name" in text
    assert "login.discovery_url: must use https" in text
    assert "login.scopes[1]: not a valid entry" in text
    assert "login.token: must be one of access_token, id_token" in text


def test_a_shared_secret_issuer_is_not_an_idp(tmp_path: Path) -> None:
    (found,) = problems(tmp_path, {"issuer": "ci", "client_id": "cli"})
    assert found.startswith("login.issuer: 'ci' is a shared-secret (hs_secret) issuer")


def test_id_token_needs_the_client_id_among_the_audiences(tmp_path: Path) -> None:
    login = {"issuer": "corp", "client_id": "cli", "token": "id_token"}
    (found,) = problems(tmp_path, login)
    assert found.startswith("login.token: id_token: an id token's audience is the client_id")
    assert "add 'cli' there" in found
    (found,) = problems(tmp_path, {**login, "scopes": ["email"], "client_id": "llm-gateway"})
    assert found == "login.scopes: must include openid when login.token is id_token"
    ok = load_config(write(tmp_path, {**login, "client_id": "llm-gateway"}), ENV).login
    assert ok is not None and ok.token == "id_token"


def test_check_config_names_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, {"issuer": "corp", "client_id": "cli", "token": "id_token"})
    assert main(["check-config", "--config", str(path)]) == 2
    assert "login.token: id_token" in capsys.readouterr().err


def test_the_document_is_public_and_secret_free(tmp_path: Path) -> None:
    login = {
        "issuer": "corp",
        "client_id": "cli",
        "client_secret_env": "CORP_CLI_SECRET",
        "audience": "llm-gateway",
        "scopes": ["openid", "offline_access"],
    }
    config = load_config(write(tmp_path, login), {**ENV, "CORP_CLI_SECRET": "s3cret-value"})
    doc = discovery_document(config.login)
    assert doc == {
        "version": 1,
        "openai": {"base_url": "/v1"},
        "anthropic": {"base_url": "/"},
        "login": {
            "issuer": "https://login.example.com/realms/corp/",
            "discovery_url": "https://login.example.com/realms/corp/.well-known/openid-configuration",
            "client_id": "cli",
            "scopes": ["openid", "offline_access"],
            "token": "access_token",
            "audience": "llm-gateway",
            "client_secret_env": "CORP_CLI_SECRET",  # the variable's name, never its value
        },
    }
    route = well_known_route(config)
    assert "s3cret-value" not in json.dumps(route)
    assert json.loads(route["direct_response"]["body"]["inline_string"]) == doc


@pytest.mark.parametrize("mode", ["observe", "synchronous"])
def test_the_route_never_reaches_the_sidecar(tmp_path: Path, mode: str) -> None:
    path = write(tmp_path, {"issuer": "corp", "client_id": "cli"}, metering={"mode": mode})
    config = load_config(path, ENV)
    route = well_known_route(config)
    assert route["match"] == {"path": "/.well-known/llm-gateway"}
    per_filter = route["typed_per_filter_config"]
    assert set(per_filter) == {f["name"] for f in ext_proc_filters(config)}
    assert all(c["disabled"] is True for c in per_filter.values())
