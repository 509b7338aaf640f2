"""Policy variants of fallback chains (config/fallback.py `with_variants`, identity/policy.py
`decisions`): a caller whose policy forbids a target in the middle of a chain gets a cluster
without it, generated only for the sets the configuration's policies can produce, bounded; the
request phase picks the cluster (`cluster_for`); Envoy gets a cluster and routes per variant."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway_extproc.config.fallback import (
    MAX_VARIANTS,
    FallbackConfig,
    Target,
    cluster_name,
    with_suffixes,
    with_variants,
)
from gateway_extproc.config.gateway import GatewayConfig, load_config
from gateway_extproc.config.upstreams import resolve_upstreams
from gateway_extproc.envoy.bootstrap import build, render
from gateway_extproc.identity.policy import PolicySet, parse_policies
from gateway_extproc.request.route import CLUSTER_HEADER
from gateway_extproc.stack import validate_envoy_config
from tests.sidecar_secrets import ACCESS
from tests.unit.test_envoy_config import CA_FILE, MOCK, PORTS, routes

A, B, C = Target("openai", "gpt-4.1-mini"), Target("openai", "gpt-5-nano"), Target("openai", "o3")
CHAIN = {"gpt-4.1-mini": ["openai/gpt-4.1-mini", "openai/gpt-5-nano", "openai/o3"]}


def _policies(doc: Any) -> PolicySet:
    problems: list[str] = []
    policies = parse_policies(doc, problems)
    assert problems == []
    return policies


def _fallback(policies: Any, *, max_attempts: int = 3) -> FallbackConfig:
    chains = {"gpt-4.1-mini": (A, B, C)}
    return with_variants(FallbackConfig(chains, max_attempts=max_attempts), _policies(policies))


def test_decisions_of_each_kind_of_rule() -> None:
    policies = _policies(
        {
            "default": {"allow": ["*"]},
            "anonymous": {"allow": ["gpt-5-nano"]},
            "rules": [
                {"groups": ["no-nano"], "allow": ["*"], "deny": ["gpt-5-nano"]},
                {"groups": ["o3-only"], "allow": ["o3"]},
                {"users": ["alice"], "allow": ["gpt-4.1*"]},
            ],
        }
    )
    found = policies.decisions(["gpt-5-nano", "o3"], limit=10)
    assert found is not None
    assert set(found) == {
        frozenset({"gpt-5-nano", "o3"}),  # default
        frozenset({"gpt-5-nano"}),  # anonymous
        frozenset(),  # alice
        frozenset({"o3"}),  # no-nano, o3-only, and both together
    }
    assert policies.decisions(["gpt-5-nano", "o3"], limit=3) is None


def test_group_combinations_union_their_rules() -> None:
    """Two groups each allowing one target: a member of both may use both."""
    policies = _policies(
        {
            "default": {"allow": []},
            "rules": [
                {"groups": ["n"], "allow": ["gpt-5-nano"]},
                {"groups": ["o"], "allow": ["o3"]},
                {"groups": ["deny-o3"], "allow": ["gpt-4.1-mini"], "deny": ["o3"]},
            ],
        }
    )
    found = set(policies.decisions(["gpt-5-nano", "o3"], limit=10) or ())
    assert frozenset({"gpt-5-nano", "o3"}) in found  # n + o
    assert frozenset({"gpt-5-nano"}) in found  # n, and n + o + deny-o3
    assert frozenset() in found  # default, and deny-o3 alone


def test_a_forbidden_middle_target_gets_a_variant() -> None:
    fallback = _fallback(
        {"rules": [{"groups": ["no-nano"], "allow": ["*"], "deny": ["gpt-5-nano"]}]}
    )
    assert fallback.variants == {"gpt-4.1-mini": ((A, C),)}
    assert list(fallback.clusters()) == [
        ("chain_gpt-4.1-mini", (A, B, C)),
        ("chain_gpt-4.1-mini.t0_2", (A, C)),
    ]
    # The request phase: the variant for [A, C], the chain itself for every prefix of it.
    assert fallback.cluster_for("gpt-4.1-mini", [A, C]) == ("chain_gpt-4.1-mini.t0_2", (A, C), 2)
    assert fallback.cluster_for("gpt-4.1-mini", [A, B, C])[::2] == ("chain_gpt-4.1-mini", 3)
    assert fallback.cluster_for("gpt-4.1-mini", [A, B])[::2] == ("chain_gpt-4.1-mini", 2)


def test_no_variant_where_envoy_can_stop_early_or_nothing_is_forbidden() -> None:
    """A forbidden last target leaves a prefix (x-envoy-max-retries); no policies: no variant."""
    assert _fallback(None).variants == {}
    tail = _fallback({"rules": [{"groups": ["g"], "allow": ["*"], "deny": ["o3"]}]})
    assert tail.variants == {}
    # Without a variant a skipped target cuts the chain before it.
    assert tail.cluster_for("gpt-4.1-mini", [A, C]) == ("chain_gpt-4.1-mini", (A, B, C), 1)


def test_a_variant_keeps_at_most_max_attempts_targets() -> None:
    d = Target("openai", "gpt-5-mini")
    chains = {"gpt-4.1-mini": (A, B, C, d)}
    policies = _policies({"rules": [{"groups": ["g"], "allow": ["*"], "deny": ["gpt-5-nano"]}]})
    fallback = with_variants(FallbackConfig(chains, max_attempts=2), policies)
    assert fallback.variants == {"gpt-4.1-mini": ((A, C),)}
    fallback = with_variants(FallbackConfig(chains, max_attempts=4), policies)
    assert fallback.variants == {"gpt-4.1-mini": ((A, C, d),)}


def test_beyond_the_bound_no_variant_and_it_is_said() -> None:
    """Every subset of a long chain's tail allowed to some group: more than MAX_VARIANTS lists."""
    models = ["gpt-5-nano", "o3", "gpt-5-mini", "gpt-4o", "gpt-4o-mini"]
    tail = tuple(Target("openai", m) for m in models)
    rules = [{"groups": [f"g{i}"], "allow": [m]} for i, m in enumerate(models)]
    policies = _policies({"default": {"allow": ["gpt-4.1-mini"]}, "rules": rules})
    fallback = with_variants(FallbackConfig({"gpt-4.1-mini": (A, *tail)}, max_attempts=6), policies)
    assert 2 ** len(models) > MAX_VARIANTS
    assert fallback.variants == {} and fallback.too_many_variants == ("gpt-4.1-mini",)
    assert fallback.cluster_for("gpt-4.1-mini", [A, tail[1]])[::2] == ("chain_gpt-4.1-mini", 1)


NO_NANO = {"rules": [{"groups": ["no-nano"], "allow": ["*"], "deny": ["gpt-5-nano"]}]}


def test_after_a_reload_only_the_clusters_envoy_has_are_used() -> None:
    """Envoy started without the variant a reloaded policy needs: the caller it forbids the
    middle target to is cut after the head (the chain's own cluster, which Envoy has), not sent
    to a cluster Envoy lacks; the clusters a restart would add are named."""
    started = _fallback(None)
    envoy = started.envoy_clusters({"openai"})
    assert [c.name for c in envoy] == ["chain_gpt-4.1-mini"]
    reloaded = _fallback(NO_NANO).pinned(envoy)
    assert reloaded.missing({"openai"}) == ("chain_gpt-4.1-mini.t0_2",)
    assert reloaded.cluster_for("gpt-4.1-mini", [A, C]) == ("chain_gpt-4.1-mini", (A, B, C), 1)
    assert reloaded.cluster_for("gpt-4.1-mini", [A, B, C]) == ("chain_gpt-4.1-mini", (A, B, C), 3)
    # Unpinned (the start configuration's own clusters): the variant.
    assert _fallback(NO_NANO).cluster_for("gpt-4.1-mini", [A, C])[0] == "chain_gpt-4.1-mini.t0_2"
    # Nothing new: nothing to restart for.
    assert (
        _fallback(NO_NANO).pinned(_fallback(NO_NANO).envoy_clusters({"openai"})).missing({"openai"})
        == ()
    )


def test_after_a_reload_a_new_chain_goes_unchained() -> None:
    envoy = FallbackConfig().envoy_clusters({"openai"})
    assert envoy == ()
    reloaded = _fallback(None).pinned(envoy)
    assert reloaded.cluster_for("gpt-4.1-mini", [A, B, C]) == ("", (), 0)
    assert reloaded.missing({"openai"}) == ("chain_gpt-4.1-mini",)


def test_after_a_reload_a_changed_chain_matches_envoys_targets() -> None:
    """Same cluster name, other targets (the chain was edited): Envoy's targets decide."""
    envoy = _fallback(None).envoy_clusters({"openai"})
    d = Target("openai", "gpt-5-mini")
    edited = with_variants(FallbackConfig({"gpt-4.1-mini": (A, d, C)}), _policies(None))
    reloaded = edited.pinned(envoy)
    assert reloaded.cluster_for("gpt-4.1-mini", [A, d, C]) == ("chain_gpt-4.1-mini", (A, B, C), 1)
    assert reloaded.missing({"openai"}) == ("chain_gpt-4.1-mini",)


def test_after_a_reload_the_attempts_are_those_of_envoys_route() -> None:
    """Envoy's route was generated with max_attempts 2 (num_retries 1): a reload raising it
    cannot make Envoy try a third target, and the request phase knows it."""
    envoy = _fallback(None, max_attempts=2).envoy_clusters({"openai"})
    assert [c.targets for c in envoy] == [(A, B)]
    reloaded = _fallback(None, max_attempts=3).pinned(envoy)
    assert reloaded.cluster_for("gpt-4.1-mini", [A, B, C]) == ("chain_gpt-4.1-mini", (A, B), 2)


def test_a_chain_naming_a_provider_left_out_has_no_envoy_cluster() -> None:
    assert _fallback(NO_NANO).envoy_clusters({"anthropic"}) == ()


def _config(tmp_path: Path, mode: str) -> GatewayConfig:
    path = tmp_path / "gateway.yaml"
    doc = {
        "metering": {"mode": mode},
        "policies": {"rules": [{"groups": ["no-nano"], "allow": ["*"], "deny": ["gpt-5-nano"]}]},
        "fallback": {"chains": CHAIN},
    }
    path.write_text(yaml.safe_dump(doc))
    return load_config(path, {})


@pytest.mark.parametrize("mode", ["observe", "synchronous"])
def test_envoy_gets_a_cluster_and_routes_per_variant(tmp_path: Path, mode: str) -> None:
    config = _config(tmp_path, mode)
    b = build(config, PORTS, resolve_upstreams(config, {}, MOCK).values(), CA_FILE, ACCESS)
    clusters = {c["name"]: c for c in b["static_resources"]["clusters"]}
    variant = clusters["chain_gpt-4.1-mini.t0_2"]
    levels = variant["load_assignment"]["endpoints"]
    names = [
        level["lb_endpoints"][0]["metadata"]["filter_metadata"]["gw.target"]["target"]
        for level in levels
    ]
    assert names == ["openai/gpt-4.1-mini", "openai/o3"]
    assert [level["priority"] for level in levels] == [0, 1]
    retries = {}
    for r in routes(b):
        for h in r["match"]["headers"]:
            if h["name"] == CLUSTER_HEADER and "string_match" in h:
                retries[h["string_match"]["exact"]] = r["route"]["retry_policy"]["num_retries"]
    assert retries == {
        cluster_name("gpt-4.1-mini"): 2,
        "chain_gpt-4.1-mini.t0_2": 1,
        # suffix variants (a cooling head skipped, with_suffixes): [B, C] and [C]
        "chain_gpt-4.1-mini.t1_2": 1,
        "chain_gpt-4.1-mini.t2": 0,
    }
    path = tmp_path / "envoy.yaml"
    path.write_text(render(b))
    validate_envoy_config(path)  # raises StackError with Envoy's complaint


def test_suffix_variants_let_a_cooling_head_be_skipped() -> None:
    """[A, B, C] and its policy variant [A, C] give [B, C] and [C] (deduplicated), which the
    request phase chooses when A is cooling; pinned after a reload like the policy variants."""
    fallback = with_suffixes(_fallback(NO_NANO))
    assert fallback.variants == {"gpt-4.1-mini": ((A, C), (B, C), (C,))}
    assert fallback.cluster_for("gpt-4.1-mini", [B, C]) == ("chain_gpt-4.1-mini.t1_2", (B, C), 2)
    assert fallback.cluster_for("gpt-4.1-mini", [C]) == ("chain_gpt-4.1-mini.t2", (C,), 1)
    reloaded = FallbackConfig({"gpt-4.1-mini": (A, B, C)}).pinned(
        fallback.envoy_clusters({"openai"})
    )
    assert reloaded.cluster_for("gpt-4.1-mini", [B, C])[0] == "chain_gpt-4.1-mini.t1_2"


def test_no_suffix_cuts_a_pooled_target_or_passes_the_bound() -> None:
    pooled = dataclasses.replace(_fallback({}), pools={"openai": 2})
    assert with_suffixes(pooled).variants == {}
    full = dataclasses.replace(_fallback({}), variants={"gpt-4.1-mini": ((A, C),) * MAX_VARIANTS})
    assert with_suffixes(full).variants == full.variants
