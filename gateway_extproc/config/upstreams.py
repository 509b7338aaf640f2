"""Resolve configured providers into concrete upstreams: address, TLS, path prefix, credential.

Shared by the sidecar (which injects credentials and sets the cluster header) and the Envoy
config generator (which emits one cluster per upstream), so both always agree.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from gateway_extproc.apis import Api, Schema
from gateway_extproc.config.gateway import GatewayConfig
from gateway_extproc.config.providers import ProviderConfig
from gateway_extproc.errors import ConfigError, ProviderUnavailable
from gateway_extproc.providers.azure.entra import TokenSource
from gateway_extproc.providers.azure.paths import upstream_path as azure_path
from gateway_extproc.providers.azure.settings import AzureSettings
from gateway_extproc.providers.bedrock.signing import (
    BedrockSigner,
    chain_credentials,
    host_header,
    mock_credentials,
)
from gateway_extproc.providers.forwarding import ForwardPolicy, forward_policy
from gateway_extproc.providers.vertex.settings import MOCK_PROJECT, VertexSettings
from gateway_extproc.providers.vertex.tokens import MOCK_TOKEN
from gateway_extproc.providers.vertex.tokens import TokenSource as VertexTokens


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
    # Signs each request after its last rewrite (schema: bedrock); None: a header credential.
    signer: BedrockSigner | None = dataclasses.field(default=None, repr=False)
    azure: AzureSettings | None = None  # Azure OpenAI: its paths and deployments
    # Entra ID: `Authorization: Bearer` from this source instead of `auth_header`/`auth_value`,
    # attached by the sidecar (runtime/context.py), which keeps it across reloads.
    token: TokenSource | None = dataclasses.field(default=None, repr=False, compare=False)
    # Vertex AI: its settings, the project its paths name, and (not mocked) the source of its
    # OAuth2 access tokens, attached by the sidecar (runtime/context.py) once the credentials
    # are read.
    vertex: VertexSettings | None = None
    project: str | None = None
    tokens: VertexTokens | None = dataclasses.field(default=None, compare=False, repr=False)
    # A key pool (config/keys.py): (name, weight, credential value: a secret) per key; the
    # first key's value is also `auth_value` (what a request outside a chain cluster gets).
    keys: tuple[tuple[str, int, str], ...] = dataclasses.field(default=(), repr=False)

    def key_credential(self, name: str) -> tuple[str, str] | None:
        """The header and value of pool key `name`, or None (no pool, or no such key)."""
        for key, _, value in self.keys:
            if key == name and self.auth_header:
                return self.auth_header, value
        return None

    def credential(self) -> tuple[str, str] | None:
        """The header that carries the gateway's credential upstream, and its value (a secret),
        or None. An Entra ID token is the one cached (the request phase awaited
        `token.ensure()` first). A Vertex token is the one its refresher thread keeps: none (not
        fetched yet, or expired after failed refreshes) raises ProviderUnavailable (503)."""
        if self.token is not None:
            token = self.token.current()
            return None if token is None else ("authorization", f"Bearer {token}")
        if self.tokens is not None:
            bearer = self.tokens.bearer()
            if bearer is None:
                raise ProviderUnavailable(
                    f"provider {self.provider} has no valid access token yet (Google credentials"
                    " refreshing); retry shortly"
                )
            return "authorization", bearer
        if self.auth_header and self.auth_value:
            return self.auth_header, self.auth_value
        return None

    def model_name(self, served_model: str) -> str:
        """What the provider calls the served model: an Azure deployment, a Vertex model id,
        else the name."""
        if self.vertex is not None:
            return self.vertex.model_id(served_model)
        return served_model if self.azure is None else self.azure.deployment(served_model)

    @property
    def host_header(self) -> str:
        """The `host` this upstream is called with (what a signature covers)."""
        return host_header(self.host, self.port, tls=self.tls)

    def upstream_path(self, client_path: str) -> str:
        """`/v1/chat/completions?x=1` -> base_path + `/chat/completions?x=1`. Gemini paths carry
        their own version (`/v1beta/models/...`): base_path + the whole path."""
        if self.schema is Schema.GEMINI:  # Gemini, and Vertex's `/v1/projects/...` paths
            return self.base_path.rstrip("/") + client_path
        suffix = client_path[3:] if client_path.startswith("/v1") else client_path
        return self.base_path.rstrip("/") + suffix

    def api_path(self, client_path: str, api: Api, served_model: str) -> str:
        """`upstream_path`, or Azure's path of `api` on `served_model`'s deployment (the
        client's query is not forwarded to Azure: its own api-version is)."""
        if self.azure is None:
            return self.upstream_path(client_path)
        path = azure_path(self.azure, api, self.model_name(served_model))
        return self.base_path.rstrip("/") + path


def _credential(provider: ProviderConfig, environ: Mapping[str, str]) -> str | None:
    auth = provider.auth
    if auth is None:
        return None
    if provider.keys:  # a pool: the first key stands for the provider
        return _secret(provider.keys[0].env, provider.keys[0].file, environ)
    return _secret(auth.env, auth.file, environ)


def _secret(env: str | None, file: str | None, environ: Mapping[str, str]) -> str | None:
    if env is not None:
        return environ.get(env) or None
    assert file is not None
    try:
        return Path(file).read_text().strip() or None
    except OSError:
        return None


def _pool(
    provider: ProviderConfig, environ: Mapping[str, str], assume: bool, problems: list[str]
) -> tuple[tuple[str, int, str], ...]:
    """Every key of the provider's pool with its credential value; a key without its secret is
    a problem (a pool is configured on purpose: no key goes quietly missing)."""
    assert provider.auth is not None
    out = []
    for i, key in enumerate(provider.keys):
        secret = "<credential>" if assume else _secret(key.env, key.file, environ)
        if secret is None:
            source = f"environment variable {key.env}" if key.env else f"file {key.file}"
            problems.append(f"providers.{provider.name}.keys[{i}]: no credential in {source}")
            continue
        out.append((key.name, key.weight, provider.auth.prefix + secret))
    return tuple(out)


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
        signer: BedrockSigner | None = None
        if provider.schema is Schema.BEDROCK:  # the AWS chain, not a header credential
            aws = None if assume_credentials else _aws_credentials(provider)
            mocked = aws is None and not assume_credentials
            secret = None
            signer = BedrockSigner(aws or mock_credentials(), provider.region)
        elif provider.vertex is not None:
            secret = "<credential>" if assume_credentials else None
            source = provider.vertex.credential_source(environ)
            mocked = source is None and not assume_credentials
        else:
            secret = "<credential>" if assume_credentials else _credential(provider, environ)
            mocked = provider.auth is not None and secret is None
        base_url = provider.base_url
        if mocked:
            if not (config.mock_unconfigured_providers and mock_base_url):
                auth = provider.auth
                if provider.vertex is not None:
                    where = f"providers.{name}.vertex.credentials"
                    source = provider.vertex.describe()
                elif auth is None:  # Bedrock
                    where = f"providers.{name}.auth"
                    source = "the AWS credential chain (environment, profile, web identity)"
                else:
                    where = f"providers.{name}.auth"
                    source = f"environment variable {auth.env}" if auth.env else f"file {auth.file}"
                if name in config.optional_providers:
                    left_out.append(f"{name} ({source})")
                else:
                    problems.append(f"{where}: no credential in {source}")
                continue
            base_url = mock_base_url
        if not base_url:  # an Azure provider whose endpoint variable is not set: as a key
            env = provider.azure.endpoint_env if provider.azure else None
            if name in config.optional_providers:
                left_out.append(f"{name} (its endpoint: environment variable {env})")
            else:
                problems.append(
                    f"providers.{name}.base_url: not set (nor environment variable {env})"
                )
            continue
        host, port, tls, path = _address(base_url)
        vertex = provider.vertex
        auth_header = None if mocked or provider.auth is None else provider.auth.header
        auth_value = None
        if not mocked and provider.auth is not None:
            auth_value = provider.auth.prefix + (secret or "")
        project = None
        if vertex is not None:
            project = vertex.project or (MOCK_PROJECT if mocked else None)
            if mocked:  # the mock verifies its fixed test token, as Vertex verifies a real one
                auth_header, auth_value = "authorization", "Bearer " + MOCK_TOKEN
        if mocked and signer is not None:  # Bedrock's paths start at the root, the mock's too
            path = "/"
        elif mocked and (provider.schema is Schema.GEMINI or provider.azure is not None):
            # The mock's URL is its OpenAI-style root (`.../v1`); Gemini (and Vertex) and Azure
            # paths carry their own version, so they go to the mock's root.
            path = path.removesuffix("/v1") or "/"
        upstreams[name] = Upstream(
            provider=name,
            schema=provider.schema,
            cluster=provider.cluster,
            host=host,
            port=port,
            tls=tls,
            base_path=path,
            auth_header=auth_header,
            auth_value=auth_value,
            mocked=mocked,
            forward=forward_policy(provider.schema, provider.forward_headers, mocked=mocked),
            signer=signer,
            azure=provider.azure,
            vertex=vertex,
            project=project,
            keys=()
            if mocked or not provider.keys
            else _pool(provider, environ, assume_credentials, problems),
        )
    if not upstreams and left_out and not problems:
        problems.append(
            "providers: no provider has its credential: set the key of one of "
            + ", ".join(left_out)
        )
    if problems:
        raise ConfigError(problems)
    return upstreams


def _aws_credentials(provider: ProviderConfig) -> object | None:
    return chain_credentials(instance_metadata=provider.instance_metadata)


def _lacks_credential(provider: ProviderConfig, environ: Mapping[str, str]) -> bool:
    if provider.schema is Schema.BEDROCK:
        return _aws_credentials(provider) is None
    if provider.vertex is not None:
        return provider.vertex.credential_source(environ) is None
    return provider.auth is not None and _credential(provider, environ) is None


def needs_mock(config: GatewayConfig, environ: Mapping[str, str]) -> bool:
    """True when some provider lacks its credential and the config sends it to the mock."""
    return config.mock_unconfigured_providers and any(
        _lacks_credential(p, environ) for p in config.providers.values()
    )
