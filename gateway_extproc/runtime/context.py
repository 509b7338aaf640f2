"""The sidecar's shared context, built from one configuration: its upstreams with their provider
token sources attached, the authenticators (with the local development issuer under `make run`),
the budget gate over the process's budget services (runtime/services.py), the response cache
and the audit sink. Every problem is reported at once (ConfigError); `start_context` and
`close_context` open and release what one context holds."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path

from gateway_extproc.admin.auth import admin_identity, data_plane_identity
from gateway_extproc.audit import AuditSink
from gateway_extproc.budgets.services import BudgetServices
from gateway_extproc.cache.service import build_cache
from gateway_extproc.config.fallback import MAX_VARIANTS
from gateway_extproc.config.gateway import load_config
from gateway_extproc.config.upstreams import Upstream, resolve_upstreams
from gateway_extproc.errors import ConfigError
from gateway_extproc.extproc.context import GatewayContext
from gateway_extproc.identity.authenticator import Authenticator
from gateway_extproc.identity.devissuer import ensure_dev_issuer
from gateway_extproc.observability.telemetry import Telemetry
from gateway_extproc.providers.azure.entra import EntraTokens
from gateway_extproc.providers.vertex.tokens import TokenSources
from gateway_extproc.runtime.services import build_gate
from gateway_extproc.sidecar_auth.guard import SidecarAuth
from gateway_extproc.sidecar_auth.settings import load_secrets

log = logging.getLogger("gateway.runtime")

# Top-level claims of development tokens recorded as attributes (gatewayctl token --attr).
DEV_ATTRIBUTES = ("department", "cost_center", "team")


def build_context(
    config_path: Path | None,
    environ: Mapping[str, str],
    mock_url: str | None,
    audit: AuditSink | None = None,
    services: BudgetServices | None = None,
    telemetry: Telemetry | None = None,
    sidecar_auth: SidecarAuth | None = None,
    vertex_tokens: TokenSources | None = None,
    entra_tokens: EntraTokens | None = None,
) -> GatewayContext:
    """Everything the processors share. Raises ConfigError listing every problem.

    `services` (the budget store, settlement, fail-open journal) and `sidecar_auth` (the caller
    check and state keys) outlive a reload: the runtime passes the running ones; without them
    (the first build, tests) new ones are made - the caller secrets read now. The token
    sources (`vertex_tokens`, `entra_tokens`) are the runtime's too; the context holds the
    Entra ID ones its upstreams use until `close_context` releases them."""
    config = load_config(config_path, environ)
    problems: list[str] = []
    try:
        upstreams = resolve_upstreams(config, environ, mock_url)
    except ConfigError as exc:
        problems += exc.problems
    if sidecar_auth is None:
        try:
            sidecar_auth = SidecarAuth.of(load_secrets(config.sidecar_auth, environ))
        except ConfigError as exc:
            problems += exc.problems
    if vertex_tokens is None:
        vertex_tokens = TokenSources()
    if not problems:
        problems += _attach_vertex_tokens(upstreams, vertex_tokens, environ)
        if problems:  # some Vertex provider failed: the others' holds are given back
            vertex_tokens.release(up.tokens for up in upstreams.values() if up.tokens is not None)
    if problems:
        raise ConfigError(problems)
    assert sidecar_auth is not None
    identity = config.identity
    if config.dev_issuer:
        run_dir = Path(environ.get("GATEWAY_RUN_DIR") or ".run")
        dev = ensure_dev_issuer(run_dir / "dev-issuer")
        identity = dataclasses.replace(
            identity, issuers=(*identity.issuers, dev.issuer_config(DEV_ATTRIBUTES))
        )
        log.warning("accepting tokens from the local development issuer (%s)", dev.jwks_path)
    for up in upstreams.values():
        if up.mocked:
            log.warning("provider %s has no credential: served by the mock provider", up.provider)
    for name in sorted(config.providers.keys() - upstreams.keys()):
        log.warning(
            "provider %s left out: it has no credential and the configuration does not name it; "
            "its models answer 'no configured provider'",
            name,
        )
    authenticator = Authenticator(data_plane_identity(identity, config.admin_api))
    admin_authenticator = None
    if config.admin_api.enabled:
        admin_authenticator = Authenticator(
            admin_identity(identity, config.admin_api), jwks=authenticator.jwks
        )
    names = [n for e in config.catalog.models() for n in (e.name, *e.aliases)]
    for pattern in config.policies.unmatched_patterns(names):
        log.warning("policy pattern %r matches no model in the catalog", pattern)
    for model in config.fallback.too_many_variants:
        log.warning(
            "fallback.chains.%s: the policies allow more than %d different sets of its targets; "
            "no variant is generated, so a target a caller's policy forbids cuts the chain "
            "before it",
            model,
            MAX_VARIANTS,
        )
    audit = audit or AuditSink(stdout=config.audit_stdout, path=config.audit_file)
    budgets = build_gate(config, services)
    cache = build_cache(config.cache, config.budget_store)
    if entra_tokens is None:
        entra_tokens = EntraTokens()
    _attach_entra_tokens(upstreams, entra_tokens)  # last: nothing can fail after the holds
    return GatewayContext(
        config=config,
        catalog=config.catalog,
        upstreams=upstreams,
        audit=audit,
        authenticator=authenticator,
        budgets=budgets,
        sidecar_auth=sidecar_auth,
        telemetry=telemetry or Telemetry(),
        cache=cache,
        admin_authenticator=admin_authenticator,
        vertex_tokens=vertex_tokens,
        entra_tokens=entra_tokens,
    )


def _attach_entra_tokens(upstreams: dict[str, Upstream], sources: EntraTokens) -> None:
    """Each Azure upstream on Entra ID gets its provider's token source, held for this context:
    the one the running configuration uses when the provider stays on Entra ID (its cached
    token, backoff and credential kept), else a new one."""
    for name, up in upstreams.items():
        if up.azure is not None and up.azure.entra_id and not up.mocked:
            upstreams[name] = dataclasses.replace(up, token=sources.hold(name))


def _attach_vertex_tokens(
    upstreams: dict[str, Upstream], sources: TokenSources, environ: Mapping[str, str]
) -> list[str]:
    """Each Vertex upstream with credentials gets its token source (started: the first token is
    fetched in the background) and, when the config names none, the credentials' project."""
    problems: list[str] = []
    for name, up in upstreams.items():
        if up.vertex is None or up.mocked:
            continue
        try:
            tokens, project = sources.get(up.vertex, environ)
        except Exception as exc:  # google-auth raises many kinds: report the kind
            problems.append(
                f"providers.{name}.vertex.credentials: cannot read the Google credentials "
                f"({type(exc).__name__})"
            )
            continue
        project = up.project or project
        if not project:
            problems.append(
                f"providers.{name}.vertex.project: not set, and the credentials name no project"
            )
            continue
        upstreams[name] = dataclasses.replace(up, tokens=tokens, project=project)
    return problems


async def start_context(ctx: GatewayContext) -> None:
    await ctx.authenticator.start()
    await ctx.budgets.start()


async def close_context(ctx: GatewayContext) -> None:
    await ctx.pending_ends.drain()  # their settles and cache stores use this context
    await ctx.budgets.close()
    await ctx.cache.close()
    await ctx.authenticator.close()
    # Its token sources: stopped or closed here unless a later configuration holds them too.
    ctx.vertex_tokens.release(up.tokens for up in ctx.upstreams.values() if up.tokens is not None)
    await ctx.entra_tokens.release(
        (name, up.token) for name, up in ctx.upstreams.items() if up.token is not None
    )
