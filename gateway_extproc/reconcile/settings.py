"""The `reconcile:` section: which providers' reports to pull, with which admin key, from where,
which projects / workspaces (and optionally key ids) are the gateway's own, and when. Parsed once;
every problem reported with its path.

    reconcile:
      schedule: "02:30"              # UTC; each run reconciles the previous UTC day
      rerun_days: 2                  # and re-runs the 2 days before it (reports are revised)
      alert:                         # drift alerts, once per provider, day and kind
        unexplained_pct: 0.5         # |unexplained| above 0.5 % of the provider's bill
        unexplained_usd_per_day: 5   # or above $5 a day (either crossing fires)
        outside_usd_per_day: 0       # optional: provider spend outside the gateway above $0
        webhook: https://hooks.example.com/...   # POSTed as budget alerts are
      providers:
        openai:
          admin_key_env: OPENAI_ADMIN_KEY     # an admin key (sk-admin-...), never a serving key
          base_url: https://api.openai.com    # default; `mock`: the stack's mock provider
          projects: [proj_abc123]             # the projects the gateway's serving keys are in
          api_key_ids: [key_abc]              # optional: the gateway's own keys, by id
        anthropic:
          admin_key_env: ANTHROPIC_ADMIN_KEY  # sk-ant-admin...
          workspaces: [wrkspc_01abc, default] # `default`: the Default Workspace
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from gateway_extproc.catalog.pricing import usd_to_micros

PROVIDERS = ("openai", "anthropic")
DEFAULT_BASE_URLS = {"openai": "https://api.openai.com", "anthropic": "https://api.anthropic.com"}
DEFAULT_KEY_ENVS = {"openai": "OPENAI_ADMIN_KEY", "anthropic": "ANTHROPIC_ADMIN_KEY"}
MOCK = "mock"  # base_url: the mock provider the local stack runs
DEFAULT_WORKSPACE = "default"  # Anthropic's Default Workspace (reported with a null id)
DEFAULT_SCHEDULE = dt.time(2, 30)
DEFAULT_RERUN_DAYS = 2
MAX_RERUN_DAYS = 31
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SCHEDULE = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


@dataclasses.dataclass(frozen=True, slots=True)
class ProviderReports:
    provider: str
    admin_key_env: str
    base_url: str
    projects: frozenset[str | None]  # OpenAI projects / Anthropic workspaces (None: Default)
    api_key_ids: frozenset[str] = frozenset()  # empty: any key in the projects is the gateway's

    def resolved(self, mock_url: str | None) -> ProviderReports:
        """With `base_url: mock` replaced by the running mock's root URL."""
        if self.base_url != MOCK:
            return self
        if not mock_url:
            raise ValueError(f"reconcile.providers.{self.provider}.base_url: no mock is running")
        return dataclasses.replace(self, base_url=mock_url.removesuffix("/v1"))

    def is_gateways(self, project: str | None, api_key_id: str | None) -> bool:
        """Whether usage of this project and key is the gateway's own traffic."""
        if project not in self.projects:
            return False
        return not self.api_key_ids or api_key_id in self.api_key_ids


@dataclasses.dataclass(frozen=True, slots=True)
class AlertThresholds:
    """When a provider's day fires the drift webhook. None: that threshold is off."""

    unexplained_pct: Decimal | None = None  # |unexplained| / provider dollars, in percent
    unexplained_micros: int | None = None  # |unexplained| per provider and day
    outside_micros: int | None = None  # provider spend outside the gateway, per day
    webhook: str | None = None

    @property
    def enabled(self) -> bool:
        return any(
            t is not None
            for t in (self.unexplained_pct, self.unexplained_micros, self.outside_micros)
        )


@dataclasses.dataclass(frozen=True, slots=True)
class ReconcileSettings:
    providers: tuple[ProviderReports, ...] = ()
    schedule: dt.time = DEFAULT_SCHEDULE  # UTC
    rerun_days: int = DEFAULT_RERUN_DAYS  # days before yesterday each scheduled run re-runs
    alert: AlertThresholds = dataclasses.field(default_factory=AlertThresholds)

    @property
    def enabled(self) -> bool:
        return bool(self.providers)

    def provider(self, name: str) -> ProviderReports | None:
        return next((p for p in self.providers if p.provider == name), None)


def _strings(raw: object, path: str, problems: list[str]) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(v, str) and v for v in raw):
        problems.append(f"{path}: must be a list of non-empty strings")
        return []
    return list(raw)


def _provider(name: str, raw: object, path: str, problems: list[str]) -> ProviderReports | None:
    if not isinstance(raw, Mapping):
        problems.append(f"{path}: must be a mapping")
        return None
    groups = "projects" if name == "openai" else "workspaces"
    known = {"admin_key_env", "base_url", groups, "api_key_ids"}
    problems += [f"{path}.{key}: unknown key" for key in sorted(set(raw) - known, key=str)]
    env = raw.get("admin_key_env", DEFAULT_KEY_ENVS[name])
    if not isinstance(env, str) or not _ENV_NAME.match(env):
        problems.append(f"{path}.admin_key_env: must be an environment variable name")
    url = raw.get("base_url", DEFAULT_BASE_URLS[name])
    if not isinstance(url, str) or not (url == MOCK or re.match(r"^https?://[^/\s]+", url)):
        problems.append(f"{path}.base_url: must be an http(s) URL or `mock`")
    projects = _strings(raw.get(groups), f"{path}.{groups}", problems)
    if not projects:
        problems.append(
            f"{path}.{groups}: name the {groups} the gateway's serving keys belong to (usage "
            "elsewhere is reported as traffic that bypassed the gateway)"
        )
    keys = _strings(raw.get("api_key_ids"), f"{path}.api_key_ids", problems)
    owned = frozenset(
        None if p == DEFAULT_WORKSPACE and name == "anthropic" else p for p in projects
    )
    return ProviderReports(name, str(env), str(url), owned, frozenset(keys))


def _amount(raw: object, path: str, problems: list[str]) -> Decimal | None:
    if raw is None:
        return None
    try:
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            raise InvalidOperation
        value = Decimal(str(raw))
    except InvalidOperation:
        value = Decimal(-1)
    if not value.is_finite() or value < 0:
        problems.append(f"{path}: must be a number >= 0, got {raw!r}")
        return None
    return value


def _micros(usd: Decimal | None, path: str, problems: list[str]) -> int | None:
    if usd is None:
        return None
    try:
        return usd_to_micros(str(usd))
    except ValueError:
        problems.append(f"{path}: at most 6 decimal places (micro-dollars)")
        return None


def _alert(raw: object, problems: list[str]) -> AlertThresholds:
    path = "reconcile.alert"
    if raw is None:
        return AlertThresholds()
    if not isinstance(raw, Mapping):
        problems.append(f"{path}: must be a mapping")
        return AlertThresholds()
    known = {"unexplained_pct", "unexplained_usd_per_day", "outside_usd_per_day", "webhook"}
    problems += [f"{path}.{key}: unknown key" for key in sorted(set(raw) - known, key=str)]
    pct = _amount(raw.get("unexplained_pct"), f"{path}.unexplained_pct", problems)
    usd = _amount(raw.get("unexplained_usd_per_day"), f"{path}.unexplained_usd_per_day", problems)
    out = _amount(raw.get("outside_usd_per_day"), f"{path}.outside_usd_per_day", problems)
    webhook = raw.get("webhook")
    if webhook is not None and (
        not isinstance(webhook, str) or not re.match(r"^https?://[^/\s]+", webhook)
    ):
        problems.append(f"{path}.webhook: must be an http(s) URL")
        webhook = None
    alert = AlertThresholds(
        pct,
        _micros(usd, f"{path}.unexplained_usd_per_day", problems),
        _micros(out, f"{path}.outside_usd_per_day", problems),
        webhook,
    )
    if webhook is not None and not alert.enabled:
        problems.append(
            f"{path}: a webhook without a threshold never fires: set unexplained_pct, "
            "unexplained_usd_per_day or outside_usd_per_day"
        )
    return alert


def parse_reconcile(raw: object, problems: list[str]) -> ReconcileSettings:
    if raw is None:
        return ReconcileSettings()
    if not isinstance(raw, Mapping):
        problems.append("reconcile: must be a mapping")
        return ReconcileSettings()
    problems += [
        f"reconcile.{k}: unknown key"
        for k in sorted(set(raw) - {"schedule", "providers", "rerun_days", "alert"}, key=str)
    ]
    rerun = raw.get("rerun_days", DEFAULT_RERUN_DAYS)
    if isinstance(rerun, bool) or not isinstance(rerun, int) or not 0 <= rerun <= MAX_RERUN_DAYS:
        problems.append(f"reconcile.rerun_days: must be an integer 0..{MAX_RERUN_DAYS}")
        rerun = DEFAULT_RERUN_DAYS
    schedule = DEFAULT_SCHEDULE
    text = raw.get("schedule", "02:30")
    match = _SCHEDULE.match(text) if isinstance(text, str) else None
    if match is None:
        problems.append(f"reconcile.schedule: must be HH:MM (UTC), got {text!r}")
    else:
        schedule = dt.time(int(match[1]), int(match[2]))
    docs: Any = raw.get("providers") or {}
    providers: list[ProviderReports] = []
    if not isinstance(docs, Mapping):
        problems.append("reconcile.providers: must be a mapping of provider name to settings")
        docs = {}
    for name, doc in docs.items():
        path = f"reconcile.providers.{name}"
        if name not in PROVIDERS:
            problems.append(f"{path}: reports are pulled from {' and '.join(PROVIDERS)} only")
            continue
        parsed = _provider(name, doc, path, problems)
        if parsed is not None:
            providers.append(parsed)
    return ReconcileSettings(tuple(providers), schedule, rerun, _alert(raw.get("alert"), problems))
