"""Resolving configured providers into upstreams: credentials, the mock fallback, addresses."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway_extproc.apis import Schema
from gateway_extproc.config.gateway import GatewayConfig, load_config, load_document, parse_config
from gateway_extproc.config.upstreams import Upstream, needs_mock, resolve_upstreams
from gateway_extproc.errors import ConfigError
from gateway_extproc.providers.forwarding import forward_policy
from gateway_extproc.providers.vertex.tokens import MOCK_TOKEN

MOCK = "http://127.0.0.1:9/v1"
OPENAI_KEY = "sk-test-0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-test-0123456789"
GEMINI_KEY = "AIza-test-0123456789"
AZURE_KEY = "azure-test-0123456789"
AZURE_ENDPOINT = "https://contoso.openai.azure.com"
GOOGLE_CREDENTIALS = "/var/run/secrets/vertex/sa.json"  # a path: resolving never reads it


def config_with(tmp_path: Path, doc: dict[str, Any]) -> GatewayConfig:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_config(path, {})


@pytest.fixture(scope="module")
def default_config() -> GatewayConfig:
    return load_config(None, {})


def test_credentials_from_the_environment(default_config: GatewayConfig) -> None:
    environ = {
        "OPENAI_API_KEY": OPENAI_KEY,
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "GEMINI_API_KEY": GEMINI_KEY,
        "AZURE_OPENAI_API_KEY": AZURE_KEY,
        "AZURE_OPENAI_ENDPOINT": AZURE_ENDPOINT,
        "GOOGLE_APPLICATION_CREDENTIALS": GOOGLE_CREDENTIALS,
    }
    ups = resolve_upstreams(default_config, environ, MOCK)
    vertex = ups["vertex"]  # its token comes from google-auth at run time (runtime/context.py)
    assert (vertex.host, vertex.tls, vertex.mocked, vertex.auth_value) == (
        "aiplatform.googleapis.com",
        True,
        False,
        None,
    )
    assert vertex.project is None and vertex.base_path == "/" and vertex.tokens is None
    assert ups["openai"] == Upstream(
        provider="openai",
        schema=Schema.OPENAI,
        cluster="provider_openai",
        host="api.openai.com",
        port=443,
        tls=True,
        base_path="/v1",
        auth_header="authorization",
        auth_value=f"Bearer {OPENAI_KEY}",
        mocked=False,
    )
    assert ups["anthropic"] == Upstream(
        provider="anthropic",
        schema=Schema.ANTHROPIC,
        cluster="provider_anthropic",
        host="api.anthropic.com",
        port=443,
        tls=True,
        base_path="/v1",
        auth_header="x-api-key",
        auth_value=ANTHROPIC_KEY,
        mocked=False,
        forward=forward_policy(Schema.ANTHROPIC, (), mocked=False),
    )
    assert not needs_mock(default_config, environ)


def test_credential_from_a_file(tmp_path: Path) -> None:
    key = tmp_path / "openai.key"
    key.write_text(f"  {OPENAI_KEY}\n")  # surrounding whitespace (a trailing newline) is dropped
    config = config_with(
        tmp_path,
        {
            "providers": {
                "openai": {
                    "auth": {"header": "Authorization", "prefix": "Bearer ", "file": str(key)}
                }
            }
        },
    )
    ups = resolve_upstreams(
        config, {"ANTHROPIC_API_KEY": ANTHROPIC_KEY, "GEMINI_API_KEY": GEMINI_KEY}, None
    )
    assert (ups["openai"].auth_header, ups["openai"].auth_value) == (
        "authorization",
        f"Bearer {OPENAI_KEY}",
    )
    assert not ups["openai"].mocked


# (id, what the file holds or None for no file) - each leaves the provider without a credential
MISSING_FILES: list[tuple[str, str | None]] = [
    ("no such file", None),
    ("empty file", ""),
    ("whitespace only", " \n\t\n"),
]


@pytest.mark.parametrize(
    "content", [m[1] for m in MISSING_FILES], ids=[m[0] for m in MISSING_FILES]
)
def test_credential_file_without_a_key(tmp_path: Path, content: str | None) -> None:
    key = tmp_path / "openai.key"
    if content is not None:
        key.write_text(content)
    config = config_with(
        tmp_path,
        {
            "providers": {"openai": {"auth": {"header": "authorization", "file": str(key)}}},
            "mock_unconfigured_providers": False,
        },
    )
    with pytest.raises(ConfigError) as info:
        resolve_upstreams(
            config, {"ANTHROPIC_API_KEY": ANTHROPIC_KEY, "GEMINI_API_KEY": GEMINI_KEY}, MOCK
        )
    assert info.value.problems == [f"providers.openai.auth: no credential in file {key}"]


def test_missing_credentials_are_mocked(default_config: GatewayConfig) -> None:
    assert default_config.mock_unconfigured_providers
    ups = resolve_upstreams(default_config, {"OPENAI_API_KEY": OPENAI_KEY}, MOCK)
    assert not ups["openai"].mocked
    assert ups["openai"].host == "api.openai.com"
    assert ups["anthropic"] == Upstream(
        provider="anthropic",
        schema=Schema.ANTHROPIC,
        cluster="provider_anthropic",
        host="127.0.0.1",
        port=9,
        tls=False,
        base_path="/v1",
        auth_header=None,  # the mock gets no credential header from the gateway
        auth_value=None,
        mocked=True,
        forward=forward_policy(Schema.ANTHROPIC, (), mocked=True),  # x-mock-* controls too
    )


def test_empty_env_var_is_no_credential(default_config: GatewayConfig) -> None:
    ups = resolve_upstreams(default_config, {"OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": ""}, MOCK)
    assert ups["openai"].mocked and ups["anthropic"].mocked


# (id, mock_unconfigured_providers, mock URL) - each leaves a missing key without the mock
NO_MOCK: list[tuple[str, bool, str | None]] = [
    ("mock disabled", False, MOCK),
    ("no mock running", True, None),
    ("mock URL empty", True, ""),
    ("neither", False, None),
]
NAMED = {"providers": {"openai": {}, "anthropic": {"base_url": "https://anthropic.example/v1"}}}


@pytest.mark.parametrize(
    ("allow", "mock_url"), [n[1:] for n in NO_MOCK], ids=[n[0] for n in NO_MOCK]
)
def test_a_named_provider_without_its_key_is_an_error(
    tmp_path: Path, allow: bool, mock_url: str | None
) -> None:
    # The operator's file names openai and anthropic (even with nothing to change): their keys
    # are required. gemini, not named, is left out without a word here.
    config = config_with(tmp_path, {**NAMED, "mock_unconfigured_providers": allow})
    with pytest.raises(ConfigError) as info:
        resolve_upstreams(config, {}, mock_url)
    # Every named provider is reported, each naming where its key was looked for.
    assert info.value.problems == [
        "providers.openai.auth: no credential in environment variable OPENAI_API_KEY",
        "providers.anthropic.auth: no credential in environment variable ANTHROPIC_API_KEY",
    ]
    # One present key leaves only the other's problem.
    with pytest.raises(ConfigError) as info:
        resolve_upstreams(config, {"ANTHROPIC_API_KEY": ANTHROPIC_KEY}, mock_url)
    assert info.value.problems == [
        "providers.openai.auth: no credential in environment variable OPENAI_API_KEY"
    ]
    ups = resolve_upstreams(
        config, {"OPENAI_API_KEY": OPENAI_KEY, "ANTHROPIC_API_KEY": ANTHROPIC_KEY}, mock_url
    )
    assert set(ups) == {"openai", "anthropic"}


@pytest.mark.parametrize(
    ("allow", "mock_url"), [n[1:] for n in NO_MOCK], ids=[n[0] for n in NO_MOCK]
)
def test_an_unnamed_builtin_provider_without_its_key_is_left_out(
    tmp_path: Path, allow: bool, mock_url: str | None
) -> None:
    # A production config written before gemini was built in: it names no provider and sets
    # two keys. The upgrade starts; gemini is left out (no upstream, no cluster).
    config = config_with(tmp_path, {"mock_unconfigured_providers": allow})
    assert config.optional_providers == {"openai", "anthropic", "gemini", "azure", "vertex"}
    environ = {"OPENAI_API_KEY": OPENAI_KEY, "ANTHROPIC_API_KEY": ANTHROPIC_KEY}
    ups = resolve_upstreams(config, environ, mock_url)
    assert set(ups) == {"openai", "anthropic"}
    assert not any(up.mocked for up in ups.values())
    # The same holds for every built-in provider: only gemini's key set, the others are left out.
    assert set(resolve_upstreams(config, {"GEMINI_API_KEY": GEMINI_KEY}, mock_url)) == {"gemini"}
    # No provider left at all is an error, naming every key that would do.
    with pytest.raises(ConfigError) as info:
        resolve_upstreams(config, {}, mock_url)
    assert info.value.problems == [
        "providers: no provider has its credential: set the key of one of openai (environment "
        "variable OPENAI_API_KEY), anthropic (environment variable ANTHROPIC_API_KEY), gemini "
        "(environment variable GEMINI_API_KEY), azure (environment variable AZURE_OPENAI_API_KEY), "
        "vertex (environment variable GOOGLE_APPLICATION_CREDENTIALS)"
    ]


def test_the_mock_still_serves_every_builtin_provider_without_a_key(tmp_path: Path) -> None:
    # make run: no file, no keys - every built-in provider, gemini too, goes to the mock.
    ups = resolve_upstreams(load_config(None, {}), {}, MOCK)
    assert set(ups) == {"openai", "anthropic", "gemini", "azure", "vertex"}
    assert all(up.mocked for up in ups.values())
    # A mocked Vertex is called with the fixed token the mock verifies, in the mock's project.
    vertex = ups["vertex"]
    assert (vertex.auth_header, vertex.auth_value) == ("authorization", f"Bearer {MOCK_TOKEN}")
    assert (vertex.project, vertex.base_path, vertex.tokens) == ("mock-project", "/", None)
    # A named provider without its key goes to the mock as well when mocking is on.
    config = config_with(tmp_path, NAMED)
    assert config.optional_providers == {"gemini", "azure", "vertex"}
    assert all(up.mocked for up in resolve_upstreams(config, {}, MOCK).values())


def test_optional_providers_come_from_the_operator_file_only(tmp_path: Path) -> None:
    # A provider the file names, even as a bare `{}`, is not optional; one it removes is gone;
    # a document parsed without the file's names (parse_config alone) requires every key.
    config = config_with(tmp_path, {"providers": {"gemini": {}, "anthropic": None}})
    assert set(config.providers) == {"openai", "gemini", "azure", "vertex"}
    assert config.optional_providers == {"openai", "azure", "vertex"}
    assert load_config(None, {}).optional_providers == {
        *("openai", "anthropic", "gemini", "azure", "vertex")
    }
    assert parse_config(load_document(None), {}).optional_providers == frozenset()


def test_assume_credentials_renders_the_production_shape(default_config: GatewayConfig) -> None:
    ups = resolve_upstreams(default_config, {}, MOCK, assume_credentials=True)
    for name, host in (
        ("openai", "api.openai.com"),
        ("anthropic", "api.anthropic.com"),
        ("gemini", "generativelanguage.googleapis.com"),
    ):
        up = ups[name]
        assert (up.host, up.port, up.tls, up.mocked) == (host, 443, True, False)
        assert up.auth_header is not None
        assert up.auth_value is not None and "<credential>" in up.auth_value
    # Even when mocking is off and no mock runs: nothing is read, nothing is missing.
    config = dataclasses.replace(default_config, mock_unconfigured_providers=False)
    # azure has no endpoint to render without AZURE_OPENAI_ENDPOINT: left out like a key.
    assert set(resolve_upstreams(config, {}, None, assume_credentials=True)) == {
        "openai",
        "anthropic",
        "gemini",
        "vertex",
    }


def test_self_hosted_provider_needs_no_credential(tmp_path: Path) -> None:
    config = config_with(
        tmp_path,
        {
            "providers": {
                "vllm": {"schema": "openai", "base_url": "http://10.0.0.5:8000/v1", "auth": None}
            },
            "mock_unconfigured_providers": False,
        },
    )
    environ = {
        "OPENAI_API_KEY": OPENAI_KEY,
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "GEMINI_API_KEY": GEMINI_KEY,
        "AZURE_OPENAI_API_KEY": AZURE_KEY,
        "AZURE_OPENAI_ENDPOINT": AZURE_ENDPOINT,
        "GOOGLE_APPLICATION_CREDENTIALS": GOOGLE_CREDENTIALS,
    }
    up = resolve_upstreams(config, environ, None)["vllm"]
    assert up == Upstream(
        provider="vllm",
        schema=Schema.OPENAI,
        cluster="provider_vllm",
        host="10.0.0.5",
        port=8000,
        tls=False,
        base_path="/v1",
        auth_header=None,
        auth_value=None,
        mocked=False,
    )
    assert not needs_mock(config, environ)
    # With the mock allowed and running, a provider without auth is still never mocked.
    mocked_ok = dataclasses.replace(config, mock_unconfigured_providers=True)
    assert not resolve_upstreams(mocked_ok, {}, MOCK)["vllm"].mocked


# (base_url, host, port, tls, base_path)
ADDRESSES: list[tuple[str, str, int, bool, str]] = [
    ("https://api.openai.com/v1", "api.openai.com", 443, True, "/v1"),
    ("http://10.0.0.5:8000/v1", "10.0.0.5", 8000, False, "/v1"),
    ("https://x.openai.azure.com/openai/v1", "x.openai.azure.com", 443, True, "/openai/v1"),
    ("https://llm.internal:8443/v1/", "llm.internal", 8443, True, "/v1/"),
    ("http://ollama:11434", "ollama", 11434, False, "/"),
    ("http://localhost/", "localhost", 80, False, "/"),
    ("HTTPS://API.Example.COM/V1", "api.example.com", 443, True, "/V1"),
    ("http://[::1]:8000/v1", "::1", 8000, False, "/v1"),
]


@pytest.mark.parametrize(("base_url", "host", "port", "tls", "base_path"), ADDRESSES)
def test_address_parsing(
    tmp_path: Path, base_url: str, host: str, port: int, tls: bool, base_path: str
) -> None:
    config = config_with(
        tmp_path,
        {"providers": {"openai": {"base_url": base_url}}},
    )
    up = resolve_upstreams(config, {"OPENAI_API_KEY": OPENAI_KEY}, MOCK)["openai"]
    assert (up.host, up.port, up.tls, up.base_path) == (host, port, tls, base_path)


def test_mock_address_replaces_the_provider_address(default_config: GatewayConfig) -> None:
    up = resolve_upstreams(default_config, {}, "https://mock.test:8443/api/v1")["openai"]
    assert (up.host, up.port, up.tls, up.base_path, up.mocked) == (
        "mock.test",
        8443,
        True,
        "/api/v1",
        True,
    )


def _upstream(base_path: str) -> Upstream:
    return Upstream(
        provider="p",
        schema=Schema.OPENAI,
        cluster="provider_p",
        host="h",
        port=443,
        tls=True,
        base_path=base_path,
        auth_header=None,
    )


# (base path, client path, upstream path)
PATHS: list[tuple[str, str, str]] = [
    ("/v1", "/v1/chat/completions", "/v1/chat/completions"),
    ("/v1", "/v1/chat/completions?x=1", "/v1/chat/completions?x=1"),
    ("/openai/v1", "/v1/chat/completions?x=1", "/openai/v1/chat/completions?x=1"),
    ("/openai/v1/", "/v1/responses", "/openai/v1/responses"),
    ("/", "/v1/messages", "/messages"),
    ("/api", "/v1/embeddings?api-version=2024-10-21", "/api/embeddings?api-version=2024-10-21"),
    ("/v1", "/v1/messages/", "/v1/messages/"),
]


@pytest.mark.parametrize(("base_path", "client_path", "expected"), PATHS)
def test_upstream_path(base_path: str, client_path: str, expected: str) -> None:
    assert _upstream(base_path).upstream_path(client_path) == expected


def test_secret_never_in_repr(default_config: GatewayConfig) -> None:
    environ = {
        "OPENAI_API_KEY": OPENAI_KEY,
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "GEMINI_API_KEY": GEMINI_KEY,
        "AZURE_OPENAI_API_KEY": AZURE_KEY,
        "AZURE_OPENAI_ENDPOINT": AZURE_ENDPOINT,
        "GOOGLE_APPLICATION_CREDENTIALS": GOOGLE_CREDENTIALS,
    }
    ups = resolve_upstreams(default_config, environ, MOCK)
    ups.pop("vertex")  # no static secret: its tokens live in a TokenSource (test_vertex.py)
    for up in ups.values():
        assert up.auth_value is not None
        for text in (repr(up), str(up), repr(ups)):
            assert OPENAI_KEY not in text
            assert ANTHROPIC_KEY not in text
            assert "auth_value" not in text
        assert up.auth_header is not None and up.auth_header in repr(up)


NEEDS_MOCK: list[tuple[str, dict[str, str], bool, bool]] = [
    ("no keys", {}, True, True),
    ("one key", {"OPENAI_API_KEY": OPENAI_KEY}, True, True),
    (
        "both keys",
        {
            "OPENAI_API_KEY": OPENAI_KEY,
            "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
            "GEMINI_API_KEY": GEMINI_KEY,
            "AZURE_OPENAI_API_KEY": AZURE_KEY,
            "AZURE_OPENAI_ENDPOINT": AZURE_ENDPOINT,
            "GOOGLE_APPLICATION_CREDENTIALS": GOOGLE_CREDENTIALS,
        },
        True,
        False,
    ),
    ("empty key", {"OPENAI_API_KEY": OPENAI_KEY, "ANTHROPIC_API_KEY": ""}, True, True),
    ("no keys, mock disabled", {}, False, False),
]


@pytest.mark.parametrize(
    ("environ", "allow", "expected"), [n[1:] for n in NEEDS_MOCK], ids=[n[0] for n in NEEDS_MOCK]
)
def test_needs_mock(
    default_config: GatewayConfig, environ: dict[str, str], allow: bool, expected: bool
) -> None:
    config = dataclasses.replace(default_config, mock_unconfigured_providers=allow)
    assert needs_mock(config, environ) is expected
