"""Build the sidecar's shared context from configuration, and swap it atomically on reload.

A reload (SIGHUP, or a change to a watched file such as a mounted secret) parses and validates
everything again; only a fully valid configuration replaces the running one. A bad reload keeps
the last good configuration and logs every problem. Streams already in flight finish with the
context they started with: each context counts its streams, and a replaced one is closed when
its last stream ends (or at shutdown), however long that stream runs. Provider token sources
(Vertex refreshers, Entra ID credentials with their cached tokens) belong to the runtime and
outlive a reload: a context holds the ones it uses, and one no context holds is closed with the
last context that held it; all are closed at shutdown. Envoy's own settings
(listener, clusters) are not reloaded: a change to the provider list needs a restart, and the
sidecar says so. Fallback chains and their policy variants are Envoy clusters too: a reloaded
configuration routes only to the chain clusters the start configuration generated (a request
whose cluster Envoy lacks takes the longest prefix Envoy holds, or the unchained route; never a
503 for a missing cluster; its attempts are counted with the key pools Envoy has), and each
reload names the clusters a restart would add or change (a resized key pool changes its).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway_extproc.admin.auth import admin_identity, data_plane_identity
from gateway_extproc.audit import AuditSink
from gateway_extproc.budgets.alerts import AlertSender, webhooks_of
from gateway_extproc.budgets.gate import BudgetGate, GateSettings
from gateway_extproc.budgets.journal import Journal
from gateway_extproc.budgets.loader import BudgetStoreConfig
from gateway_extproc.budgets.pipe import ScriptPipe
from gateway_extproc.budgets.services import BudgetServices
from gateway_extproc.budgets.store import BudgetStore
from gateway_extproc.cache.service import build_cache
from gateway_extproc.config.fallback import MAX_VARIANTS
from gateway_extproc.config.gateway import GatewayConfig, load_config
from gateway_extproc.config.upstreams import Upstream, resolve_upstreams
from gateway_extproc.errors import ConfigError
from gateway_extproc.extproc.context import GatewayContext
from gateway_extproc.identity.authenticator import Authenticator
from gateway_extproc.identity.devissuer import ensure_dev_issuer
from gateway_extproc.observability.telemetry import Telemetry
from gateway_extproc.providers.azure.entra import EntraTokens
from gateway_extproc.providers.vertex.tokens import TokenSources
from gateway_extproc.response import reaped_audit
from gateway_extproc.sidecar_auth.guard import SidecarAuth
from gateway_extproc.sidecar_auth.settings import load_secrets
from gateway_extproc.spend.rollup import RollupSettings

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


def gate_settings(config: GatewayConfig) -> GateSettings:
    sc = config.budget_store
    return GateSettings(
        deadline_s=sc.deadline_ms / 1000,
        lease_s=float(sc.lease_s),
        breaker_failures=sc.breaker_failures,
        breaker_open_s=sc.breaker_open_s,
        default_max_output_tokens=sc.default_max_output_tokens,
        reap_interval_s=sc.reap_interval_s,
        unseen_input=sc.unseen_input,
        max_inflight=sc.max_inflight,
        queue_timeout_s=sc.queue_timeout_ms / 1000,
    )


def connect_store(
    sc: BudgetStoreConfig, pool_size: int, rollups: RollupSettings | None = None
) -> tuple[BudgetStore, Redis | RedisCluster]:
    """The budget store's Redis client. Socket timeouts bound every call even if a caller forgets
    its deadline; no client-side retries (a dead Redis would otherwise hold a call for ~20 s); a
    pool as large as the calls the services let run at once (they queue the rest)."""
    options: dict[str, object] = {
        "socket_timeout": 2.0,
        "socket_connect_timeout": 1.0,
        "retry": Retry(NoBackoff(), 0),
        "max_connections": pool_size,
    }
    if sc.redis_password is not None:
        options["password"] = sc.redis_password
    client: Redis | RedisCluster
    if sc.cluster:
        client = RedisCluster.from_url(sc.redis_url, **options)
    else:
        client = Redis.from_url(sc.redis_url, **options)  # type: ignore[arg-type]
    pipe = ScriptPipe.for_client(client)  # the scripts' lean path (budgets/pipe.py)
    return BudgetStore(client, sc.key_prefix, rollups=rollups, pipe=pipe), client


def build_services(config: GatewayConfig, journal: Journal | None = None) -> BudgetServices:
    """The process-lifetime budget services; no Redis client when no budget is configured and
    the admin API is off (with one, every billed request's spend is rolled up for reports)."""
    settings = gate_settings(config)
    store: BudgetStore | None = None
    close_client: Callable[[], Awaitable[None]] | None = None
    if config.uses_store:
        store, client = connect_store(config.budget_store, settings.max_inflight, config.spend)

        async def close_both() -> None:
            await store.aclose()
            await client.aclose()

        close_client = close_both
    alerts = AlertSender(webhooks=webhooks_of(config.budgets))
    return BudgetServices(
        store, settings, alerts=alerts, close_client=close_client, journal=journal
    )


def build_gate(config: GatewayConfig, services: BudgetServices | None = None) -> BudgetGate:
    """The budget gate of one configuration, over the running services (or new ones)."""
    if services is None:
        services = build_services(config)
    elif (config.budgets or config.rate_limits) and services.store is None:
        log.warning(
            "budgets or rate limits were added by a reload but the sidecar started without a "
            "budget store: restart it to connect to Redis (until then the budgets' "
            "on_redis_error applies; rate limits admit)"
        )
    return BudgetGate(
        services.store,
        config.budgets,
        config.catalog,
        lambda entry: entry.provider,
        gate_settings(config),
        services=services,
        rate_limits=config.rate_limits,
    )


def watched_files(config_path: Path | None, config: GatewayConfig) -> list[Path]:
    """Files whose change triggers a reload: the config, catalogs, secrets it names."""
    paths = [config_path] if config_path else []
    paths += [Path(f) for f in config.catalog_files]
    paths += [Path(p.auth.file) for p in config.providers.values() if p.auth and p.auth.file]
    paths += [Path(f) for f in config.identity_files]
    return paths


def _stamp(paths: list[Path]) -> tuple[tuple[str, bytes], ...]:
    """What the watched files hold (a digest of each): exact even when a file is rewritten
    within one mtime tick at the same size, as a rotated token or key usually is."""
    out = []
    for path in paths:
        try:
            out.append((str(path), hashlib.sha256(path.read_bytes()).digest()))
        except OSError:
            out.append((str(path), b""))
    return tuple(out)


class Runtime:
    """Holds the current context; `reload()` replaces it only with a valid one."""

    def __init__(
        self,
        ctx: GatewayContext,
        config_path: Path | None,
        environ: Mapping[str, str],
        mock_url: str | None,
    ) -> None:
        self.ctx = ctx
        # Budget store, settlement and fail-open spend: one set for the process, shared by
        # every configuration a reload brings in, closed only at shutdown.
        self.services = ctx.budgets.services
        # A reservation this process's reaper expired gets its one audit record, written with
        # whichever configuration (audit sink, telemetry) is current.
        self.services.on_reaped = lambda reaped, now: reaped_audit.write(self.ctx, reaped, now)
        self._config_path = config_path
        self._environ = environ
        self._mock_url = mock_url
        self._stamp = _stamp(watched_files(config_path, ctx.config))
        # The chain clusters Envoy was generated with: those of the start configuration, the one
        # `gatewayctl run`, the test stack and the chart's init container render envoy.yaml from.
        self.envoy_clusters = ctx.config.fallback.envoy_clusters(ctx.upstreams)
        self._lock = asyncio.Lock()
        # Streams in flight per context (by id: contexts are not hashable), and the contexts
        # a reload replaced while streams were still using them.
        self._streams: dict[int, int] = {}
        self._replaced: dict[int, GatewayContext] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self.accepting = True  # False once a drain stops taking new streams
        self._idle = asyncio.Event()  # set while no stream is in flight
        self._idle.set()
        self.reloads = 0
        self.failed_reloads = 0

    @property
    def mock_url(self) -> str | None:
        """The mock provider's URL (`make run`, tests), for `base_url: mock` settings."""
        return self._mock_url

    async def reload(self, reason: str) -> bool:
        async with self._lock:
            # Stamped before reading: a file that changes while it loads is seen at the next
            # poll and loaded again, so every worker converges on the last version.
            files = watched_files(self._config_path, self.ctx.config)
            stamp = _stamp(files)
            try:
                new = build_context(
                    self._config_path,
                    self._environ,
                    self._mock_url,
                    self.ctx.audit,
                    self.services,
                    self.ctx.telemetry,
                    self.ctx.sidecar_auth,
                    self.ctx.vertex_tokens,
                    self.ctx.entra_tokens,
                )
            except ConfigError as exc:
                self._stamp = stamp  # not retried until a file changes again
                self.failed_reloads += 1
                log.error(
                    "reload (%s) rejected; keeping the running configuration: %s", reason, exc
                )
                return False
            if set(new.upstreams) != set(self.ctx.upstreams):
                log.warning("the provider list changed: restart Envoy to apply its clusters")
            fallback = new.config.fallback.pinned(self.envoy_clusters)
            new = dataclasses.replace(
                new, config=dataclasses.replace(new.config, fallback=fallback)
            )
            if missing := fallback.missing(new.upstreams):
                log.warning(
                    "the fallback chains, their policy variants or key pools changed: Envoy has "
                    "no cluster %s; regenerate Envoy's config and restart Envoy to apply them "
                    "(until then their requests take the longest chain prefix Envoy has, or the "
                    "model's own route)",
                    ", ".join(missing),
                )
            await start_context(new)
            old, self.ctx = self.ctx, new
            new_files = watched_files(self._config_path, new.config)
            self._stamp = stamp if new_files == files else _stamp(new_files)
            self.reloads += 1
            log.info("configuration reloaded (%s)", reason)
            if id(old) in self._streams:
                self._replaced[id(old)] = old  # closed when its last stream ends
            else:
                self._retire(old)
            return True

    @contextlib.contextmanager
    def stream(self) -> Iterator[GatewayContext]:
        """The current context, for one ext_proc stream: it stays open until the stream ends,
        even if a reload replaces it meanwhile."""
        ctx = self.ctx
        key = id(ctx)
        self._streams[key] = self._streams.get(key, 0) + 1
        self._idle.clear()
        try:
            yield ctx
        finally:
            self._streams[key] -= 1
            if self._streams[key] == 0:
                del self._streams[key]
                if self._replaced.pop(key, None) is not None:
                    self._retire(ctx)
                if not self._streams:
                    self._idle.set()

    async def streams_ended(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for every stream in flight to end; True if they all did."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    @property
    def streams_in_flight(self) -> int:
        return sum(self._streams.values())

    def _retire(self, old: GatewayContext) -> None:
        task = asyncio.create_task(close_context(old))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def watch(self, interval_s: float) -> None:
        """Reload when a watched file changes (mounted secrets are updated in place). Each
        worker polls on its own, so a change (a revoked token) is in effect on every worker
        within `interval_s` plus the time one reload takes."""
        while True:
            await asyncio.sleep(interval_s)
            if _stamp(watched_files(self._config_path, self.ctx.config)) != self._stamp:
                await self.reload("a watched file changed")

    async def reap_forever(self) -> None:
        """Charge reservations of dead sidecars, with whichever configuration is current."""
        while True:
            await asyncio.sleep(self.ctx.budgets.settings.reap_interval_s)
            await self.ctx.budgets.reap_once()

    async def start(self) -> None:
        await self.services.start()
        await start_context(self.ctx)

    async def close(self, grace_s: float = 5.0) -> None:
        """At shutdown, after the server stopped: close every context, replaced ones included,
        then the provider token sources and the process-lifetime budget services (pending
        settles get up to `grace_s`, what is left is journaled)."""
        for old in self._replaced.values():
            self._retire(old)
        self._replaced.clear()
        if self._retiring:
            await asyncio.wait(list(self._retiring))
        self.ctx.vertex_tokens.stop()
        await close_context(self.ctx)
        await self.ctx.entra_tokens.close()  # any a context still held (none, normally)
        await self.services.close(grace_s)


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
