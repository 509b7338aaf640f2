"""`admin_api:` and `spend:`: defaults, and every problem reported with its path."""

from __future__ import annotations

import pytest

from gateway_extproc.admin.settings import AdminApiConfig, parse_admin_api, parse_spend
from gateway_extproc.config.gateway import load_document, merge, parse_config
from gateway_extproc.errors import ConfigError
from gateway_extproc.spend.rollup import RollupSettings


def test_defaults_come_from_the_built_in_config() -> None:
    config = parse_config(load_document(None), {})
    assert config.admin_api == AdminApiConfig()
    assert not config.admin_api.enabled and config.admin_api.host == "127.0.0.1"
    assert config.spend == RollupSettings("UTC", 400)


def test_every_problem_is_reported_with_its_path() -> None:
    doc = merge(
        load_document(None),
        {
            "admin_api": {
                "enabled": "yes",
                "port": 70000,
                "read_groups": "finance",
                "colour": 1,
            },
            "spend": {"timezone": "Mars/Olympus", "retention_days": 0},
        },
    )
    with pytest.raises(ConfigError) as info:
        parse_config(doc, {})
    text = str(info.value)
    for expected in (
        "admin_api.colour: unknown key",
        "admin_api.enabled: must be true or false",
        "admin_api.port: must be an integer in [0, 65535]",
        "admin_api.read_groups: must be a list of group names",
        "spend.timezone: must be an IANA time zone",
        "spend.retention_days: must be an integer in [1, 3660]",
    ):
        assert expected in text


def test_an_enabled_api_needs_a_write_group() -> None:
    problems: list[str] = []
    parsed = parse_admin_api({"enabled": True, "write_groups": []}, problems)
    assert problems == ["admin_api.write_groups: must name at least one group"]
    assert parsed.enabled
    assert parse_spend({"timezone": "Europe/Berlin"}, problems).timezone == "Europe/Berlin"


def identity_doc() -> dict[str, object]:
    return {
        "issuers": {
            "corp": {"issuer": "a", "audiences": ["llm-gateway"], "jwks_url": "https://a/c"},
            "ci": {
                "issuer": "c",
                "audiences": ["llm-gateway"],
                "hs_secret": {"env": "CI"},
                "asserts": {"kinds": ["service"]},
            },
        },
        "static_tokens": {"ops": {"sha256": "0" * 64}, "bot": {"sha256": "1" * 64}},
    }


def load(admin: dict[str, object], identity: object = None, **env: str) -> AdminApiConfig:
    doc = merge(load_document(None), {"identity": identity or identity_doc(), "admin_api": admin})
    return parse_config(doc, {"CI": "c" * 32, **env}).admin_api


def problems_of(admin: dict[str, object], identity: object = None, **env: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(admin, identity, **env)
    return info.value.problems


def test_admin_callers_default_to_an_audience_of_their_own() -> None:
    admin = load({"enabled": True})
    assert (admin.audiences, admin.issuers, admin.static_tokens) == (
        ("llm-gateway-admin",),
        None,
        frozenset(),
    )
    named = load({"enabled": True, "issuers": ["ci"], "static_tokens": ["ops"]})
    assert (named.issuers, named.static_tokens) == (("ci",), frozenset({"ops"}))
    # As docs/admin.md's block writes the defaults.
    spelled = {"issuers": None, "static_tokens": [], "tls": None, "socket": None}
    assert load({"enabled": True, **spelled}) == admin


@pytest.mark.parametrize(
    ("admin", "identity", "problem"),
    [
        pytest.param(
            {"issuers": ["corp", "nope"]},
            None,
            "admin_api.issuers[1]: no issuer named 'nope' (configured: corp, ci)",
            id="unknown_issuer",
        ),
        pytest.param(
            {"static_tokens": ["ops", "ghost"]},
            None,
            "admin_api.static_tokens: no static token named 'ghost' in identity.static_tokens "
            "or identity.static_tokens_file",
            id="unknown_static_token",
        ),
        pytest.param(
            {"audiences": ["llm-gateway"]},
            None,
            "admin_api.audiences: llm-gateway is also a data-plane audience of issuer corp: "
            "every token it issues for the gateway would be an admin credential; give the "
            "admin API an audience of its own",
            id="a_data_plane_audience",
        ),
        pytest.param(
            {"audiences": []},
            None,
            "admin_api.audiences: must name at least one audience",
            id="no_audience",
        ),
        pytest.param(
            {"issuers": "corp"},
            None,
            "admin_api.issuers: must be a list of names (got 'corp')",
            id="not_a_list",
        ),
        pytest.param(
            {"enabled": True, "issuers": []},
            None,
            "admin_api: no credential can call the admin API: name the issuers whose tokens "
            "may (admin_api.issuers; shared-secret issuers only by name) or admin static "
            "tokens (admin_api.static_tokens)",
            id="nobody_can_call_it",
        ),
        pytest.param(
            {"enabled": True},
            {"issuers": {"ci": identity_doc()["issuers"]["ci"]}},  # type: ignore[index]
            "admin_api: no credential can call the admin API: name the issuers whose tokens "
            "may (admin_api.issuers; shared-secret issuers only by name) or admin static "
            "tokens (admin_api.static_tokens)",
            id="a_shared_secret_issuer_only_by_name",
        ),
    ],
)
def test_admin_caller_problems(admin: dict[str, object], identity: object, problem: str) -> None:
    assert problem in problems_of(admin, identity)


def test_the_dev_issuer_is_an_admin_issuer_with_its_own_audience() -> None:
    dev = {"dev_issuer": True}
    allowed = {"GATEWAY_ALLOW_DEV_ISSUER": "1"}
    assert load({"enabled": True, "issuers": ["dev"]}, dev, **allowed).issuers == ("dev",)
    assert load({"enabled": True}, dev, **allowed).enabled
    assert (
        "admin_api.audiences: llm-gateway is also a data-plane audience of issuer dev: every "
        "token it issues for the gateway would be an admin credential; give the admin API an "
        "audience of its own"
    ) in problems_of({"audiences": ["llm-gateway"]}, dev, **allowed)
