"""The three setups under test, each started on ephemeral loopback ports and stopped on exit.

1. `plain`: Envoy routing `/` straight to the upstream cluster (the data plane's floor).
2. `noop`: Envoy with the gateway's own ext_proc filter, pointed at `bench.noop` workers.
3. `gateway`: the full gateway from `gateway_extproc.stack.Stack` (redis-server and sidecar
   workers), with its own config: a JWKS issuer, a policy rule, a user budget, an audit file.

What each is configured with (documents, bootstraps, identity) is bench/setup_configs.py; the
processes are started through bench/procs.py. Every Envoy runs with `--concurrency 1`.

A fourth, `litellm` (a LiteLLM proxy, no Envoy; issue 24's yardstick), is in bench/litellm.py.
The `translated` setup is (3) with `anthropic` served by the bench upstream too, so an OpenAI
client's request for a `claude-*` model is translated to Anthropic Messages through the same
Envoy and sidecar as a native one (`translated=True` below). The `fallback` setup is (3) with a
fallback chain for one model, CHAIN (both targets on the bench upstream), so one stack serves a
model without a chain, the chained model by its first target, and by its second
(bench/fallback_run.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

import yaml

from bench.procs import Procs, port_from_file, start_envoy
from bench.setup_configs import (
    CHAINED_MODEL,
    NOOP_SECRETS,
    Identity,
    data_plane_config,
    gateway_document,
    noop_bootstrap,
    plain_bootstrap,
    upstream_cluster,
)
from gateway_extproc.config.fallback import cluster_name
from gateway_extproc.stack import Stack


@dataclasses.dataclass(frozen=True)
class Running:
    """A started setup: where to send load and which processes to sample."""

    setup: str  # plain | noop | gateway | litellm
    workers: int  # ext_proc worker processes (0 for plain and litellm)
    url: str  # http://127.0.0.1:PORT
    admin_url: str  # Envoy's admin ("" for litellm: no Envoy there)
    envoy_pid: int  # the proxy's process: Envoy's, or LiteLLM's in the litellm setup
    sidecar_pids: tuple[int, ...]
    upstream_cluster: str
    translated_cluster: str | None = None  # anthropic's, when the setup translates
    redis_url: str | None = None
    audit_path: Path | None = None
    proxy_version: str | None = None  # LiteLLM's release (bench/litellm.py)
    chain_cluster: str | None = None  # CHAINED_MODEL's chain cluster, in the fallback setup


@contextlib.contextmanager
def plain(
    output: IO[bytes], run_dir: Path, upstream_port: int, environ: Mapping[str, str]
) -> Iterator[Running]:
    config = data_plane_config(upstream_port, environ)
    cluster = upstream_cluster(config)
    bootstrap = plain_bootstrap(noop_bootstrap(config, (1,), environ), cluster)
    procs = Procs(output)
    try:
        url, admin, pid = start_envoy(procs, bootstrap, run_dir / "envoy-plain.yaml")
        yield Running("plain", 0, url, admin, pid, (), cluster)
    finally:
        procs.stop()


# Setup -> the no-op's --handoff: nothing, a state handed to the observer, the same signed and
# verified with the caller token checked (bench/noop.py).
NOOP_HANDOFFS = {"noop": "none", "noop-observe": "none", "noop-state": "state"}
NOOP_HANDOFFS["noop-trust"] = "signed"


@contextlib.contextmanager
def noop(
    output: IO[bytes],
    run_dir: Path,
    upstream_port: int,
    workers: int,
    environ: Mapping[str, str],
    *,
    setup: str = "noop",
) -> Iterator[Running]:
    observe = setup != "noop"
    config = data_plane_config(upstream_port, environ, "observe" if observe else "synchronous")
    procs = Procs(output)
    args = ("--handoff", NOOP_HANDOFFS[setup])
    env = {**environ, **NOOP_SECRETS}
    try:
        started = [
            port_from_file(procs, "bench.noop", run_dir / f"{setup}-{i}.port", args, env)
            for i in range(workers)
        ]
        bootstrap = noop_bootstrap(config, tuple(port for port, _ in started), environ)
        url, admin, pid = start_envoy(procs, bootstrap, run_dir / f"envoy-{setup}-{workers}.yaml")
        sidecars = tuple(pid for _, pid in started)
        yield Running(setup, workers, url, admin, pid, sidecars, upstream_cluster(config))
    finally:
        procs.stop()


@contextlib.contextmanager
def gateway(
    output: IO[bytes],
    log_path: Path,
    run_dir: Path,
    upstream_port: int,
    workers: int,
    identity: Identity,
    environ: Mapping[str, str],
    otlp_endpoint: str | None = None,
    synchronous: bool = False,
    translated: bool = False,
    fallback: bool = False,
) -> Iterator[Running]:
    """The full gateway: Stack starts redis-server and the sidecar workers; Envoy is started
    here from Stack's own bootstrap, with `--concurrency 1` (Stack's Envoy uses 2).

    `synchronous`: the `gateway-sync` setup, `metering.mode: synchronous` (the response path
    before issue 13, kept as an opt-in for the JSON cost header); else the default observe mode.
    Telemetry is off (no /metrics, no OTEL_* exporter) unless `otlp_endpoint` is given: then
    the `gateway+otel` setup serves /metrics, traces every request (sampler always_on) and
    exports spans and metrics by OTLP/gRPC to that endpoint. `translated`: the `translated`
    setup (`translated-sync` with `synchronous`), anthropic served by the bench upstream too.
    `fallback`: the `fallback` setup, CHAINED_MODEL chained (gateway_document)."""
    name = "gateway" if otlp_endpoint is None else "gateway+otel"
    if translated:
        name = "translated"
    if fallback:
        name = "fallback"
    if synchronous:
        name += "-sync"
    config_path = run_dir / f"{name}-{workers}.yaml"
    document = gateway_document(upstream_port, workers, identity, translated, fallback)
    document["observability"] = {"metrics": otlp_endpoint is not None}
    document["metering"] = {"mode": "synchronous" if synchronous else "observe"}
    config_path.write_text(yaml.safe_dump(document, sort_keys=False))
    audit_path = run_dir / f"audit-{name}-{workers}.jsonl"
    env = {k: v for k, v in environ.items() if not k.startswith("OTEL_")}
    env["GATEWAY_AUDIT_LOG"] = str(audit_path)
    if otlp_endpoint is not None:
        env |= {
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_endpoint,
            "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_METRIC_EXPORT_INTERVAL": "5000",
        }
    stack = Stack(
        run_dir=run_dir / f"stack-{name}-{workers}",
        config_path=config_path,
        environ=env,
        listen_port=0,
        admin_port=0,
        log_path=log_path,
    )
    procs = Procs(output)
    try:
        stack.run_dir.mkdir(parents=True, exist_ok=True)
        stack.output = log_path.open("ab")
        stack.start_redis()
        stack.start_sidecars()
        bootstrap = yaml.safe_load(stack.envoy_yaml())
        url, admin, pid = start_envoy(procs, bootstrap, run_dir / f"envoy-{name}-{workers}.yaml")
        sidecars = tuple(
            stack.process("sidecar" if w == 0 else f"sidecar-{w}").pid for w in range(workers)
        )
        cluster = upstream_cluster(stack.config)
        anthropic = stack.config.providers.get("anthropic") if translated else None
        chained = CHAINED_MODEL in stack.config.fallback.chains
        yield Running(
            name,
            workers,
            url,
            admin,
            pid,
            sidecars,
            cluster,
            None if anthropic is None else anthropic.cluster,
            stack.redis_url,
            audit_path,
            chain_cluster=cluster_name(CHAINED_MODEL) if chained else None,
        )
    finally:
        procs.stop()
        stack.stop()
