"""What the setups are configured with: the gateway's config documents and the Envoy bootstraps
the bench writes, the bench's own identity (a JWKS file and a user token), and the names the loads
and checks share with them (the burst budget, the fallback chain, the no-ops' secrets).

The no-op's bootstrap comes from `envoy.bootstrap.build` like the gateway's, so filters,
processing modes and timeouts are identical; it adds a fallback route to the provider cluster, as
the no-op sets no routing header. Plain Envoy's is the no-op's without the ext_proc and
compressor filters, the ext_proc cluster and the gateway's route. Starting them is bench/setups.py.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway_extproc.config.gateway import GatewayConfig, load_document, merge, parse_config
from gateway_extproc.config.upstreams import resolve_upstreams
from gateway_extproc.envoy import bootstrap as envoy_config
from gateway_extproc.envoy.filters import sidecar_access
from gateway_extproc.sidecar_auth.settings import SidecarAuthConfig, fresh_secrets
from gateway_extproc.stack import ca_bundle

ISSUER = "https://bench.invalid/issuer"
AUDIENCE = "llm-gateway"
USER = "bench@example.com"
GROUP = "bench"

# The no-ops' caller token and state key (the noop-trust setup checks them; Envoy sends the
# token to every no-op, so the setups differ only by the sidecar's work).
NOOP_SECRETS = fresh_secrets(SidecarAuthConfig())


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


def upstream_cluster(config: GatewayConfig) -> str:
    """The cluster the bench's requests reach the upstream by: `openai`'s."""
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
    # (the first route that routes: /.well-known/llm-gateway before it is a direct response)
    fallback = copy.deepcopy(next(r for r in routes if "route" in r))
    fallback["match"] = {"prefix": "/"}
    del fallback["route"]["cluster_header"]
    fallback["route"]["cluster"] = upstream_cluster(config)
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
    vhost["routes"] = [r for r in vhost["routes"] if r.get("route", {}).get("cluster") == cluster]
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
