"""Which client headers reach a provider: the per-provider allow-list, billing headers refused,
Envoy's own headers untouched, and `providers.NAME.forward_headers` validated with paths."""

from __future__ import annotations

from typing import Any

import pytest

from gateway_extproc.apis import Schema
from gateway_extproc.config.gateway import load_document, merge, parse_config
from gateway_extproc.errors import ConfigError, HeaderNotAllowed
from gateway_extproc.providers.forwarding import BILLING_HEADERS, forward_policy

OPENAI = forward_policy(Schema.OPENAI, (), mocked=False)
ANTHROPIC = forward_policy(Schema.ANTHROPIC, (), mocked=False)

# What the official SDKs and a traced service send, plus what Envoy adds.
SDK_HEADERS = [
    ":method",
    ":path",
    ":authority",
    ":scheme",
    "host",
    "content-length",
    "content-type",
    "accept",
    "user-agent",
    "x-stainless-lang",
    "x-stainless-retry-count",
    "traceparent",
    "tracestate",
    "x-request-id",
    "x-forwarded-proto",
    "x-forwarded-for",
    "x-envoy-expected-rq-timeout-ms",
]


def test_what_the_sdks_send_is_forwarded_unchanged() -> None:
    assert OPENAI.removals(SDK_HEADERS, provider="openai") == []
    assert ANTHROPIC.removals([*SDK_HEADERS, "anthropic-version"], provider="anthropic") == []


def test_anything_else_is_dropped() -> None:
    names = ["content-type", "x-internal-debug", "cookie", "openai-beta", "x-mock-status"]
    assert OPENAI.removals(names, provider="openai") == [
        "x-internal-debug",
        "cookie",
        "openai-beta",
        "x-mock-status",  # steers only the built-in mock
    ]
    # anthropic-version is an Anthropic header: an OpenAI-schema provider does not get it
    assert OPENAI.removals(["anthropic-version"], provider="vllm") == ["anthropic-version"]


def test_mock_controls_reach_only_the_mock() -> None:
    mocked = forward_policy(Schema.OPENAI, (), mocked=True)
    assert mocked.removals(["x-mock-status", "x-other"], provider="openai") == ["x-other"]


def test_headers_the_gateway_sets_itself_are_not_removed() -> None:
    names = ["authorization", "x-gateway-cluster", "x-secret"]
    keep = {"authorization": "Bearer sk-provider", "x-gateway-cluster": "provider_openai"}
    assert OPENAI.removals(names, provider="openai", keep=keep) == ["x-secret"]


@pytest.mark.parametrize("header", sorted(BILLING_HEADERS))
def test_a_billing_header_is_refused_with_a_400_naming_it(header: str) -> None:
    with pytest.raises(HeaderNotAllowed) as info:
        OPENAI.removals(["content-type", header], provider="openai")
    err = info.value
    assert (err.status, err.code) == (400, "header_not_allowed")
    assert err.message == (
        f"header {header} is not forwarded to provider openai: it {BILLING_HEADERS[header]}. "
        "Send the request without it, or ask the operator to allow it "
        "(providers.openai.forward_headers)"
    )


def test_configured_headers_and_prefixes_are_forwarded() -> None:
    policy = forward_policy(Schema.ANTHROPIC, ("anthropic-beta", "x-team-*"), mocked=False)
    names = ["anthropic-beta", "x-team-id", "x-teams", "anthropic-version"]
    assert policy.removals(names, provider="anthropic") == ["x-teams"]


def config(providers: dict[str, Any]) -> dict[str, Any]:
    return merge(load_document(None), {"providers": providers})


def test_forward_headers_config() -> None:
    doc = config({"anthropic": {"forward_headers": ["Anthropic-Beta", "x-team-*", "x-team-*"]}})
    parsed = parse_config(doc, {})
    assert parsed.providers["anthropic"].forward_headers == ("anthropic-beta", "x-team-*")
    assert parsed.providers["openai"].forward_headers == ()


def test_forward_headers_problems_each_with_its_path() -> None:
    doc = config(
        {
            "openai": {
                "forward_headers": ["ok", "bad header", "*", 7, "Authorization", "x-gateway-*"]
            },
            "anthropic": {"forward_headers": "anthropic-beta"},
        }
    )
    with pytest.raises(ConfigError) as info:
        parse_config(doc, {})
    assert info.value.problems == [
        "providers.openai.forward_headers[1]: must be a header name, or a prefix ending in * "
        "(got 'bad header')",
        "providers.openai.forward_headers[2]: must be a header name, or a prefix ending in * "
        "(got '*')",
        "providers.openai.forward_headers[3]: must be a header name, or a prefix ending in * "
        "(got 7)",
        "providers.openai.forward_headers[4]: authorization is never forwarded (credentials, "
        "internal headers)",
        "providers.openai.forward_headers[5]: x-gateway-* is never forwarded (credentials, "
        "internal headers)",
        "providers.anthropic.forward_headers: must be a list of header names "
        "(got 'anthropic-beta')",
    ]


def test_the_fault_header_reaches_only_the_mock() -> None:
    """x-mock-fault (fallback tests) makes the mock fail: a real provider never sees it."""
    mocked = forward_policy(Schema.ANTHROPIC, (), mocked=True)
    real = forward_policy(Schema.ANTHROPIC, (), mocked=False)
    assert mocked.removals(["x-mock-fault"], provider="anthropic") == []
    assert real.removals(["x-mock-fault"], provider="anthropic") == ["x-mock-fault"]
