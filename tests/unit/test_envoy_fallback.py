"""The generated Envoy config of fallback chains (docs/fallback.md): one cluster per chain with a
priority per target, TLS per endpoint, the per-attempt ext_proc before upstream_codec, the
chained route's retry policy; models without a chain unchanged. Envoy validates every shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway_extproc import handoff
from gateway_extproc.config.gateway import GatewayConfig, load_config
from gateway_extproc.config.upstreams import resolve_upstreams
from gateway_extproc.envoy.bootstrap import build, render
from gateway_extproc.envoy.clusters import STRIP_ATTEMPT_COUNT
from gateway_extproc.envoy.filters import (
    EXTPROC_CLUSTER,
    KEY_ATTRIBUTE,
    TARGET_ATTRIBUTE,
    UPSTREAM_FILTER,
)
from gateway_extproc.request.route import CLUSTER_HEADER
from gateway_extproc.sidecar_auth.caller import METADATA_KEY
from gateway_extproc.stack import validate_envoy_config
from tests.sidecar_secrets import ACCESS, CALLER_TOKEN
from tests.unit.test_envoy_config import CA_FILE, MOCK, PORTS, hcm, routes

CHAINS = {
    "gpt-4o": ["openai/gpt-4o", "openai/gpt-4o-mini", "anthropic/claude-sonnet-4-5"],
    "claude-haiku-4-5": ["anthropic/claude-haiku-4-5", "anthropic/claude-sonnet-4-5"],
}


def _config(tmp_path: Path, mode: str = "observe") -> GatewayConfig:
    path = tmp_path / "gateway.yaml"
    doc = {
        "metering": {"mode": mode},
        "fallback": {"max_attempts": 3, "first_byte_timeout_s": 2, "chains": CHAINS},
    }
    path.write_text(yaml.safe_dump(doc))
    return load_config(path, {})


def _build(config: GatewayConfig, *, mocked: bool) -> dict[str, Any]:
    upstreams = (
        resolve_upstreams(config, {}, MOCK)
        if mocked
        else resolve_upstreams(config, {}, None, assume_credentials=True)
    )
    return build(config, PORTS, upstreams.values(), CA_FILE, ACCESS)


def _cluster(b: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = (c for c in b["static_resources"]["clusters"] if c["name"] == name)
    return found


def _http_filters(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    (options,) = cluster["typed_extension_protocol_options"].values()
    return list(options.get("http_filters", ()))


def test_one_cluster_per_chain_a_priority_per_target(tmp_path: Path) -> None:
    b = _build(_config(tmp_path), mocked=False)
    cluster = _cluster(b, "chain_gpt-4o")
    assert cluster["type"] == "STRICT_DNS"  # hostnames, several endpoints
    levels = cluster["load_assignment"]["endpoints"]
    assert [level["priority"] for level in levels] == [0, 1, 2]
    named = []
    for level in levels:
        (host,) = level["lb_endpoints"]
        meta = host["metadata"]["filter_metadata"]
        named.append(meta[handoff.TARGET_NAMESPACE][handoff.TARGET_KEY])
        sni = meta["envoy.transport_socket_match"]["sni"]
        assert host["endpoint"]["address"]["socket_address"]["address"] == sni
        assert set(meta[handoff.TARGET_NAMESPACE]) == {"target"}  # names only, no secret
    assert named == CHAINS["gpt-4o"]
    # TLS follows the endpoint: one match per provider host, each with its SNI and SAN check.
    matches = {m["match"]["sni"]: m for m in cluster["transport_socket_matches"]}
    assert set(matches) == {"api.openai.com", "api.anthropic.com"}
    for host, match in matches.items():
        tls = match["transport_socket"]["typed_config"]
        assert tls["sni"] == host
        assert tls["common_tls_context"]["alpn_protocols"] == ["http/1.1"]  # what it speaks
        sans = tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"]
        assert sans == [{"san_type": "DNS", "matcher": {"exact": host}}]
    assert "transport_socket" not in cluster
    assert cluster["circuit_breakers"]["thresholds"][0]["max_retries"] >= 1_000_000
    assert "<credential>" not in render(b).split("chain_gpt-4o", 1)[1].split("name: provider_")[0]


def test_the_per_attempt_filter(tmp_path: Path) -> None:
    b = _build(_config(tmp_path), mocked=False)
    filters = _http_filters(_cluster(b, "chain_gpt-4o"))
    assert [f["name"] for f in filters] == [
        UPSTREAM_FILTER,
        STRIP_ATTEMPT_COUNT,  # after the records are numbered, before the provider
        "envoy.filters.http.upstream_codec",
    ]
    ext = filters[0]["typed_config"]
    assert ext["grpc_service"]["envoy_grpc"]["cluster_name"] == EXTPROC_CLUSTER
    # Told apart from the request filter's streams by metadata only Envoy sets; the caller
    # token too (the sidecar refuses a stream without it).
    assert ext["grpc_service"]["initial_metadata"] == [
        {"key": handoff.STREAM_KIND_KEY, "value": handoff.UPSTREAM_STREAM},
        {"key": METADATA_KEY, "value": CALLER_TOKEN},
    ]
    assert ext["request_attributes"] == [TARGET_ATTRIBUTE, KEY_ATTRIBUTE]
    assert ext["mutation_rules"] == {"allow_all_routing": True}
    assert ext["metadata_options"] == {
        "forwarding_namespaces": {"untyped": [handoff.NAMESPACE]},
        "receiving_namespaces": {"untyped": [handoff.ATTEMPTS_NAMESPACE]},
    }
    mode = ext["processing_mode"]
    assert (mode["request_body_mode"], mode["response_header_mode"]) == ("BUFFERED", "SEND")
    # Models without a chain keep their provider cluster, with no per-attempt filter: only
    # Envoy's removal of the attempt count the virtual host adds for the chains' records.
    assert hcm(b)["route_config"]["virtual_hosts"][0]["include_request_attempt_count"] is True
    for c in b["static_resources"]["clusters"]:
        if c["name"].startswith("provider_"):
            strip, codec = _http_filters(c)
            assert strip["name"] == STRIP_ATTEMPT_COUNT
            assert strip["typed_config"]["mutations"] == {
                "request_mutations": [{"remove": "x-envoy-attempt-count"}]
            }
            assert codec["name"] == "envoy.filters.http.upstream_codec"


@pytest.mark.parametrize("mode", ["observe", "synchronous"])
def test_chained_routes_retry_by_priority(tmp_path: Path, mode: str) -> None:
    b = _build(_config(tmp_path, mode), mocked=True)
    chained = [
        r
        for r in routes(b)
        if any(
            h["name"] == CLUSTER_HEADER
            and "string_match" in h
            and ".t" not in h["string_match"]["exact"]  # not a suffix variant (with_suffixes)
            for h in r["match"]["headers"]
        )
    ]
    assert len(chained) == (2 if mode == "synchronous" else 4)
    by_cluster = {}
    for r in chained:
        (header,) = r["match"]["headers"]
        by_cluster.setdefault(header["string_match"]["exact"], []).append(r)
    assert set(by_cluster) == {"chain_gpt-4o", "chain_claude-haiku-4-5"}
    policy = by_cluster["chain_gpt-4o"][0]["route"]["retry_policy"]
    assert policy["retry_on"] == "connect-failure,reset,5xx,retriable-status-codes"
    assert policy["retriable_status_codes"] == [429]
    assert policy["per_try_timeout"] == "2s"
    assert policy["num_retries"] == 2  # three targets
    assert by_cluster["chain_claude-haiku-4-5"][0]["route"]["retry_policy"]["num_retries"] == 1
    assert policy["retry_priority"]["typed_config"]["update_frequency"] == 1
    assert "previous_priorities" in policy["retry_priority"]["name"]
    # Chained routes come before the routes they copy; the plain route has no retry policy.
    last = routes(b)[-1]
    assert "retry_policy" not in last["route"]
    assert routes(b).index(chained[-1]) < len(routes(b)) - 1
    # The request filter writes the state and is sent the attempt records back.
    filters = hcm(b)["http_filters"]
    request = next(
        f for f in filters if f["name"] in ("gateway.request", "envoy.filters.http.ext_proc")
    )
    options = request["typed_config"]["metadata_options"]
    assert options["receiving_namespaces"] == {"untyped": [handoff.NAMESPACE]}
    assert options["forwarding_namespaces"] == {"untyped": [handoff.ATTEMPTS_NAMESPACE]}


def test_a_mocked_chain_is_plaintext_and_static(tmp_path: Path) -> None:
    cluster = _cluster(_build(_config(tmp_path), mocked=True), "chain_gpt-4o")
    assert cluster["type"] == "STATIC"
    assert "transport_socket_matches" not in cluster


@pytest.mark.parametrize(("mode", "mocked"), [("observe", False), ("synchronous", True)])
def test_envoy_accepts_it(tmp_path: Path, mode: str, mocked: bool) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(render(_build(_config(tmp_path, mode), mocked=mocked)))
    validate_envoy_config(path)  # raises StackError with Envoy's complaint


def test_no_chain_no_change() -> None:
    """The built-in config (no chains) has no chain cluster, route or metadata for them."""
    config = load_config(None, {})
    text = render(
        build(config, PORTS, resolve_upstreams(config, {}, MOCK).values(), CA_FILE, ACCESS)
    )
    assert "chain_" not in text and handoff.ATTEMPTS_NAMESPACE not in text
    assert "attempt_count" not in text and STRIP_ATTEMPT_COUNT not in text
