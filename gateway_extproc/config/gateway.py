"""Gateway configuration: parsed once, validated whole, every problem reported with its path.

The environment is read only when `load_config` is called with it, never at import time. Each
section is parsed by its own module (`limits`, `providers`, `catalog`, `identity`, `fallback`,
and the concerns' `settings` modules); this one assembles them and checks what spans several.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from gateway_extproc.admin.auth import caller_problems
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
from gateway_extproc.config.catalog import parse_catalog
from gateway_extproc.config.document import (
    default_document,
    load_document,
    merge,
    operator_document,
)
from gateway_extproc.config.fallback import (
    FallbackConfig,
    with_pools,
    with_suffixes,
    with_variants,
)
from gateway_extproc.config.fallback_settings import parse_fallback
from gateway_extproc.config.identity import parse_identity_section, with_dev_issuer
from gateway_extproc.config.limits import Limits, parse_limits
from gateway_extproc.config.login import LoginConfig, parse_login
from gateway_extproc.config.metering import MeteringConfig, parse_metering
from gateway_extproc.config.namespaces import namespace_problems
from gateway_extproc.config.providers import ProviderConfig, parse_providers
from gateway_extproc.config.reader import Reader
from gateway_extproc.errors import ConfigError
from gateway_extproc.guardrails import Guardrails, parse_guardrails
from gateway_extproc.identity.dev_oidc_requests import DEFAULT_PORT as DEV_IDP_DEFAULT_PORT
from gateway_extproc.identity.model import IdentityConfig
from gateway_extproc.identity.policy import PolicySet, parse_policies
from gateway_extproc.observability.settings import ObservabilityConfig, parse_observability
from gateway_extproc.reconcile.settings import ReconcileSettings, parse_reconcile
from gateway_extproc.sidecar_auth.settings import KEYS as SIDECAR_AUTH_KEYS
from gateway_extproc.sidecar_auth.settings import SidecarAuthConfig, parse_sidecar_auth
from gateway_extproc.spend.rollup import RollupSettings
from gateway_extproc.ui.settings import SpendPageConfig, page_problems, parse_spend_page

# Callers import these from here, as they always did (each lives beside its section now).
__all__ = [
    "GatewayConfig",
    "Limits",
    "load_config",
    "load_document",
    "merge",
    "parse_config",
]


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
    limits = parse_limits(r, limits_doc)
    providers = parse_providers(r, doc.get("providers"), environ)
    catalog, catalog_files = parse_catalog(r, catalog_doc, providers)
    identity_section = parse_identity_section(r, doc.get("identity"), environ)
    identity, dev_issuer = identity_section.identity, identity_section.dev_issuer
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
        dev_idp_port=identity_section.dev_idp_port,
        reload_poll_s=r.number(sidecar, "sidecar", "reload_poll_s", 10.0),
        health_check_interval_s=_interval(r, sidecar),
        health_check_unhealthy_threshold=r.integer(
            sidecar, "sidecar", "health_check_unhealthy_threshold", 1, 100
        ),
        sidecar_workers=workers or (os.cpu_count() or 1),
        catalog_files=catalog_files,
        identity_files=identity_section.files,
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
        else (frozenset(default_document()["providers"]) & set(providers)) - set(named_providers),
        fallback=fallback,
        login=parse_login(doc.get("login"), with_dev_issuer(identity, dev_issuer), r.problems),
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


def _interval(r: Reader, sidecar: Mapping[str, Any]) -> float:
    value = r.number(sidecar, "sidecar", "health_check_interval_s", 1.0)
    if not 0.01 <= value <= 300:
        r.problems.append(
            f"sidecar.health_check_interval_s: must be in [0.01, 300] seconds (got {value!r})"
        )
        return 1.0
    return value


def load_config(path: Path | None, environ: Mapping[str, str]) -> GatewayConfig:
    """The operator file over the built-in document, validated. A built-in provider the file
    does not name is optional (GatewayConfig.optional_providers)."""
    user = operator_document(path)
    named = user.get("providers")
    return parse_config(
        merge(default_document(), user),
        environ,
        named_providers=list(named) if isinstance(named, Mapping) else [],
    )
