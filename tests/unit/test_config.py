"""Gateway configuration: the built-in document, operator-file merging, the environment
overrides, and validation that reports every problem at once with its path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway_extproc.apis import Schema
from gateway_extproc.config.gateway import (
    GatewayConfig,
    Limits,
    load_config,
    load_document,
    merge,
    parse_config,
)
from gateway_extproc.config.providers import Credential
from gateway_extproc.errors import ConfigError
from gateway_extproc.providers.azure.settings import AzureSettings


def write_yaml(path: Path, doc: object) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def problems_of(path: Path | None, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ or {})
    return info.value.problems


# --- the built-in configuration ------------------------------------------------------------------


def test_builtin_config_loads() -> None:
    config = load_config(None, {})
    assert isinstance(config, GatewayConfig)
    assert (config.listen_host, config.listen_port, config.admin_port) == ("127.0.0.1", 10000, 9901)
    assert config.limits == Limits()  # the document and the dataclass defaults agree
    assert (config.sidecar_host, config.sidecar_port) == ("127.0.0.1", 0)
    assert (config.drain_s, config.grace_s) == (3.0, 600.0)
    assert (config.health_check_interval_s, config.health_check_unhealthy_threshold) == (1.0, 2)
    # A draining worker keeps accepting until Envoy has certainly stopped sending it streams.
    assert config.drain_s >= config.unhealthy_after_s == 3.0
    assert config.mock_unconfigured_providers is True
    assert (config.audit_stdout, config.audit_file) == (True, None)

    assert sorted(config.providers) == ["anthropic", "azure", "gemini", "openai", "vertex"]
    openai, anthropic = config.providers["openai"], config.providers["anthropic"]
    assert (openai.schema, openai.base_url, openai.cluster) == (
        Schema.OPENAI,
        "https://api.openai.com/v1",
        "provider_openai",
    )
    assert openai.auth == Credential(header="authorization", prefix="Bearer ", env="OPENAI_API_KEY")
    assert (anthropic.schema, anthropic.base_url) == (
        Schema.ANTHROPIC,
        "https://api.anthropic.com/v1",
    )
    assert anthropic.auth == Credential(header="x-api-key", env="ANTHROPIC_API_KEY")
    gemini = config.providers["gemini"]
    assert (gemini.schema, gemini.base_url) == (
        Schema.GEMINI,
        "https://generativelanguage.googleapis.com",
    )
    assert gemini.auth == Credential(header="x-goog-api-key", env="GEMINI_API_KEY")
    azure = config.providers["azure"]  # its endpoint from AZURE_OPENAI_ENDPOINT: none here
    assert (azure.schema, azure.base_url, azure.azure) == (
        Schema.OPENAI,
        "",
        AzureSettings(api="v1", endpoint_env="AZURE_OPENAI_ENDPOINT"),
    )
    assert azure.auth == Credential(header="api-key", env="AZURE_OPENAI_API_KEY")

    models = config.catalog.models()
    assert models, "the shipped catalog is loaded"
    assert {m.provider for m in models} <= set(config.providers)
    assert all(m.schema in config.providers[m.provider].speaks for m in models)
    vertex = config.providers["vertex"]  # Gemini and Claude, with google-auth credentials
    assert vertex.vertex is not None and vertex.auth is None
    assert vertex.speaks == {Schema.GEMINI, Schema.ANTHROPIC}
    assert vertex.base_url == "https://aiplatform.googleapis.com"
    assert vertex.vertex.credentials_env == "GOOGLE_APPLICATION_CREDENTIALS"


def test_builtin_config_reads_no_environment_by_default() -> None:
    # Keys in the environ change nothing in the config itself (upstreams read them later).
    environ = {
        "OPENAI_API_KEY": "sk-test",
        "ANTHROPIC_API_KEY": "sk-ant",
        "GEMINI_API_KEY": "AIza-x",
    }
    assert load_config(None, environ).providers == load_config(None, {}).providers


def test_empty_operator_file_is_the_builtin_config(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    assert load_document(empty) == load_document(None)


# --- merge -------------------------------------------------------------------------------------

MERGES: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    ("empty override", {"a": 1}, {}, {"a": 1}),
    ("new key added", {"a": 1}, {"b": 2}, {"a": 1, "b": 2}),
    ("scalar replaced", {"a": 1}, {"a": 2}, {"a": 2}),
    (
        "mappings merge",
        {"m": {"x": 1, "y": 2}},
        {"m": {"y": 3, "z": 4}},
        {"m": {"x": 1, "y": 3, "z": 4}},
    ),
    (
        "deep mappings merge",
        {"m": {"n": {"x": 1, "y": 2}}},
        {"m": {"n": {"y": 3}}},
        {"m": {"n": {"x": 1, "y": 3}}},
    ),
    ("list replaced, not appended", {"l": [1, 2]}, {"l": [3]}, {"l": [3]}),
    ("list replaced by empty list", {"l": [1, 2]}, {"l": []}, {"l": []}),
    ("mapping replaced by scalar", {"m": {"x": 1}}, {"m": 5}, {"m": 5}),
    ("scalar replaced by mapping", {"m": 5}, {"m": {"x": 1}}, {"m": {"x": 1}}),
    ("null removes a mapping", {"m": {"x": 1}, "k": 1}, {"m": None}, {"k": 1}),
    (
        "null removes a nested mapping",
        {"p": {"a": {"x": 1}, "b": {"y": 2}}},
        {"p": {"a": None}},
        {"p": {"b": {"y": 2}}},
    ),
    ("null sets a scalar to null", {"s": "v"}, {"s": None}, {"s": None}),
    ("null for an unknown key is kept", {}, {"s": None}, {"s": None}),
    (
        "auth is replaced whole",
        {"p": {"url": "u", "auth": {"header": "h", "env": "E"}}},
        {"p": {"auth": {"header": "h", "file": "/k"}}},
        {"p": {"url": "u", "auth": {"header": "h", "file": "/k"}}},
    ),
    (
        "auth null",
        {"p": {"url": "u", "auth": {"header": "h", "env": "E"}}},
        {"p": {"auth": None}},
        {"p": {"url": "u"}},
    ),
]


@pytest.mark.parametrize(
    ("base", "override", "expected"), [m[1:] for m in MERGES], ids=[m[0] for m in MERGES]
)
def test_merge(base: dict[str, Any], override: dict[str, Any], expected: dict[str, Any]) -> None:
    before = repr(base)
    assert merge(base, override) == expected
    assert repr(base) == before, "merge must not mutate its input"


def test_operator_file_merges_over_defaults(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path / "gateway.yaml",
        {
            "listener": {"port": 8080},
            "limits": {"max_request_body_bytes": 1 << 20},
            "sidecar": {"drain_s": 0.5},
            "providers": {
                "anthropic": None,
                "openai": {"base_url": "https://x.openai.azure.com/openai/v1"},
                "local": {"schema": "openai", "base_url": "http://127.0.0.1:8000/v1", "auth": None},
            },
            "audit": {"stdout": False},
        },
    )
    doc = load_document(path)
    assert doc["listener"] == {"host": "127.0.0.1", "port": 8080, "admin_port": 9901}
    assert doc["limits"]["max_request_body_bytes"] == 1 << 20
    assert doc["limits"]["stream_idle_timeout_s"] == 600  # untouched keys keep their defaults
    assert doc["sidecar"] == {
        "host": "127.0.0.1",
        "port": 0,
        "workers": 0,
        "drain_s": 0.5,
        "grace_s": 600,
        "reload_poll_s": 10,
        "health_check_interval_s": 1,
        "health_check_unhealthy_threshold": 2,
    }
    assert list(doc["providers"]) == [
        "openai",
        "gemini",
        "azure",
        "vertex",
        "local",
    ]  # no anthropic
    assert doc["providers"]["openai"] == {  # base_url replaced, auth kept from the default
        "schema": "openai",
        "base_url": "https://x.openai.azure.com/openai/v1",
        "auth": {"header": "authorization", "prefix": "Bearer ", "env": "OPENAI_API_KEY"},
    }
    assert doc["providers"]["local"]["auth"] is None
    assert doc["audit"] == {"stdout": False, "file": None}


def test_operator_file_parsed(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path / "gateway.yaml",
        {
            "listener": {"port": 8080},
            "limits": {"max_request_body_bytes": 1 << 20, "ext_proc_message_timeout_ms": 250},
            "sidecar": {"drain_s": 0.5, "grace_s": 1},
            "providers": {
                # An operator's auth replaces the built-in one whole: no env left beside file.
                "openai": {"auth": {"header": "authorization", "file": str(tmp_path / "oai")}},
                "local": {"schema": "openai", "base_url": "http://127.0.0.1:8000/v1", "auth": None},
                "vault": {
                    "schema": "anthropic",
                    "base_url": "https://llm.internal/anthropic",
                    "auth": {"header": "X-Api-Key", "file": str(tmp_path / "key")},
                },
            },
            "mock_unconfigured_providers": False,
            "audit": {"stdout": False, "file": str(tmp_path / "audit.jsonl")},
        },
    )
    config = load_config(path, {})
    assert config.listen_port == 8080
    assert config.limits.max_request_body_bytes == 1 << 20
    assert config.limits.ext_proc_message_timeout_ms == 250
    assert (config.drain_s, config.grace_s) == (0.5, 1.0)
    assert isinstance(config.grace_s, float)
    assert list(config.providers) == [
        *("openai", "anthropic", "gemini", "azure", "vertex", "local", "vault")
    ]
    assert config.providers["openai"].auth == Credential(
        header="authorization", file=str(tmp_path / "oai")
    )
    assert config.providers["local"].auth is None
    vault = config.providers["vault"]
    assert vault.schema is Schema.ANTHROPIC
    # Header names are case-insensitive on the wire; the config keeps them lower-case.
    assert vault.auth == Credential(header="x-api-key", file=str(tmp_path / "key"))
    assert config.mock_unconfigured_providers is False
    assert (config.audit_stdout, config.audit_file) == (False, str(tmp_path / "audit.jsonl"))


# --- the environment ---------------------------------------------------------------------------

ENVIRON: list[tuple[str, dict[str, str], int, str | None]] = [
    ("nothing set", {}, 10000, None),
    ("GATEWAY_PORT", {"GATEWAY_PORT": "18080"}, 18080, None),
    ("GATEWAY_PORT zero (ephemeral)", {"GATEWAY_PORT": "0"}, 0, None),
    ("GATEWAY_AUDIT_LOG", {"GATEWAY_AUDIT_LOG": "/var/log/a.jsonl"}, 10000, "/var/log/a.jsonl"),
    ("empty GATEWAY_AUDIT_LOG is unset", {"GATEWAY_AUDIT_LOG": ""}, 10000, None),
    (
        "both",
        {"GATEWAY_PORT": "1234", "GATEWAY_AUDIT_LOG": "audit.jsonl"},
        1234,
        "audit.jsonl",
    ),
]


@pytest.mark.parametrize(
    ("environ", "port", "audit_file"), [e[1:] for e in ENVIRON], ids=[e[0] for e in ENVIRON]
)
def test_environment_overrides(environ: dict[str, str], port: int, audit_file: str | None) -> None:
    config = load_config(None, environ)
    assert (config.listen_port, config.audit_file) == (port, audit_file)


def test_environment_overrides_the_operator_file(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path / "g.yaml", {"listener": {"port": 8080}, "audit": {"file": "from-file.jsonl"}}
    )
    assert load_config(path, {}).listen_port == 8080
    assert load_config(path, {}).audit_file == "from-file.jsonl"
    config = load_config(path, {"GATEWAY_PORT": "9090", "GATEWAY_AUDIT_LOG": "from-env.jsonl"})
    assert (config.listen_port, config.audit_file) == (9090, "from-env.jsonl")


def test_only_the_passed_environ_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "1")
    monkeypatch.setenv("GATEWAY_AUDIT_LOG", "/nope")
    config = load_config(None, {})
    assert (config.listen_port, config.audit_file) == (10000, None)


# --- validation: one problem at a time -----------------------------------------------------------

# (id, operator document, environ, every problem reported)
INVALID: list[tuple[str, dict[str, Any], dict[str, str], list[str]]] = [
    ("unknown top-level key", {"listner": {}}, {}, ["listner: unknown key"]),
    ("section not a mapping", {"audit": [1]}, {}, ["audit: must be a mapping"]),
    ("unknown listener key", {"listener": {"hots": "x"}}, {}, ["listener.hots: unknown key"]),
    (
        "GATEWAY_PORT not an integer",
        {},
        {"GATEWAY_PORT": "http"},
        ["GATEWAY_PORT: must be an integer (got 'http')"],
    ),
    (
        "GATEWAY_PORT out of range",
        {},
        {"GATEWAY_PORT": "65536"},
        ["listener.port: must be an integer in [0, 65535] (got 65536)"],
    ),
    (
        "port a string",
        {"listener": {"port": "80"}},
        {},
        ["listener.port: must be an integer in [0, 65535] (got '80')"],
    ),
    (
        "port a boolean",
        {"listener": {"port": True}},
        {},
        ["listener.port: must be an integer in [0, 65535] (got True)"],
    ),
    (
        "admin port negative",
        {"listener": {"admin_port": -1}},
        {},
        ["listener.admin_port: must be an integer in [0, 65535] (got -1)"],
    ),
    (
        "sidecar port removed",
        {"sidecar": {"port": None}},
        {},
        ["sidecar.port: must be an integer in [0, 65535] (got None)"],
    ),
    (
        "body limit too small",
        {"limits": {"max_request_body_bytes": 1023}},
        {},
        ["limits.max_request_body_bytes: must be an integer in [1024, 536870912] (got 1023)"],
    ),
    (
        "message timeout a float",
        {"limits": {"ext_proc_message_timeout_ms": 100.5}},
        {},
        ["limits.ext_proc_message_timeout_ms: must be an integer in [50, 3600000] (got 100.5)"],
    ),
    (
        "JSON depth beyond what the gateway can re-serialise",
        {"limits": {"max_json_depth": 255, "max_json_values": 99}},
        {},
        [
            "limits.max_json_depth: must be an integer in [2, 254] (got 255)",
            "limits.max_json_values: must be an integer in [100, 100000000] (got 99)",
        ],
    ),
    (
        "unknown limit",
        {"limits": {"max_body": 1}},
        {},
        ["limits.max_body: unknown key"],
    ),
    (
        "negative drain",
        {"sidecar": {"drain_s": -0.1}},
        {},
        ["sidecar.drain_s: must be a number >= 0 (got -0.1)"],
    ),
    (
        "health check interval of zero",
        {"sidecar": {"health_check_interval_s": 0}},
        {},
        ["sidecar.health_check_interval_s: must be in [0.01, 300] seconds (got 0.0)"],
    ),
    (
        "unhealthy threshold of zero",
        {"sidecar": {"health_check_unhealthy_threshold": 0}},
        {},
        ["sidecar.health_check_unhealthy_threshold: must be an integer in [1, 100] (got 0)"],
    ),
    (
        "empty host",
        {"listener": {"host": ""}},
        {},
        ["listener.host: must be a non-empty string (got '')"],
    ),
    (
        "mock flag not a boolean",
        {"mock_unconfigured_providers": "false"},
        {},
        ["mock_unconfigured_providers: must be true or false (got 'false')"],
    ),
    (
        "no providers left",
        {
            "providers": {
                **{"openai": None, "anthropic": None, "gemini": None},
                **{"azure": None, "vertex": None},
            }
        },
        {},
        ["providers: must name at least one provider"],
    ),
    (
        "bedrock without a region, with auth and unknown keys",
        {
            "providers": {
                "aws": {
                    "schema": "bedrock",
                    "auth": {"header": "x", "env": "K"},
                    "instance_metadata": "yes",
                },
                "openai": {"region": "us-east-1"},
            }
        },
        {},
        [
            "providers.openai.region: unknown key",  # a bedrock key, on another schema
            "providers.aws.region: must be a non-empty string (got None)",
            "providers.aws.instance_metadata: must be true or false (got 'yes')",
            "providers.aws.auth: not used by schema: bedrock (credentials come from the AWS chain)",
        ],
    ),
    (
        "bedrock region not a region",
        {"providers": {"aws": {"schema": "bedrock", "region": "Mars"}}},
        {},
        ["providers.aws.region: must be an AWS region name (got 'Mars')"],
    ),
    (
        "providers not a mapping",
        {"providers": ["openai"]},
        {},
        ["providers: must name at least one provider"],
    ),
    (
        "bad provider name",
        {"providers": {"my provider": {"schema": "openai", "base_url": "http://h/v1"}}},
        {},
        ["providers.my provider: name must be letters, digits, - and _"],
    ),
    (
        "provider not a mapping",
        {"providers": {"local": "http://h/v1"}},
        {},
        ["providers.local: must be a mapping"],
    ),
    (
        "unknown provider key",
        {"providers": {"openai": {"timeout": 3}}},
        {},
        ["providers.openai.timeout: unknown key"],
    ),
    (
        "bad schema",
        {"providers": {"openai": {"schema": "OpenAI"}}},
        {},
        [
            "providers.openai.schema: must be one of openai, anthropic, gemini, bedrock, vertex "
            "(got 'OpenAI')"
        ],
    ),
    (
        "missing schema",
        {"providers": {"local": {"base_url": "http://h/v1", "auth": None}}},
        {},
        [
            "providers.local.schema: must be one of openai, anthropic, gemini, bedrock, vertex "
            "(got None)"
        ],
    ),
    (
        "missing base_url",
        {"providers": {"local": {"schema": "openai"}}},
        {},
        ["providers.local.base_url: must be a non-empty string (got None)"],
    ),
    *[
        (
            f"base_url {url}",
            {"providers": {"openai": {"base_url": url}}},
            {},
            [f"providers.openai.base_url: must be an http(s) URL (got {url!r})"],
        )
        for url in (
            "ftp://api.openai.com/v1",
            "api.openai.com/v1",
            "https:///v1",
            "http://h:99999/v1",
            "http://h:port/v1",
            "http://[::1/v1",
        )
    ],
    *[
        (
            f"base_url {url}",
            {"providers": {"openai": {"base_url": url}}},
            {},
            ["providers.openai.base_url: must not carry a query or fragment"],
        )
        for url in ("https://api.openai.com/v1?api-version=1", "https://api.openai.com/v1#x")
    ],
    (
        "auth with env and file",
        {"providers": {"openai": {"auth": {"header": "h", "env": "K", "file": "/run/k"}}}},
        {},
        ["providers.openai.auth: set exactly one of env, file"],
    ),
    (
        "auth with neither env nor file",
        {"providers": {"openai": {"auth": {"header": "authorization"}}}},
        {},
        ["providers.openai.auth: set exactly one of env, file"],
    ),
    (
        "auth without header",
        {"providers": {"openai": {"auth": {"env": "OPENAI_API_KEY"}}}},
        {},
        ["providers.openai.auth.header: must be a non-empty string (got None)"],
    ),
    (
        "auth prefix not a string",
        {"providers": {"openai": {"auth": {"header": "h", "env": "K", "prefix": 1}}}},
        {},
        ["providers.openai.auth.prefix: must be a string"],
    ),
    (
        "unknown auth key",
        {"providers": {"openai": {"auth": {"header": "h", "env": "K", "value": "sk-x"}}}},
        {},
        ["providers.openai.auth.value: unknown key"],
    ),
    (
        "auth a string",
        {"providers": {"openai": {"auth": "sk-x"}}},
        {},
        ["providers.openai.auth: must be a mapping or null"],
    ),
    (
        "catalog files not a list",
        {"catalog": {"files": "prices.yaml"}},
        {},
        ["catalog.files: must be a list of paths"],
    ),
    (
        "unknown catalog key",
        {"catalog": {"file": []}},
        {},
        ["catalog.file: unknown key"],
    ),
    ("audit file not a path", {"audit": {"file": 1}}, {}, ["audit.file: must be a path or null"]),
    (
        "audit stdout not a boolean",
        {"audit": {"stdout": "no"}},
        {},
        ["audit.stdout: must be true or false (got 'no')"],
    ),
]


@pytest.mark.parametrize(
    ("doc", "environ", "expected"), [i[1:] for i in INVALID], ids=[i[0] for i in INVALID]
)
def test_invalid(
    tmp_path: Path, doc: dict[str, Any], environ: dict[str, str], expected: list[str]
) -> None:
    assert problems_of(write_yaml(tmp_path / "gateway.yaml", doc), environ) == expected


def test_config_error_message_lists_every_problem(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "g.yaml", {"listner": {}, "limits": {"max_body": 1}})
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(info.value) == (
        "invalid configuration:\n  listner: unknown key\n  limits.max_body: unknown key"
    )


# --- validation: everything at once -----------------------------------------------------------


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    catalog = write_yaml(
        tmp_path / "prices.yaml",
        {
            "models": {
                "orphan": {
                    "provider": "nowhere",
                    "schema": "openai",
                    "max_output_tokens": 100,
                    "input": 1,
                    "output": 2,
                },
                "crossed": {
                    "provider": "anthropic",
                    "schema": "openai",
                    "max_output_tokens": 100,
                    "input": 1,
                    "output": 2,
                },
            }
        },
    )
    doc = {
        "colour": "blue",
        "listener": {"host": "", "port": 70000, "admin_port": -1, "backlog": 5},
        "limits": {
            "max_request_body_bytes": 10,
            "ext_proc_message_timeout_ms": True,
            "stream_idle_timeout_s": 0,
            "upstream_connect_timeout_s": 601,
            "max_downstream_connections": "many",
            "burst": 1,
        },
        "sidecar": {"drain_s": -1, "grace_s": "x", "threads": 4},
        "audit": {"stdout": "yes", "file": 3, "rotate": True},
        "catalog": {"files": [str(catalog)], "watch": True},
        "mock_unconfigured_providers": 1,
        "providers": {
            "openai": {
                "schema": "vertexai",
                "base_url": "ftp://api.openai.com/v1",
                "region": "us",
                "auth": {"header": "h", "prefix": 7, "env": "K", "file": "/k", "scope": "x"},
            },
            "anthropic": {"base_url": "https://api.anthropic.com/v1?beta=1"},
            "bad name!": {"schema": "openai", "base_url": "https://x.example/v1"},
            "neither": {
                "schema": "openai",
                "base_url": "https://llm.example/v1",
                "auth": {"header": "authorization"},
            },
            "local": {"schema": "openai", "base_url": "http://h:99999/v1", "auth": None},
            "v6": {"schema": "openai", "base_url": "http://[::1/v1", "auth": "token"},
            "listed": [],
        },
    }
    path = write_yaml(tmp_path / "gateway.yaml", doc)
    assert problems_of(path, {"GATEWAY_PORT": "eighty"}) == [
        "colour: unknown key",
        "listener.backlog: unknown key",
        "limits.burst: unknown key",
        "sidecar.threads: unknown key",
        "audit.rotate: unknown key",
        "catalog.watch: unknown key",
        "GATEWAY_PORT: must be an integer (got 'eighty')",
        "listener.port: must be an integer in [0, 65535] (got 70000)",
        "limits.max_request_body_bytes: must be an integer in [1024, 536870912] (got 10)",
        "limits.ext_proc_message_timeout_ms: must be an integer in [50, 3600000] (got True)",
        "limits.stream_idle_timeout_s: must be an integer in [1, 86400] (got 0)",
        "limits.upstream_connect_timeout_s: must be an integer in [1, 600] (got 601)",
        "limits.max_downstream_connections: must be an integer in [1, 10000000] (got 'many')",
        "providers.openai.region: unknown key",
        "providers.openai.schema: must be one of openai, anthropic, gemini, bedrock, vertex "
        "(got 'vertexai')",
        "providers.openai.base_url: must be an http(s) URL (got 'ftp://api.openai.com/v1')",
        "providers.openai.auth.scope: unknown key",
        "providers.openai.auth: set exactly one of env, file",
        "providers.openai.auth.prefix: must be a string",
        "providers.anthropic.base_url: must not carry a query or fragment",
        "providers.bad name!: name must be letters, digits, - and _",
        "providers.neither.auth: set exactly one of env, file",
        "providers.local.base_url: must be an http(s) URL (got 'http://h:99999/v1')",
        "providers.v6.base_url: must be an http(s) URL (got 'http://[::1/v1')",
        "providers.v6.auth: must be a mapping or null",
        "providers.listed: must be a mapping",
        f"{catalog}: models.orphan.provider: 'nowhere' is not a configured provider "
        "(known: anthropic, azure, gemini, local, neither, openai, v6, vertex)",
        "catalog: models.crossed: schema openai but provider anthropic speaks anthropic",
        "audit.file: must be a path or null",
        "listener.host: must be a non-empty string (got '')",
        "listener.admin_port: must be an integer in [0, 65535] (got -1)",
        "sidecar.drain_s: must be a number >= 0 (got -1)",
        "sidecar.grace_s: must be a number >= 0 (got 'x')",
        "mock_unconfigured_providers: must be true or false (got 1)",
        "audit.stdout: must be true or false (got 'yes')",
    ]


# --- the catalog through the config ----------------------------------------------------------


def test_operator_catalog_file_adds_models(tmp_path: Path) -> None:
    catalog = write_yaml(
        tmp_path / "prices.yaml",
        {
            "models": {
                "llama-local": {
                    "provider": "local",
                    "schema": "openai",
                    "max_output_tokens": 4096,
                    "free": True,
                }
            }
        },
    )
    path = write_yaml(
        tmp_path / "gateway.yaml",
        {
            "providers": {
                "local": {"schema": "openai", "base_url": "http://127.0.0.1:8000/v1", "auth": None}
            },
            "catalog": {"files": [str(catalog)]},
        },
    )
    entry = load_config(path, {}).catalog.lookup("llama-local")
    assert entry is not None
    assert (entry.provider, entry.free) == ("local", True)


@pytest.mark.parametrize(
    ("provider", "tier", "problem"),
    [
        ("openai", "priority", None),
        ("openai", "flex", None),
        ("openai", "default", None),
        ("openai", "fast", "providers.openai.default_service_tier: must be one of default, "
         "priority, flex, scale, for schema: openai only (got 'fast')"),
        ("anthropic", "priority", "providers.anthropic.default_service_tier: must be one of "
         "default, priority, flex, scale, for schema: openai only (got 'priority')"),
    ],
)  # fmt: skip
def test_a_providers_default_service_tier(
    tmp_path: Path, provider: str, tier: str, problem: str | None
) -> None:
    path = write_yaml(
        tmp_path / "gateway.yaml", {"providers": {provider: {"default_service_tier": tier}}}
    )
    if problem is not None:
        assert problems_of(path) == [problem]
        return
    assert load_config(path, {}).providers[provider].default_service_tier == tier


def test_catalog_model_for_a_provider_that_is_not_configured(tmp_path: Path) -> None:
    catalog = write_yaml(
        tmp_path / "prices.yaml",
        {
            "models": {
                "llama-local": {
                    "provider": "local",
                    "schema": "openai",
                    "max_output_tokens": 4096,
                    "free": True,
                }
            }
        },
    )
    path = write_yaml(tmp_path / "gateway.yaml", {"catalog": {"files": [str(catalog)]}})
    assert problems_of(path) == [
        f"{catalog}: models.llama-local.provider: 'local' is not a configured provider "
        "(known: anthropic, azure, gemini, openai, vertex)"
    ]


def test_catalog_model_schema_differs_from_its_provider(tmp_path: Path) -> None:
    catalog = write_yaml(
        tmp_path / "prices.yaml",
        {
            "models": {
                "claude-via-openai": {
                    "provider": "openai",
                    "schema": "anthropic",
                    "max_output_tokens": 4096,
                    "input": 1,
                    "output": 5,
                }
            }
        },
    )
    path = write_yaml(tmp_path / "gateway.yaml", {"catalog": {"files": [str(catalog)]}})
    assert problems_of(path) == [
        "catalog: models.claude-via-openai: schema anthropic but provider openai speaks openai"
    ]


def test_catalog_file_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    path = write_yaml(
        tmp_path / "gateway.yaml", {"catalog": {"files": [str(missing)]}, "colour": "blue"}
    )
    assert problems_of(path) == [
        "colour: unknown key",
        f"{missing}: cannot read: No such file or directory",
    ]


def test_catalog_file_problems_are_config_problems(tmp_path: Path) -> None:
    catalog = tmp_path / "prices.yaml"
    catalog.write_text("models:\n  gpt-4o:\n    input: -1\n")
    path = write_yaml(tmp_path / "gateway.yaml", {"catalog": {"files": [str(catalog)]}})
    assert problems_of(path) == [
        f"{catalog}: models.gpt-4o.input: must be a number >= 0 with at most 6 decimal places "
        "(got -1)"
    ]


# --- the operator file itself -----------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["- a\n- b\n", "just a string\n", "42\n"], ids=["list", "string", "number"]
)
def test_operator_file_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    assert problems_of(path) == [f"{path}: must be a mapping at the top level"]


def test_operator_file_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("listener: {port: 80\n")
    problems = problems_of(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: ")
    assert "line 2" in problems[0]  # the YAML error says where


def test_operator_file_missing(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    problems = problems_of(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: ")
    assert "No such file" in problems[0]


def test_bedrock_provider_defaults_its_endpoint_from_its_region(tmp_path: Path) -> None:
    doc = {"providers": {"aws": {"schema": "bedrock", "region": "eu-west-3"}}}
    config = load_config(write_yaml(tmp_path / "gateway.yaml", doc), {})
    aws = config.providers["aws"]
    assert (aws.schema, aws.region, aws.auth, aws.instance_metadata) == (
        Schema.BEDROCK,
        "eu-west-3",
        None,
        False,
    )
    assert aws.base_url == "https://bedrock-runtime.eu-west-3.amazonaws.com"
    doc["providers"]["aws"] |= {"base_url": "https://vpce-1.bedrock-runtime.example/"}
    doc["providers"]["aws"] |= {"instance_metadata": True}
    config = load_config(write_yaml(tmp_path / "gateway.yaml", doc), {})
    assert config.providers["aws"].base_url == "https://vpce-1.bedrock-runtime.example/"
    assert config.providers["aws"].instance_metadata is True


def test_removing_a_builtin_provider_drops_its_shipped_models() -> None:
    doc = merge(
        load_document(None),
        {"providers": {"anthropic": None, "gemini": None, "azure": None, "vertex": None}},
    )
    config = parse_config(doc, {})
    assert set(config.providers) == {"openai"}
    assert config.catalog.models()
    assert all(e.provider == "openai" for e in config.catalog.models())


def test_auth_sources_must_be_non_empty_strings() -> None:
    doc = merge(
        load_document(None), {"providers": {"openai": {"auth": {"header": "x", "env": ""}}}}
    )
    with pytest.raises(ConfigError) as exc:
        parse_config(doc, {})
    assert "providers.openai.auth.env: must be a non-empty string (got '')" in exc.value.problems
