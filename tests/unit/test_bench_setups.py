"""The bench's configurations parse and render with no provider credential in the environment
(a new built-in provider once stopped `make bench` at its first setup; `make test` runs no
bench)."""

from __future__ import annotations

from pathlib import Path

from bench import setups
from gateway_extproc.config.gateway import merge, parse_config
from gateway_extproc.config.upstreams import resolve_upstreams

NO_KEYS: dict[str, str] = {}


def test_the_data_plane_config_serves_only_the_bench_upstream() -> None:
    config = setups.data_plane_config(4242, NO_KEYS)
    upstreams = resolve_upstreams(config, NO_KEYS, None)
    assert list(upstreams) == ["openai"]
    assert upstreams["openai"].port == 4242


def test_the_noop_and_plain_bootstraps_render() -> None:
    config = setups.data_plane_config(4242, NO_KEYS)
    noop = setups.noop_bootstrap(config, (1,), NO_KEYS)
    plain = setups.plain_bootstrap(noop, config.providers["openai"].cluster)
    clusters = [c["name"] for c in plain["static_resources"]["clusters"]]
    assert clusters == [config.providers["openai"].cluster]


def test_the_gateway_document_parses(tmp_path: Path) -> None:
    identity = setups.make_identity(tmp_path)
    doc = setups.gateway_document(4242, 1, identity)
    config = parse_config(merge(setups.load_document(None), doc), NO_KEYS)
    assert list(resolve_upstreams(config, NO_KEYS, None)) == ["openai"]
