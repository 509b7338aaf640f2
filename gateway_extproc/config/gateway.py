"""Gateway configuration: parsed once, validated whole, every problem reported with its path.

The environment is read only when `load_config` is called with it, never at import time.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import yaml

from gateway_extproc.admin.auth import DEV_ISSUER_NAME, caller_problems
from gateway_extproc.admin.settings import AdminApiConfig, parse_admin_api, parse_spend
from gateway_extproc.budgets.loader import (
    BudgetStoreConfig,
    downgrade_problems,
    parse_budget_store,
)
from gateway_extproc.budgets.model import BudgetConfig
from gateway_extproc.budgets.ratelimits.model import RateLimitConfig
from gateway_extproc.budgets.ratelimits.settings import parse_rate_limits
from gateway_extproc.budgets.settings import parse_budgets
from gateway_extproc.cache.settings import CacheConfig, parse_cache
from gateway_extproc.catalog.models import Catalog
from gateway_extproc.config.fallback import (
    FallbackConfig,
    parse_fallback,
    with_pools,
    with_suffixes,
    with_variants,
)
from gateway_extproc.config.login import LoginConfig, parse_login
from gateway_extproc.config.metering import MeteringConfig, parse_metering
from gateway_extproc.config.namespaces import namespace_problems
from gateway_extproc.config.providers import ProviderConfig, parse_provider
from gateway_extproc.config.reader import Reader
from gateway_extproc.errors import ConfigError
from gateway_extproc.guardrails import Guardrails, parse_guardrails
from gateway_extproc.identity.dev_oidc_requests import DEFAULT_PORT as DEV_IDP_DEFAULT_PORT
from gateway_extproc.identity.dev_oidc_requests import PORT_ENV as DEV_IDP_PORT_ENV
from gateway_extproc.identity.devissuer import ALLOW_ENV as DEV_ISSUER_ALLOW_ENV
from gateway_extproc.identity.devissuer import DEV_AUDIENCE, DEV_ISSUER
from gateway_extproc.identity.model import IdentityConfig, IssuerConfig
from gateway_extproc.identity.policy import PolicySet, parse_policies
from gateway_extproc.identity.settings import parse_identity
from gateway_extproc.observability.settings import ObservabilityConfig, parse_observability
from gateway_extproc.reconcile.settings import ReconcileSettings, parse_reconcile
from gateway_extproc.sidecar_auth.settings import KEYS as SIDECAR_AUTH_KEYS
from gateway_extproc.sidecar_auth.settings import SidecarAuthConfig, parse_sidecar_auth
from gateway_extproc.spend.rollup import RollupSettings
from gateway_extproc.ui.settings import SpendPageConfig, page_problems, parse_spend_page

# What Envoy does with a request header whose name has an underscore (its
# `headers_with_underscores_action`): some servers read `x_api_key` as `x-api-key`.
UNDERSCORE_ACTIONS = ("reject", "drop", "allow")


@dataclasses.dataclass(frozen=True)
class Limits:
    max_request_body_bytes: int = 32 * 1024 * 1024
    ext_proc_message_timeout_ms: int = 5000
    guardrail_scan_timeout_ms: int = 1000  # below the message timeout (guardrails/scan.py)
    stream_idle_timeout_s: int = 600
    upstream_connect_timeout_s: int = 10
    max_downstream_connections: int = 10000
    # Structural caps on a request body, checked before it is parsed (gateway_extproc/jsonshape).
    max_json_depth: int = 128  # below orjson's re-serialisation limit (255 levels)
    max_json_values: int = 200_000  # array elements + object members; bounds the parse
    # Envoy at the edge (envoy/edge.py; README "Envoy settings and why").
    first_byte_timeout_s: int = 10  # a connection that sends nothing is closed
    request_headers_timeout_s: int = 10  # from the first byte of a request to its last header
    request_timeout_s: int = 300  # the whole request received (32 MiB at ~1 Mbit/s); 0: off
    connection_idle_timeout_s: int = 75  # a connection without a request in flight
    http2_max_concurrent_streams: int = 100
    http2_connection_window_bytes: int = 1 << 20
    headers_with_underscores: str = "reject"  # reject (400), drop, allow
    envoy_memory_limit_bytes: int = 0  # overload manager's bound; 0: the container's cgroup limit


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    listen_host: str
    listen_port: int
    admin_port: int
    limits: Limits
    sidecar_host: str
    sidecar_port: int  # the first worker's port; worker i listens on port + i (0: any free)
    drain_s: float
    grace_s: float
    providers: dict[str, ProviderConfig]
    mock_unconfigured_providers: bool
    catalog: Catalog
    audit_stdout: bool
    audit_file: str | None
    identity: IdentityConfig = dataclasses.field(default_factory=IdentityConfig)
    policies: PolicySet = dataclasses.field(default_factory=PolicySet.allow_all)
    dev_issuer: bool = False  # accept tokens from the local development issuer (make run)
    dev_idp_port: int = DEV_IDP_DEFAULT_PORT  # gatewayctl run's dev IdP, with dev_issuer (0: any)
    reload_poll_s: float = 10.0  # 0: reload on SIGHUP only
    health_check_interval_s: float = 1.0  # Envoy's gRPC health checks of each worker
    health_check_unhealthy_threshold: int = 2  # unanswered checks before Envoy stops using it
    sidecar_workers: int = 1  # sidecar processes behind Envoy's ext_proc cluster
    catalog_files: tuple[str, ...] = ()
    identity_files: tuple[str, ...] = ()  # static_tokens_file, hs_secret files
    budgets: tuple[BudgetConfig, ...] = ()
    budget_store: BudgetStoreConfig = dataclasses.field(default_factory=BudgetStoreConfig)
    rate_limits: tuple[RateLimitConfig, ...] = ()
    admin_api: AdminApiConfig = dataclasses.field(default_factory=AdminApiConfig)
    spend: RollupSettings = dataclasses.field(default_factory=RollupSettings)
    # The spend page (ui/), served by worker 0 through the admin API's JSON listener.
    spend_page: SpendPageConfig = dataclasses.field(default_factory=SpendPageConfig)
    reconcile: ReconcileSettings = dataclasses.field(default_factory=ReconcileSettings)
    observability: ObservabilityConfig = dataclasses.field(default_factory=ObservabilityConfig)
    metering: MeteringConfig = dataclasses.field(default_factory=MeteringConfig)
    guardrails: Guardrails = dataclasses.field(default_factory=Guardrails)
    cache: CacheConfig = dataclasses.field(default_factory=CacheConfig)
    # Who may call the sidecar: Envoy's token, the state MAC keys, TLS (sidecar_auth/).
    sidecar_auth: SidecarAuthConfig = dataclasses.field(default_factory=SidecarAuthConfig)
    # Built-in providers the operator's file does not name: one without its key (and no mock to
    # serve it) is left out instead of stopping the gateway (config/upstreams.py).
    optional_providers: frozenset[str] = frozenset()
    # Fallback chains: the targets Envoy tries in order when one fails (config/fallback.py).
    fallback: FallbackConfig = dataclasses.field(default_factory=FallbackConfig)
    # How people sign in for a gateway token (gatewayctl login), published by Envoy at
    # /.well-known/llm-gateway (config/login.py); None: no `login:` section.
    login: LoginConfig | None = None

    @property
    def uses_store(self) -> bool:
        """Whether the sidecar needs Redis: budgets, rate limits, the admin API or key pools
        (their cooldowns, budgets/keycool.py)."""
        pools = any(len(p.keys) > 1 for p in self.providers.values())
        return bool(self.budgets or self.rate_limits) or self.admin_api.enabled or pools

    @property
    def unhealthy_after_s(self) -> float:
        """How long Envoy may take to stop sending new streams to a worker that turned
        NOT_SERVING: the next check (within one interval) sees it and takes the worker out
        at once; `threshold` more intervals of slack cover checks that time out while the
        worker is busy."""
        return self.health_check_interval_s * (self.health_check_unhealthy_threshold + 1)


def _default_document() -> dict[str, Any]:
    text = (
        importlib.resources.files("gateway_extproc.config")
        .joinpath("default_config.yaml")
        .read_text()
    )
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


# Mappings that an operator file replaces whole: merging `auth: {file: ...}` into a built-in
# `auth: {env: ...}` would leave both set.
_REPLACED_WHOLE = frozenset({"auth", "credentials"})  # a provider's key, Vertex's credentials


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key (except `auth` and `credentials`, replaced whole); anything
    else in `override` replaces; None deletes a mapping."""
    out = dict(base)
    for key, value in override.items():
        if value is None and key in out and isinstance(out[key], Mapping):
            del out[key]
        elif (
            key not in _REPLACED_WHOLE
            and isinstance(value, Mapping)
            and isinstance(out.get(key), Mapping)
        ):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _identity_files(doc: object) -> tuple[str, ...]:
    """Secret files the identity section reads (a reload watches them)."""
    if not isinstance(doc, Mapping):
        return ()
    files = [doc.get("static_tokens_file")]
    issuers = doc.get("issuers")
    if isinstance(issuers, Mapping):
        for issuer in issuers.values():
            secret = issuer.get("hs_secret") if isinstance(issuer, Mapping) else None
            files.append(secret.get("file") if isinstance(secret, Mapping) else None)
    return tuple(f for f in files if isinstance(f, str) and f)


def parse_config(
    doc: Mapping[str, Any],
    environ: Mapping[str, str],
    *,
    named_providers: Collection[str] | None = None,
) -> GatewayConfig:
    """Validate a merged document; raise ConfigError listing every problem. `named_providers`:
    the providers the operator's file names (None: all of them - every key is required)."""
    r = Reader()
    known = {"listener", "limits", "sidecar", "providers", "mock_unconfigured_providers"}
    known |= {"catalog", "audit", "identity", "policies", "budgets", "budget_store"}
    known |= {"admin_api", "spend", "spend_page", "rate_limits", "reconcile"}
    known |= {"observability", "metering", "guardrails", "cache", "fallback", "login"}
    for extra in sorted(set(doc) - known):
        r.problems.append(f"{extra}: unknown key")
    listener = r.section(doc, "listener", {"host", "port", "admin_port"})
    limits_doc = r.section(doc, "limits", {f.name for f in dataclasses.fields(Limits)})
    sidecar = r.section(
        doc,
        "sidecar",
        {
            "host",
            "port",
            "workers",
            "drain_s",
            "grace_s",
            "reload_poll_s",
            "health_check_interval_s",
            "health_check_unhealthy_threshold",
            *SIDECAR_AUTH_KEYS,
        },
    )
    workers = r.integer({"workers": sidecar.get("workers", 0)}, "sidecar", "workers", 0, 256)
    audit = r.section(doc, "audit", {"stdout", "file"})
    catalog_doc = r.section(doc, "catalog", {"files"})

    port = listener.get("port")
    if "GATEWAY_PORT" in environ:
        try:
            port = int(environ["GATEWAY_PORT"])
        except ValueError:
            r.problems.append(f"GATEWAY_PORT: must be an integer (got {environ['GATEWAY_PORT']!r})")
    listen_port = r.integer({"port": port}, "listener", "port", 0, 65535)
    limits = Limits(
        max_request_body_bytes=r.integer(
            limits_doc, "limits", "max_request_body_bytes", 1024, 512 * 1024 * 1024
        ),
        ext_proc_message_timeout_ms=r.integer(
            limits_doc, "limits", "ext_proc_message_timeout_ms", 50, 3_600_000
        ),
        stream_idle_timeout_s=r.integer(limits_doc, "limits", "stream_idle_timeout_s", 1, 86_400),
        upstream_connect_timeout_s=r.integer(
            limits_doc, "limits", "upstream_connect_timeout_s", 1, 600
        ),
        max_downstream_connections=r.integer(
            limits_doc, "limits", "max_downstream_connections", 1, 10_000_000
        ),
        max_json_depth=r.integer(limits_doc, "limits", "max_json_depth", 2, 254),
        max_json_values=r.integer(limits_doc, "limits", "max_json_values", 100, 100_000_000),
        **_edge_limits(r, limits_doc),
    )
    limits = dataclasses.replace(limits, guardrail_scan_timeout_ms=_scan_timeout(r, limits_doc))

    providers: dict[str, ProviderConfig] = {}
    providers_doc = doc.get("providers")
    if not isinstance(providers_doc, Mapping) or not providers_doc:
        r.problems.append("providers: must name at least one provider")
    else:
        for name, pdoc in providers_doc.items():
            if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
                r.problems.append(f"providers.{name}: name must be letters, digits, - and _")
                continue
            provider = parse_provider(r, name, pdoc, environ)
            if provider is not None:
                providers[name] = provider

    catalog_files = catalog_doc.get("files") or []
    catalog: Catalog | None = None
    if not isinstance(catalog_files, list) or not all(isinstance(f, str) for f in catalog_files):
        r.problems.append("catalog.files: must be a list of paths")
    else:
        try:
            catalog = Catalog.load([Path(f) for f in catalog_files])
        except ConfigError as exc:
            r.problems.extend(exc.problems)
        except OSError as exc:
            r.problems.append(f"catalog.files: {exc}")
    if catalog is not None and providers:
        # Shipped models of a provider the config does not have (removed, or opt-in such as
        # bedrock) are dropped; an operator file's models must name a configured provider.
        unconfigured = {e.provider for e in catalog.models()} - set(providers)
        catalog = catalog.without_shipped_models_of(unconfigured)
        r.problems.extend(catalog.validate_providers(providers))
        for entry in catalog.models():
            provider = providers.get(entry.provider)
            if provider is not None and entry.schema not in provider.speaks:
                speaks = " and ".join(sorted(s.value for s in provider.speaks))
                r.problems.append(
                    f"catalog: models.{entry.name}: schema {entry.schema.value} but provider "
                    f"{entry.provider} speaks {speaks}"
                )

    identity_doc = doc.get("identity")
    dev_issuer = False
    dev_idp_port = DEV_IDP_DEFAULT_PORT
    if isinstance(identity_doc, Mapping) and "dev_issuer" in identity_doc:
        dev_issuer = r.boolean(identity_doc, "identity", "dev_issuer", False)
    if isinstance(identity_doc, Mapping):
        dev_idp_port = _dev_idp_port(r, identity_doc, environ, dev_issuer)
        dev_keys = ("dev_issuer", "dev_idp_port")
        identity_doc = {k: v for k, v in identity_doc.items() if k not in dev_keys}
    if dev_issuer and environ.get(DEV_ISSUER_ALLOW_ENV) != "1":
        r.problems.append(
            "identity.dev_issuer: the local development issuer is for gatewayctl run (make run) "
            "only: anyone who can read its key directory can mint any identity. Remove it, or "
            f"set {DEV_ISSUER_ALLOW_ENV}=1 in the environment to allow it deliberately"
        )
    identity = parse_identity(identity_doc, environ, r.problems)
    identity_files = _identity_files(identity_doc)
    policies = parse_policies(doc.get("policies"), r.problems)

    budgets = parse_budgets(doc.get("budgets"), r.problems)
    rate_limits = parse_rate_limits(doc.get("rate_limits"), r.problems)
    r.problems.extend(namespace_problems(identity, doc.get("policies"), budgets))
    guardrails = Guardrails(parse_guardrails(doc.get("guardrails"), r.problems))
    r.problems.extend(namespace_problems(identity, None, rate_limits, "rate_limits"))
    if catalog is not None:
        r.problems.extend(downgrade_problems(budgets, catalog))
    store_doc = r.section(
        doc,
        "budget_store",
        {f.name for f in dataclasses.fields(BudgetStoreConfig)} | {"estimate_max_output_tokens"},
    )
    budget_store = parse_budget_store(store_doc, environ, r.problems)

    fallback = parse_fallback(doc.get("fallback"), catalog, set(providers), r.problems)
    fallback = with_variants(fallback, policies)  # clusters without a forbidden target
    pools = {name: len(p.keys) for name, p in providers.items() if len(p.keys) > 1}
    fallback = with_pools(fallback, pools, catalog)  # a one-target chain has no variant
    fallback = with_suffixes(fallback)  # a cooling head skipped (request/chain.py)

    audit_file = environ.get("GATEWAY_AUDIT_LOG") or audit.get("file")
    if audit_file is not None and not isinstance(audit_file, str):
        r.problems.append("audit.file: must be a path or null")
        audit_file = None
    config = GatewayConfig(
        listen_host=r.string(listener, "listener", "host"),
        listen_port=listen_port,
        admin_port=r.integer(listener, "listener", "admin_port", 0, 65535),
        limits=limits,
        sidecar_host=r.string(sidecar, "sidecar", "host"),
        sidecar_port=r.integer(sidecar, "sidecar", "port", 0, 65535),
        drain_s=r.number(sidecar, "sidecar", "drain_s", 3.0),
        grace_s=r.number(sidecar, "sidecar", "grace_s", 600.0),
        providers=providers,
        mock_unconfigured_providers=r.boolean(doc, "", "mock_unconfigured_providers", True),
        catalog=catalog if catalog is not None else Catalog.from_documents([]),
        audit_stdout=r.boolean(audit, "audit", "stdout", True),
        audit_file=audit_file or None,
        identity=identity,
        policies=policies,
        dev_issuer=dev_issuer,
        dev_idp_port=dev_idp_port,
        reload_poll_s=r.number(sidecar, "sidecar", "reload_poll_s", 10.0),
        health_check_interval_s=_interval(r, sidecar),
        health_check_unhealthy_threshold=r.integer(
            sidecar, "sidecar", "health_check_unhealthy_threshold", 1, 100
        ),
        sidecar_workers=workers or (os.cpu_count() or 1),
        catalog_files=tuple(catalog_files) if isinstance(catalog_files, list) else (),
        identity_files=identity_files,
        budgets=budgets,
        budget_store=budget_store,
        rate_limits=rate_limits,
        admin_api=parse_admin_api(doc.get("admin_api"), r.problems),
        spend=parse_spend(doc.get("spend"), r.problems),
        spend_page=parse_spend_page(doc.get("spend_page"), r.problems),
        reconcile=parse_reconcile(doc.get("reconcile"), r.problems),
        observability=parse_observability(doc.get("observability"), r.problems),
        metering=parse_metering(r, doc),
        guardrails=guardrails,
        cache=parse_cache(doc.get("cache"), r.problems),
        sidecar_auth=parse_sidecar_auth(sidecar, r.problems),
        optional_providers=frozenset()
        if named_providers is None
        else (frozenset(_default_document()["providers"]) & set(providers)) - set(named_providers),
        fallback=fallback,
        login=parse_login(doc.get("login"), _with_dev_issuer(identity, dev_issuer), r.problems),
    )
    if config.reconcile.enabled and config.spend.timezone != "UTC":
        r.problems.append(
            "reconcile: the providers' reports are kept per UTC day, so the rollups must be too "
            f"(spend.timezone is {config.spend.timezone!r}; set it to UTC to reconcile)"
        )
    r.problems.extend(caller_problems(config.admin_api, identity, dev_issuer))
    r.problems.extend(
        page_problems(config.spend_page, identity, config.admin_api.enabled, dev_issuer)
    )
    if r.problems:
        raise ConfigError(r.problems)
    return config


def _edge_limits(r: Reader, doc: Mapping[str, Any]) -> dict[str, Any]:
    """The `limits` keys that shape Envoy at the edge (envoy/edge.py)."""

    def whole(key: str, lo: int, hi: int) -> int:
        return r.integer(doc, "limits", key, lo, hi)

    underscores = doc.get("headers_with_underscores")
    if underscores not in UNDERSCORE_ACTIONS:
        r.problems.append(
            "limits.headers_with_underscores: must be one of "
            f"{', '.join(UNDERSCORE_ACTIONS)} (got {underscores!r})"
        )
        underscores = Limits.headers_with_underscores
    return {
        "first_byte_timeout_s": whole("first_byte_timeout_s", 1, 600),
        "request_headers_timeout_s": whole("request_headers_timeout_s", 1, 3600),
        "request_timeout_s": whole("request_timeout_s", 0, 86_400),
        "connection_idle_timeout_s": whole("connection_idle_timeout_s", 1, 86_400),
        "http2_max_concurrent_streams": whole("http2_max_concurrent_streams", 1, 2**31 - 1),
        "http2_connection_window_bytes": whole("http2_connection_window_bytes", 65_535, 2**31 - 1),
        "headers_with_underscores": underscores,
        "envoy_memory_limit_bytes": whole("envoy_memory_limit_bytes", 0, 1 << 50),
    }


def _scan_timeout(r: Reader, limits: Mapping[str, Any]) -> int:
    """`limits.guardrail_scan_timeout_ms`: below the message timeout, whose answer the scan is
    part of; by default 1 s, or half the message timeout when that is shorter."""
    message_ms = limits.get("ext_proc_message_timeout_ms", Limits.ext_proc_message_timeout_ms)
    if not isinstance(message_ms, int) or message_ms < 50:
        return Limits.guardrail_scan_timeout_ms  # reported as the message timeout's problem
    key = "guardrail_scan_timeout_ms"
    if key not in limits:
        return min(Limits.guardrail_scan_timeout_ms, message_ms // 2)
    value = r.integer(limits, "limits", key, 10, 3_600_000)
    if value >= message_ms:
        r.problems.append(
            f"limits.{key}: must be below limits.ext_proc_message_timeout_ms ({message_ms}): "
            "the scan is part of one message's answer"
        )
    return value


def _interval(r: Reader, sidecar: Mapping[str, Any]) -> float:
    value = r.number(sidecar, "sidecar", "health_check_interval_s", 1.0)
    if not 0.01 <= value <= 300:
        r.problems.append(
            f"sidecar.health_check_interval_s: must be in [0.01, 300] seconds (got {value!r})"
        )
        return 1.0
    return value


def _operator_document(path: Path | None) -> Mapping[str, Any]:
    if path is None:
        return {}
    try:
        user = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError([f"{path}: {exc}"]) from exc
    if user is None:
        return {}
    if not isinstance(user, Mapping):
        raise ConfigError([f"{path}: must be a mapping at the top level"])
    return user


def load_document(path: Path | None) -> dict[str, Any]:
    """The built-in document with the operator file (if any) merged over it."""
    return merge(_default_document(), _operator_document(path))


def load_config(path: Path | None, environ: Mapping[str, str]) -> GatewayConfig:
    """The operator file over the built-in document, validated. A built-in provider the file
    does not name is optional (GatewayConfig.optional_providers)."""
    user = _operator_document(path)
    named = user.get("providers")
    return parse_config(
        merge(_default_document(), user),
        environ,
        named_providers=list(named) if isinstance(named, Mapping) else [],
    )


def _dev_idp_port(
    r: Reader, identity: Mapping[str, Any], environ: Mapping[str, str], dev_issuer: bool
) -> int:
    """`identity.dev_idp_port` (GATEWAY_DEV_IDP_PORT wins): the loopback port of the
    development IdP that gatewayctl run serves beside the dev issuer; 0 takes any free port."""
    if not dev_issuer:
        if "dev_idp_port" in identity:
            r.problems.append("identity.dev_idp_port: only with identity.dev_issuer: true")
        return DEV_IDP_DEFAULT_PORT
    port = identity.get("dev_idp_port", DEV_IDP_DEFAULT_PORT)
    if DEV_IDP_PORT_ENV in environ:
        try:
            port = int(environ[DEV_IDP_PORT_ENV])
        except ValueError:
            r.problems.append(
                f"{DEV_IDP_PORT_ENV}: must be an integer (got {environ[DEV_IDP_PORT_ENV]!r})"
            )
            return DEV_IDP_DEFAULT_PORT
    return r.integer({"dev_idp_port": port}, "identity", "dev_idp_port", 0, 65535)


def _with_dev_issuer(identity: IdentityConfig, dev_issuer: bool) -> IdentityConfig:
    """With `identity.dev_issuer`, the identity issuers plus the local development issuer (name
    `dev`; the runtime adds the real one, with its key), so `login.issuer: dev` can name it and
    `gatewayctl login` runs against the dev IdP `gatewayctl run` serves."""
    if not dev_issuer:
        return identity
    dev = IssuerConfig(
        name=DEV_ISSUER_NAME, issuer=DEV_ISSUER, audiences=(DEV_AUDIENCE,), algorithms=("ES256",)
    )
    return dataclasses.replace(identity, issuers=(*identity.issuers, dev))
