"""The three setups under test, each started on ephemeral loopback ports and stopped on exit.

1. `plain`: Envoy routing `/` straight to the upstream cluster (the data plane's floor).
2. `noop`: Envoy with the gateway's own ext_proc filter, pointed at `bench.noop` workers.
3. `gateway`: the full gateway from `gateway_extproc.stack.Stack` (redis-server and sidecar
   workers), with its own config: a JWKS issuer, a policy rule, a user budget, an audit file.

The Envoy bootstraps of (2) and (3) both come from `envoy.bootstrap.build`, so filters, processing
modes and timeouts are identical; (2) adds a fallback route to the provider cluster, as the
no-op sets no routing header. (1) is (2) without the ext_proc and compressor filters, the
ext_proc cluster and the gateway's route. Every Envoy runs with `--concurrency 1`.

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
import copy
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway_extproc.config.fallback import cluster_name
from gateway_extproc.config.gateway import GatewayConfig, load_document, merge, parse_config
from gateway_extproc.config.upstreams import resolve_upstreams
from gateway_extproc.envoy import bootstrap as envoy_config
from gateway_extproc.envoy.filters import sidecar_access
from gateway_extproc.sidecar_auth.settings import SidecarAuthConfig, fresh_secrets
from gateway_extproc.stack import (
    Stack,
    ca_bundle,
    launch_envoy,
    wait_for,
)

ENVOY_CONCURRENCY = 1
ISSUER = "https://bench.invalid/issuer"
AUDIENCE = "llm-gateway"
USER = "bench@example.com"
GROUP = "bench"
REPO = Path(__file__).resolve().parent.parent  # children run `-m bench.*` from here


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


class Procs:
    """Processes the bench starts itself; `stop()` ends them in reverse order."""

    def __init__(self, output: IO[bytes]) -> None:
        self.output = output
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(
        self, argv: list[str], env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            argv,
            stdout=self.output,
            stderr=self.output,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            env=None if env is None else dict(env),
            start_new_session=True,  # Ctrl-C reaches only us; we stop the children
        )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        while self.procs:
            proc = self.procs.pop()
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _port_from_file(
    procs: Procs,
    module: str,
    port_file: Path,
    args: tuple[str, ...] = (),
    env: Mapping[str, str] | None = None,
) -> tuple[int, int]:
    port_file.unlink(missing_ok=True)
    argv = [sys.executable, "-m", module, "--port-file", str(port_file), *args]
    proc = procs.spawn(argv, env)

    def ready() -> bool:
        return port_file.exists() and port_file.read_text().strip().isdigit()

    wait_for(ready, module, 30, proc)
    return int(port_file.read_text()), proc.pid


def start_upstream(procs: Procs, run_dir: Path) -> tuple[int, int]:
    """(port, pid) of a new `bench.upstream` process."""
    return _port_from_file(procs, "bench.upstream", run_dir / "upstream.port")


def start_envoy(procs: Procs, bootstrap: Mapping[str, Any], path: Path) -> tuple[str, str, int]:
    """Validate and start Envoy; (listener URL, admin URL, pid) once it is ready."""
    path.write_text(envoy_config.render(dict(bootstrap)))
    return launch_envoy(path, procs.spawn, ENVOY_CONCURRENCY)


# -- configuration ----------------------------------------------------------------------------


def provider_overrides(upstream_port: int, translated: bool = False) -> dict[str, Any]:
    """One provider, `openai`, served by the bench upstream without a credential; every other
    built-in provider switched off. `translated`: `anthropic` too (the upstream answers
    `/v1/messages`), so a chat request for a `claude-*` model is translated."""
    served = ("openai", "anthropic") if translated else ("openai",)
    bench_upstream = {
        "base_url": f"http://127.0.0.1:{upstream_port}/v1",
        "auth": None,
        # The pacing header must reach the upstream through the header allow-list.
        "forward_headers": ["x-bench-*"],
    }
    others = {name: None for name in load_document(None)["providers"] if name not in served}
    return {
        "listener": {"port": 0, "admin_port": 0},
        "providers": {**others, **{name: dict(bench_upstream) for name in served}},
        "mock_unconfigured_providers": False,
    }


def _cluster(config: GatewayConfig) -> str:
    return config.providers["openai"].cluster


def data_plane_config(
    upstream_port: int, environ: Mapping[str, str], metering_mode: str = "synchronous"
) -> GatewayConfig:
    """Plain Envoy's and the no-op's: one synchronous ext_proc filter on every phase (the
    no-op answers each message at once: the floor of a synchronous ext_proc), or with
    `metering_mode` observe the gateway's two filters (the floor of observe mode)."""
    doc = merge(load_document(None), provider_overrides(upstream_port))
    doc["metering"] = {"mode": metering_mode}
    return parse_config(doc, environ)


def noop_bootstrap(
    config: GatewayConfig, sidecar_ports: tuple[int, ...], environ: Mapping[str, str]
) -> dict[str, Any]:
    ports = envoy_config.EnvoyPorts(
        listen_host="127.0.0.1",
        listen_port=0,
        admin_port=0,
        sidecar_host="127.0.0.1",
        sidecar_ports=sidecar_ports,
    )
    upstreams = resolve_upstreams(config, environ, None).values()
    access = sidecar_access(config, {**environ, **NOOP_SECRETS})
    bootstrap = envoy_config.build(config, ports, upstreams, ca_bundle(), access)
    # The no-op never sets the gateway's routing header: a fallback route after the gateway's
    # own sends such requests to the provider's cluster (the gateway's requests never use it).
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    routes = hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    fallback = copy.deepcopy(routes[0])
    fallback["match"] = {"prefix": "/"}
    del fallback["route"]["cluster_header"]
    fallback["route"]["cluster"] = _cluster(config)
    del fallback["request_headers_to_remove"]
    routes.append(fallback)
    return bootstrap


def plain_bootstrap(noop: Mapping[str, Any], cluster: str) -> dict[str, Any]:
    """The no-op's bootstrap without ext_proc and compressor filters and without the ext_proc
    cluster: the same listener, HCM (access log, timeouts, local replies), router and upstream
    cluster, and only the fallback route, so every request goes straight to `cluster`."""
    bootstrap = copy.deepcopy(dict(noop))
    resources = bootstrap["static_resources"]
    resources["clusters"] = [c for c in resources["clusters"] if c["name"] == cluster]
    hcm = resources["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"].endswith(".router")]
    vhost = hcm["route_config"]["virtual_hosts"][0]
    vhost["routes"] = [r for r in vhost["routes"] if r["route"].get("cluster") == cluster]
    return bootstrap


@dataclasses.dataclass(frozen=True)
class Identity:
    jwks_path: Path
    token: str


def make_identity(run_dir: Path) -> Identity:
    """An RS256 key, its JWKS file, and one user token valid for a day."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwks_path = run_dir / "jwks.json"
    jwks_path.write_text(json.dumps({"keys": [{**jwk, "kid": "bench", "alg": "RS256"}]}))
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 86400,
        "sub": "bench-user",
        "email": USER,
        "email_verified": True,  # else the user would be the sub (identity/jwt_verify.py)
        "groups": [GROUP],
        "azp": "bench",
    }
    token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "bench"})
    return Identity(jwks_path, token)


# The burst budget: $0.10 for gpt-4o requests (bench/load.py `burst`). Each reserves the 8,192-token
# cap ($0.08), so one fits at a time until a settle frees room: the bench checks only that a
# healthy Redis answers 200/429, never 503 (exact admission is tests/e2e/test_budget_bounds.py).
BURST_LIMIT_MICROS = 100_000


TRANSLATED_MODELS = "claude-haiku-4-5*"  # the policy's allowance in the translated setup
# The fallback setup's chain: the requested model, then its targets in order (bench/upstream.py
# serves both; `x-bench-fail-model` makes the first one answer 500).
CHAINED_MODEL = "gpt-4o"
CHAIN = ("openai/gpt-4o", "openai/gpt-4o-mini")


def gateway_document(
    upstream_port: int,
    workers: int,
    identity: Identity,
    translated: bool = False,
    fallback: bool = False,
) -> dict[str, Any]:
    """The production defaults but for `drain_s: 0`: nothing to drain at the end of a bench.
    (The Redis deadline is the default 50 ms: it measures Redis, not the event loop's lag.)
    `translated`: anthropic served by the bench upstream and the bench group allowed a Claude
    model (bench/load.py's TRANSLATED_MODEL). `fallback`: CHAINED_MODEL falls back along CHAIN,
    and no burst budget (it matches gpt-4o, the chained model the setup loads)."""
    allow = ["gpt-4o*", TRANSLATED_MODELS] if translated else ["gpt-4o*"]
    doc: dict[str, Any] = {
        **provider_overrides(upstream_port, translated),
        "sidecar": {"workers": workers, "drain_s": 0},
        "audit": {"stdout": False},
        "identity": {
            "issuers": {
                "bench": {
                    "issuer": ISSUER,
                    "audiences": [AUDIENCE],
                    "jwks_file": str(identity.jwks_path),
                    "algorithms": ["RS256"],
                }
            }
        },
        "policies": {
            "default": {"allow": []},
            "rules": [{"groups": [GROUP], "allow": allow}],
        },
        "budgets": [
            {
                "name": "bench-user-monthly",
                "scope": {"kind": "user"},
                "limit_usd": 1_000_000,
                "window": {"type": "calendar", "period": "month", "timezone": "UTC"},
                "action": "block",
            },
            {
                "name": "bench-burst",
                "scope": {"kind": "user"},
                "match": {"models": ["gpt-4o"]},
                "limit_usd": BURST_LIMIT_MICROS / 1_000_000,
                "window": {"type": "calendar", "period": "month", "timezone": "UTC"},
                "action": "block",
            },
        ],
    }
    if fallback:
        doc["budgets"] = doc["budgets"][:1]
        doc["fallback"] = {"chains": {CHAINED_MODEL: list(CHAIN)}}
    return doc


# -- the setups -------------------------------------------------------------------------------


@contextlib.contextmanager
def plain(
    output: IO[bytes], run_dir: Path, upstream_port: int, environ: Mapping[str, str]
) -> Iterator[Running]:
    config = data_plane_config(upstream_port, environ)
    cluster = _cluster(config)
    bootstrap = plain_bootstrap(noop_bootstrap(config, (1,), environ), cluster)
    procs = Procs(output)
    try:
        url, admin, pid = start_envoy(procs, bootstrap, run_dir / "envoy-plain.yaml")
        yield Running("plain", 0, url, admin, pid, (), cluster)
    finally:
        procs.stop()


# The no-ops' caller token and state key (the noop-trust setup checks them; Envoy sends the
# token to every no-op, so the setups differ only by the sidecar's work).
NOOP_SECRETS = fresh_secrets(SidecarAuthConfig())
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
            _port_from_file(procs, "bench.noop", run_dir / f"{setup}-{i}.port", args, env)
            for i in range(workers)
        ]
        bootstrap = noop_bootstrap(config, tuple(port for port, _ in started), environ)
        url, admin, pid = start_envoy(procs, bootstrap, run_dir / f"envoy-{setup}-{workers}.yaml")
        sidecars = tuple(pid for _, pid in started)
        yield Running(setup, workers, url, admin, pid, sidecars, _cluster(config))
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
        cluster = _cluster(stack.config)
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
