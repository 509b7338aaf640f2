"""Key pools (`providers.<p>.keys`, docs/fallback.md): the configuration, validated with every
problem's path, and the Envoy config generated from it (one endpoint per key on the target's
level, the key's name in its metadata and never its secret; a pooled provider's models without
a chain get a one-target chain; the retry policy tries every key of a level before the next),
validated by Envoy. With policy variants: a variant's levels hold every key too, and the request
phase's `x-envoy-max-retries` counts every key of the targets it keeps."""

from __future__ import annotations

import dataclasses
import heapq
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway_extproc import handoff
from gateway_extproc.config import keys as pool_keys
from gateway_extproc.config.fallback import FallbackConfig, Target, with_suffixes
from gateway_extproc.config.gateway import GatewayConfig, load_config
from gateway_extproc.config.upstreams import resolve_upstreams
from gateway_extproc.envoy.bootstrap import build, render
from gateway_extproc.errors import ConfigError
from gateway_extproc.extproc import messages as msgs
from gateway_extproc.request import chain as chained
from gateway_extproc.request.route import CLUSTER_HEADER
from gateway_extproc.stack import validate_envoy_config
from tests.sidecar_secrets import ACCESS
from tests.unit.test_envoy_config import CA_FILE, PORTS, routes

KEYS = [
    {"name": "main", "env": "POOL_KEY_MAIN", "weight": 3},
    {"name": "spare", "env": "POOL_KEY_SPARE"},
]
SECRETS = {
    "POOL_KEY_MAIN": "sk-pool-main-secret",
    "POOL_KEY_SPARE": "sk-pool-spare-secret",
    "ANTHROPIC_API_KEY": "sk-ant-secret",
}
CHAINS = {"gpt-4o": ["openai/gpt-4o", "anthropic/claude-sonnet-4-5"]}


def _config(
    tmp_path: Path, keys: object = KEYS, chains: object = CHAINS, policies: object = None
) -> GatewayConfig:
    path = tmp_path / "gateway.yaml"
    doc: dict[str, Any] = {"providers": {"openai": {"keys": keys}}, "fallback": {"chains": chains}}
    if policies is not None:
        doc["policies"] = policies
    path.write_text(yaml.safe_dump(doc))
    return load_config(path, SECRETS)


def _bootstrap(config: GatewayConfig) -> dict[str, Any]:
    upstreams = resolve_upstreams(config, SECRETS, None)
    return build(config, PORTS, upstreams.values(), CA_FILE, ACCESS)


def _cluster(b: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = (c for c in b["static_resources"]["clusters"] if c["name"] == name)
    return found


def _levels(cluster: dict[str, Any]) -> list[list[tuple[dict[str, str], int | None]]]:
    return [
        [
            (
                e["metadata"]["filter_metadata"][handoff.TARGET_NAMESPACE],
                e.get("load_balancing_weight"),
            )
            for e in level["lb_endpoints"]
        ]
        for level in cluster["load_assignment"]["endpoints"]
    ]


def test_a_target_of_a_pooled_provider_is_a_level_of_weighted_keys(tmp_path: Path) -> None:
    b = _bootstrap(_config(tmp_path))
    assert _levels(_cluster(b, "chain_gpt-4o")) == [
        [
            ({"target": "openai/gpt-4o", "key": "main"}, 3),
            ({"target": "openai/gpt-4o", "key": "spare"}, 1),
        ],
        [({"target": "anthropic/claude-sonnet-4-5"}, None)],
    ]
    text = render(b)
    assert not any(secret in text for secret in SECRETS.values())


def test_a_pooled_providers_model_without_a_chain_gets_a_one_target_chain(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert config.fallback.chain_for("gpt-4o-mini") is not None
    assert config.fallback.chain_for("claude-haiku-4-5") is None  # anthropic has one key
    b = _bootstrap(config)
    assert [k for k, _ in _levels(_cluster(b, "chain_gpt-4o-mini"))[0]] == [
        {"target": "openai/gpt-4o-mini", "key": "main"},
        {"target": "openai/gpt-4o-mini", "key": "spare"},
    ]


def _retry_policy(b: dict[str, Any], cluster: str) -> dict[str, Any]:
    for route in routes(b):
        headers = route["match"].get("headers", [])
        if any(
            h["name"] == CLUSTER_HEADER and h["string_match"]["exact"] == cluster for h in headers
        ):
            return dict(route["route"]["retry_policy"])
    raise AssertionError(f"no route for {cluster}")


def test_every_key_of_a_level_is_tried_before_the_next_level(tmp_path: Path) -> None:
    """Fact 8: previous_hosts plus previous_priorities updated every pool-size attempts."""
    b = _bootstrap(_config(tmp_path))
    for cluster, retries in (("chain_gpt-4o", 3), ("chain_gpt-4o-mini", 1)):
        policy = _retry_policy(b, cluster)
        assert policy["num_retries"] == retries
        assert policy["retry_priority"]["typed_config"]["update_frequency"] == 2
        assert policy["retry_host_predicate"][0]["name"].endswith("previous_hosts")


@pytest.mark.parametrize(
    ("weights", "repicks"),
    [((3, 1), 5), ((1, 1), 5), ((20, 1), 21), ((100, 1), 101), ((20, 20, 1), 42), ((7, 3), 5)],
)
def test_a_retry_re_picks_enough_to_reach_the_lightest_key(
    tmp_path: Path, weights: tuple[int, ...], repicks: int
) -> None:
    """Fact 8: `previous_hosts` re-picks (keys - 1) x (ceil(max/min) + 1) times, never fewer
    than 5, on every route whose targets include the pool (the chain's and the one-target
    chain of a pooled model without one)."""
    keys = [{"name": f"k{i}", "env": f"POOL_KEY_{i}", "weight": w} for i, w in enumerate(weights)]
    secrets = {**SECRETS, **{f"POOL_KEY_{i}": f"sk-{i}" for i in range(len(weights))}}
    path = tmp_path / "gateway.yaml"
    path.write_text(
        yaml.safe_dump({"providers": {"openai": {"keys": keys}}, "fallback": {"chains": CHAINS}})
    )
    config = load_config(path, secrets)
    b = build(config, PORTS, resolve_upstreams(config, secrets, None).values(), CA_FILE, ACCESS)
    for cluster in ("chain_gpt-4o", "chain_gpt-4o-mini"):
        assert _retry_policy(b, cluster)["host_selection_retry_max_attempts"] == repicks


def _edf_run_without(weights: tuple[int, ...], steps: int = 5000) -> int:
    """The longest run of picks without the lightest host in Envoy's EDF scheduler (deadline
    = the current time + 1/weight, ties to the earliest added)."""
    queue = [(1 / w, i, i) for i, w in enumerate(weights)]
    heapq.heapify(queue)
    lightest, order, run, longest = weights.index(min(weights)), len(weights), 0, 0
    for _ in range(steps):
        now, _order, host = heapq.heappop(queue)
        heapq.heappush(queue, (now + 1 / weights[host], order, host))
        order += 1
        run = 0 if host == lightest else run + 1
        longest = max(longest, run)
    return longest


@pytest.mark.parametrize(
    "weights", [(3, 1), (20, 1), (100, 1), (20, 20, 1), (5, 5, 5, 1), (100, 99, 1), (10, 3, 1)]
)
def test_the_re_picks_cover_the_longest_run_without_the_lightest_key(
    weights: tuple[int, ...],
) -> None:
    """The formula against a model of Envoy's EDF: the first pick plus the re-picks reach the
    lightest key from any state (the tie case makes 20:1 need 21, not 20)."""
    assert _edf_run_without(weights) <= pool_keys.repicks(weights)


def test_envoy_accepts_the_pools(tmp_path: Path) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(render(_bootstrap(_config(tmp_path))))
    validate_envoy_config(path)


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ([], "providers.openai.keys: must be a list of 1 to 10 keys"),
        ([{"name": "a b", "env": "X"}], "providers.openai.keys[0].name: must be 1-64 letters"),
        ([{"name": "a"}], "providers.openai.keys[0]: set exactly one of env, file"),
        ([{"name": "a", "env": "X", "weight": 0}], "providers.openai.keys[0].weight: must be"),
        (
            [{"name": "a", "env": "X", "secret": "s"}],
            "providers.openai.keys[0].secret: unknown key",
        ),
        ([{"name": "a", "env": "X"}, {"name": "a", "env": "Y"}], "names key 'a' twice"),
        (
            [{"name": "a", "env": "X", "weight": 101}, {"name": "b", "env": "Y"}],
            "providers.openai.keys: the heaviest key weighs at most 100 times the lightest "
            "(got 101:1)",
        ),
    ],
)
def test_a_bad_pool_is_refused_with_its_path(tmp_path: Path, keys: object, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, keys)
    assert any(problem in p for p in err.value.problems), err.value.problems


def test_a_pool_key_without_its_secret_is_a_problem(tmp_path: Path) -> None:
    config = _config(tmp_path)
    with pytest.raises(ConfigError) as err:
        resolve_upstreams(config, {"POOL_KEY_MAIN": "sk-1"}, None)
    assert "providers.openai.keys[1]: no credential in environment variable POOL_KEY_SPARE" in (
        err.value.problems
    )


NO_NANO = {"rules": [{"groups": ["no-nano"], "allow": ["*"], "deny": ["gpt-5-nano"]}]}
OPENAI_CHAIN = {"gpt-4.1-mini": ["openai/gpt-4.1-mini", "openai/gpt-5-nano", "openai/o3"]}


def test_a_policy_variant_is_a_cluster_of_keys_too(tmp_path: Path) -> None:
    """A variant (the chain without a forbidden middle target) holds one endpoint per key on
    each level and retries every key of each target it keeps."""
    b = _bootstrap(_config(tmp_path, chains=OPENAI_CHAIN, policies=NO_NANO))
    variant = _cluster(b, "chain_gpt-4.1-mini.t0_2")
    assert _levels(variant) == [
        [
            ({handoff.TARGET_KEY: f"openai/{model}", handoff.POOL_KEY: "main"}, 3),
            ({handoff.TARGET_KEY: f"openai/{model}", handoff.POOL_KEY: "spare"}, 1),
        ]
        for model in ("gpt-4.1-mini", "o3")
    ]
    for cluster, retries in (("chain_gpt-4.1-mini", 5), ("chain_gpt-4.1-mini.t0_2", 3)):
        policy = _retry_policy(b, cluster)
        assert policy["num_retries"] == retries  # targets x keys - 1
        assert policy["retry_priority"]["typed_config"]["update_frequency"] == 2
    path = tmp_path / "envoy.yaml"
    path.write_text(render(b))
    validate_envoy_config(path)


def _forward(
    fallback: FallbackConfig, admitted: list[Target], cooling: frozenset[str] = frozenset()
) -> dict[str, str]:
    """The request phase's routing headers for a chained request that admitted `admitted`
    (its targets named in `cooling` cooling: chain.skipped_head)."""
    stream = types.SimpleNamespace(
        chain=tuple((t, types.SimpleNamespace(name=t.model)) for t in admitted),
        ctx=types.SimpleNamespace(config=types.SimpleNamespace(fallback=fallback)),
        chain_skip=0,
    )
    head = stream.chain[0][1]
    stream.chain_skip = chained.skipped_head(stream, head, cooling)  # type: ignore[arg-type]
    reply = chained.forward(stream)  # type: ignore[arg-type]
    assert isinstance(reply, msgs.CommonResponse)
    return {h.header.key: h.header.raw_value.decode() for h in reply.header_mutation.set_headers}


def test_a_trimmed_request_stops_after_every_key_of_its_last_target() -> None:
    """`x-envoy-max-retries` counts Envoy's tries (targets kept x keys), in the cluster the
    request goes to: a variant's or the chain's own."""
    a, b, c, d = (Target("openai", m) for m in ("gpt-4.1-mini", "gpt-5-nano", "o3", "gpt-4o"))
    fallback = FallbackConfig(
        {"gpt-4.1-mini": (a, b, c, d)},
        max_attempts=4,
        variants={"gpt-4.1-mini": ((a, c, d),)},
        pools={"openai": 2},
    )
    got = _forward(fallback, [a, c])  # b forbidden, d unpriced: the variant, stopped after c
    assert got[CLUSTER_HEADER] == "chain_gpt-4.1-mini.t0_2_3"
    assert got[chained.MAX_RETRIES_HEADER] == "3"  # 2 targets x 2 keys - 1
    got = _forward(fallback, [a])  # the head alone: both its keys
    assert got[CLUSTER_HEADER] == "chain_gpt-4.1-mini"
    assert got[chained.MAX_RETRIES_HEADER] == "1"
    assert chained.MAX_RETRIES_HEADER not in _forward(fallback, [a, c, d])  # the route's own


def test_after_a_reload_that_resized_a_pool_the_trim_counts_envoys_keys() -> None:
    """Envoy started with 2 keys per openai target; a reload grows the pool to 3. Until Envoy
    restarts its levels still hold 2 endpoints and its route leaves a level after 2 attempts:
    the trim counts 2 keys (3 would let Envoy retry into a target the caller may not use), the
    one-target choice follows Envoy's pool, and the resized clusters are named for the restart."""
    a, b, c = (Target("openai", m) for m in ("gpt-4.1-mini", "gpt-5-nano", "o3"))
    started = FallbackConfig({"gpt-4.1-mini": (a, b, c)}, pools={"openai": 2})
    envoy = started.envoy_clusters({"openai"})
    assert [(cl.name, cl.keys) for cl in envoy] == [("chain_gpt-4.1-mini", (2, 2, 2))]
    reloaded = dataclasses.replace(started, pools={"openai": 3}).pinned(envoy)
    got = _forward(reloaded, [a, b])
    assert got[CLUSTER_HEADER] == "chain_gpt-4.1-mini"
    assert got[chained.MAX_RETRIES_HEADER] == "3"  # 2 targets x Envoy's 2 keys - 1, not 5
    assert _forward(reloaded, [a])[chained.MAX_RETRIES_HEADER] == "1"
    assert reloaded.missing({"openai"}) == ("chain_gpt-4.1-mini",)
    # A pool removed by the reload: Envoy's level still has 2 keys, so the head alone is
    # still a chain (its other key is the retry), counted with Envoy's keys.
    shrunk = dataclasses.replace(started, pools={}).pinned(envoy)
    cluster, reached = shrunk.chosen("gpt-4.1-mini", [a])
    assert cluster is not None and (cluster.keys[0], reached) == (2, 1)
    assert _forward(shrunk, [a])[chained.MAX_RETRIES_HEADER] == "1"
    assert shrunk.missing({"openai"}) == ("chain_gpt-4.1-mini",)
    # Nothing resized: nothing to restart for.
    assert started.pinned(envoy).missing({"openai"}) == ()


def test_a_cooling_head_goes_to_the_suffix_variant() -> None:
    """chain.skipped_head: a cooling head (and cooling targets right after it) are skipped
    through a suffix variant; a cooling middle target is left to fall over; without a suffix
    cluster (pinned to an older Envoy) the head is tried."""
    a, b, c = Target("openai", "gpt-4o"), Target("anthropic", "claude"), Target("gemini", "g")
    fallback = with_suffixes(FallbackConfig({"gpt-4o": (a, b, c)}))
    route = CLUSTER_HEADER
    assert _forward(fallback, [a, b, c], frozenset({a.name}))[route] == "chain_gpt-4o.t1_2"
    assert _forward(fallback, [a, b, c], frozenset({a.name, b.name}))[route] == "chain_gpt-4o.t2"
    assert _forward(fallback, [a, b, c], frozenset({b.name}))[route] == "chain_gpt-4o"
    assert _forward(fallback, [a, b, c], frozenset())[route] == "chain_gpt-4o"
    every = frozenset({a.name, b.name, c.name})  # the last is tried, cooling or not
    assert _forward(fallback, [a, b, c], every)[route] == "chain_gpt-4o.t2"
    trimmed = _forward(fallback, [a, b], frozenset({a.name}))  # c not admitted: stop after b
    assert trimmed == {route: "chain_gpt-4o.t1_2", chained.MAX_RETRIES_HEADER: "0"}
    plain = FallbackConfig({"gpt-4o": (a, b, c)})
    assert _forward(plain, [a, b, c], frozenset({a.name}))[route] == "chain_gpt-4o"
