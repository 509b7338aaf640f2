"""The bench's configurations parse and render with no provider credential in the environment
(a new built-in provider once stopped `make bench` at its first setup; `make test` runs no
bench)."""

from __future__ import annotations

from pathlib import Path

from bench import load, setup_configs
from gateway_extproc.config.fallback import cluster_name
from gateway_extproc.config.gateway import load_document, merge, parse_config
from gateway_extproc.config.upstreams import resolve_upstreams
from gateway_extproc.envoy.filters import UPSTREAM_FILTER
from gateway_extproc.identity.model import AuthMethod, Identity, Kind

NO_KEYS: dict[str, str] = {}


def test_the_data_plane_config_serves_only_the_bench_upstream() -> None:
    config = setup_configs.data_plane_config(4242, NO_KEYS)
    upstreams = resolve_upstreams(config, NO_KEYS, None)
    assert list(upstreams) == ["openai"]
    assert upstreams["openai"].port == 4242


def test_the_noop_and_plain_bootstraps_render() -> None:
    config = setup_configs.data_plane_config(4242, NO_KEYS)
    noop = setup_configs.noop_bootstrap(config, (1,), NO_KEYS)
    plain = setup_configs.plain_bootstrap(noop, config.providers["openai"].cluster)
    clusters = [c["name"] for c in plain["static_resources"]["clusters"]]
    assert clusters == [config.providers["openai"].cluster]


def test_the_gateway_document_parses(tmp_path: Path) -> None:
    identity = setup_configs.make_identity(tmp_path)
    doc = setup_configs.gateway_document(4242, 1, identity)
    config = parse_config(merge(load_document(None), doc), NO_KEYS)
    assert list(resolve_upstreams(config, NO_KEYS, None)) == ["openai"]


def test_the_translated_document_serves_a_claude_model_from_the_bench_upstream(
    tmp_path: Path,
) -> None:
    """`--setups translated`: anthropic pointed at the bench upstream, no key needed, and the
    bench user allowed the Claude model that load.py's translated stream asks for."""
    identity = setup_configs.make_identity(tmp_path)
    doc = setup_configs.gateway_document(4242, 1, identity, translated=True)
    config = parse_config(merge(load_document(None), doc), NO_KEYS)
    upstreams = resolve_upstreams(config, NO_KEYS, None)
    assert sorted(upstreams) == ["anthropic", "openai"]
    assert {u.port for u in upstreams.values()} == {4242}
    assert config.providers["anthropic"].forward_headers == ("x-bench-*",)  # the pacing header
    entry = config.catalog.lookup(load.TRANSLATED_MODEL)
    assert entry is not None and entry.provider == "anthropic"
    user = Identity(
        kind=Kind.USER,
        auth_method=AuthMethod.JWT,
        user=setup_configs.USER,
        service=None,
        groups=frozenset({setup_configs.GROUP}),
        issuer="bench",
        attributes={},
        expires_at=None,
    )
    assert config.policies.allows(user, load.TRANSLATED_MODEL)
    assert config.policies.allows(user, load.NATIVE_MODEL)
    # The default gateway setup is unchanged: openai only, no Claude model allowed.
    plain = parse_config(
        merge(load_document(None), setup_configs.gateway_document(4242, 1, identity)), NO_KEYS
    )
    assert list(resolve_upstreams(plain, NO_KEYS, None)) == ["openai"]
    assert not plain.policies.allows(user, load.TRANSLATED_MODEL)


def test_the_fallback_document_chains_one_model_on_the_bench_upstream(tmp_path: Path) -> None:
    """`--setups fallback`: CHAINED_MODEL falls back along CHAIN, both targets served by the
    bench upstream with no key; the unchained model the other rows load keeps its cluster;
    no burst budget (it matches the chained model); the Envoy bootstrap renders the chain
    cluster with its per-attempt filter."""
    identity = setup_configs.make_identity(tmp_path)
    doc = setup_configs.gateway_document(4242, 1, identity, fallback=True)
    config = parse_config(merge(load_document(None), doc), NO_KEYS)
    assert list(resolve_upstreams(config, NO_KEYS, None)) == ["openai"]
    chain = config.fallback.chain_for(setup_configs.CHAINED_MODEL)
    assert chain is not None and tuple(t.name for t in chain) == setup_configs.CHAIN
    assert config.fallback.chain_for(load.NATIVE_MODEL) is None
    assert [b.name for b in config.budgets] == ["bench-user-monthly"]
    bootstrap = setup_configs.noop_bootstrap(config, (1,), NO_KEYS)
    (cluster,) = (
        c
        for c in bootstrap["static_resources"]["clusters"]
        if c["name"] == cluster_name(setup_configs.CHAINED_MODEL)
    )
    (options,) = cluster["typed_extension_protocol_options"].values()
    assert UPSTREAM_FILTER in [f["name"] for f in options["http_filters"]]
