"""Resolve configured providers into concrete upstreams: address, TLS, path prefix, credential.

Shared by the sidecar (which injects credentials and sets the cluster header) and the Envoy
config generator (which emits one cluster per upstream), so both always agree.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from gateway_extproc.apis import Schema
from gateway_extproc.config.gateway import GatewayConfig
from gateway_extproc.config.providers import ProviderConfig
from gateway_extproc.errors import ConfigError
from gateway_extproc.providers.forwarding import ForwardPolicy, forward_policy


@dataclasses.dataclass(frozen=True)
class Upstream:
    provider: str
    schema: Schema
    cluster: str
    host: str
    port: int
    tls: bool
    base_path: str  # replaces the gateway's "/v1" prefix, e.g. "/v1" or "/openai/v1"
    auth_header: str | None
    auth_value: str | None = dataclasses.field(default=None, repr=False)  # a secret
    mocked: bool = False
    forward: ForwardPolicy = dataclasses.field(  # which client headers it receives
        default_factory=lambda: forward_policy(Schema.OPENAI, (), mocked=False)
    )

    def upstream_path(self, client_path: str) -> str:
        """`/v1/chat/completions?x=1` -> base_path + `/chat/completions?x=1`. Gemini paths carry
        their own version (`/v1beta/models/...`): base_path + the whole path."""
        if self.schema is Schema.GEMINI:
            return self.base_path.rstrip("/") + client_path
        suffix = client_path[3:] if client_path.startswith("/v1") else client_path
        return self.base_path.rstrip("/") + suffix


def _credential(provider: ProviderConfig, environ: Mapping[str, str]) -> str | None:
    auth = provider.auth
    if auth is None:
        return None
    if auth.env is not None:
        return environ.get(auth.env) or None
    assert auth.file is not None
    try:
        return Path(auth.file).read_text().strip() or None
    except OSError:
        return None


def _address(base_url: str) -> tuple[str, int, bool, str]:
    parts = urllib.parse.urlsplit(base_url)
    tls = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if tls else 80)
    return host, port, tls, parts.path or "/"


def resolve_upstreams(
    config: GatewayConfig,
    environ: Mapping[str, str],
    mock_base_url: str | None,
    *,
    assume_credentials: bool = False,
) -> dict[str, Upstream]:
    """One upstream per provider. A provider without its credential goes to the mock when the
    config allows it and a mock is running; otherwise a built-in provider the operator's file
    does not name is left out (no upstream: its models answer "no configured provider"), and
    any other is a configuration error, as is a config that leaves no provider at all.
    `assume_credentials` renders the production shape without reading any secret."""
    upstreams: dict[str, Upstream] = {}
    problems: list[str] = []
    left_out: list[str] = []
    for name, provider in config.providers.items():
        secret = "<credential>" if assume_credentials else _credential(provider, environ)
        mocked = provider.auth is not None and secret is None
        base_url = provider.base_url
        if mocked:
            if not (config.mock_unconfigured_providers and mock_base_url):
                auth = provider.auth
                assert auth is not None
                source = f"environment variable {auth.env}" if auth.env else f"file {auth.file}"
                if name in config.optional_providers:
                    left_out.append(f"{name} ({source})")
                else:
                    problems.append(f"providers.{name}.auth: no credential in {source}")
                continue
            base_url = mock_base_url
        host, port, tls, path = _address(base_url)
        if mocked and provider.schema is Schema.GEMINI:
            # The mock's URL is its OpenAI-style root (`.../v1`); Gemini paths carry their own
            # version, so they go to the mock's root.
            path = path.removesuffix("/v1") or "/"
        upstreams[name] = Upstream(
            provider=name,
            schema=provider.schema,
            cluster=provider.cluster,
            host=host,
            port=port,
            tls=tls,
            base_path=path,
            auth_header=None if mocked or provider.auth is None else provider.auth.header,
            auth_value=None
            if mocked or provider.auth is None
            else provider.auth.prefix + (secret or ""),
            mocked=mocked,
            forward=forward_policy(provider.schema, provider.forward_headers, mocked=mocked),
        )
    if not upstreams and left_out and not problems:
        problems.append(
            "providers: no provider has its credential: set the key of one of "
            + ", ".join(left_out)
        )
    if problems:
        raise ConfigError(problems)
    return upstreams


def needs_mock(config: GatewayConfig, environ: Mapping[str, str]) -> bool:
    """True when some provider lacks its credential and the config sends it to the mock."""
    return config.mock_unconfigured_providers and any(
        p.auth is not None and _credential(p, environ) is None for p in config.providers.values()
    )
