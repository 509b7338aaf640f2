"""The `admin_api:` and `spend:` sections: parsed once, every problem reported with its path.

admin_api:
  enabled: false            # served by sidecar worker 0 only
  host: 127.0.0.1           # loopback by default: expose it deliberately (a Service)
  port: 10090
  read_groups: [gateway-admins]    # GetSpend, ListBudgets, GetBudgetStatus, ListOverrides
  write_groups: [gateway-admins]   # also SetOverride, RemoveOverride, TopUp
  audiences: [llm-gateway-admin]   # an admin token's aud: never a data-plane audience
  issuers: [corp]                  # identity.issuers minting admin tokens (default: JWKS ones)
  static_tokens: [ops-root]        # admin credentials (the data plane refuses them)
  tls: {cert_file: ..., key_file: ..., client_ca_file: ...}   # with a client CA: mutual TLS
  socket: /run/llm-gateway/admin-api.sock   # plaintext for Envoy's JSON listener (tls + http_port)
spend:
  timezone: UTC             # rollups are kept per day in this timezone
  retention_days: 400
"""

from __future__ import annotations

import dataclasses
import zoneinfo
from collections.abc import Mapping

from gateway_extproc.admin.tls import AdminTls, parse_tls
from gateway_extproc.spend.rollup import DEFAULT_RETENTION_DAYS, RollupSettings

DEFAULT_ADMIN_PORT = 10090
DEFAULT_ADMIN_GROUP = "gateway-admins"
DEFAULT_ADMIN_AUDIENCE = "llm-gateway-admin"


@dataclasses.dataclass(frozen=True)
class AdminApiConfig:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = DEFAULT_ADMIN_PORT
    http_port: int = 0  # JSON over HTTP through Envoy's gRPC-JSON transcoder (0: off)
    read_groups: frozenset[str] = frozenset({DEFAULT_ADMIN_GROUP})
    write_groups: frozenset[str] = frozenset({DEFAULT_ADMIN_GROUP})
    # Who may be a caller at all (admin/auth.py): a JWT for one of `audiences` from one of
    # `issuers` (None: every issuer with a JWKS, never a shared-secret one unless named), or one
    # of `static_tokens`. Groups then decide what it may do.
    audiences: tuple[str, ...] = (DEFAULT_ADMIN_AUDIENCE,)
    issuers: tuple[str, ...] | None = None
    static_tokens: frozenset[str] = frozenset()
    tls: AdminTls | None = None  # admin/tls.py
    # A unix socket worker 0 also serves the API on, in plaintext, for Envoy's JSON transcoder
    # in the same pod (needed with `tls` and `http_port`: Envoy terminates the JSON listener's
    # TLS itself and holds no client certificate).
    socket: str | None = None


def parse_admin_api(doc: object, problems: list[str]) -> AdminApiConfig:
    if doc is None:
        return AdminApiConfig()
    if not isinstance(doc, Mapping):
        problems.append("admin_api: must be a mapping")
        return AdminApiConfig()
    for extra in sorted(set(map(str, doc)) - {f.name for f in dataclasses.fields(AdminApiConfig)}):
        problems.append(f"admin_api.{extra}: unknown key")
    audiences, issuers, static_tokens = _callers(doc, problems)
    default = AdminApiConfig()
    enabled = doc.get("enabled", default.enabled)
    if not isinstance(enabled, bool):
        problems.append(f"admin_api.enabled: must be true or false (got {enabled!r})")
        enabled = False
    host = doc.get("host", default.host)
    if not isinstance(host, str) or not host:
        problems.append(f"admin_api.host: must be a host name or address (got {host!r})")
        host = default.host
    ports = {}
    for key in ("port", "http_port"):
        port = doc.get(key, getattr(default, key))
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            problems.append(f"admin_api.{key}: must be an integer in [0, 65535] (got {port!r})")
            port = getattr(default, key)
        ports[key] = port
    groups = {}
    for key in ("read_groups", "write_groups"):
        value = doc.get(key, sorted(getattr(default, key)))
        if not isinstance(value, list) or not all(isinstance(g, str) and g for g in value):
            problems.append(f"admin_api.{key}: must be a list of group names (got {value!r})")
            value = []
        groups[key] = frozenset(value)
    if enabled and not groups["write_groups"]:
        problems.append("admin_api.write_groups: must name at least one group")
    tls, socket = parse_tls(doc.get("tls"), problems), _socket(doc.get("socket"), problems)
    if enabled and tls is not None and ports["http_port"] and socket is None:
        problems.append(
            "admin_api.socket: required with tls and http_port: Envoy's JSON listener reaches "
            "worker 0 over this unix socket (e.g. /run/llm-gateway/admin-api.sock)"
        )
    return AdminApiConfig(
        enabled=enabled,
        host=host,
        port=ports["port"],
        http_port=ports["http_port"],
        read_groups=groups["read_groups"],
        write_groups=groups["write_groups"],
        audiences=audiences,
        issuers=issuers,
        static_tokens=static_tokens,
        tls=tls,
        socket=socket,
    )


def _names(doc: Mapping[object, object], key: str, problems: list[str]) -> tuple[str, ...] | None:
    """A list of non-empty strings without spaces around them; None when absent or null."""
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(v, str) and v and v == v.strip() for v in value
    ):
        problems.append(f"admin_api.{key}: must be a list of names (got {value!r})")
        return None
    return tuple(dict.fromkeys(value))


def _socket(value: object, problems: list[str]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/") or len(value.encode()) > 107:
        problems.append(  # 107: what a unix socket address holds (sun_path, with its NUL)
            f"admin_api.socket: must be an absolute path of at most 107 bytes (got {value!r})"
        )
        return None
    return value


def _callers(
    doc: Mapping[object, object], problems: list[str]
) -> tuple[tuple[str, ...], tuple[str, ...] | None, frozenset[str]]:
    """`audiences`, `issuers`, `static_tokens` (the names are checked against `identity` by
    admin/auth.py, which sees the issuers)."""
    audiences = _names(doc, "audiences", problems)
    if audiences == ():
        problems.append("admin_api.audiences: must name at least one audience")
    tokens = _names(doc, "static_tokens", problems)
    issuers = _names(doc, "issuers", problems)
    return audiences or AdminApiConfig.audiences, issuers, frozenset(tokens or ())


def parse_spend(doc: object, problems: list[str]) -> RollupSettings:
    if doc is None:
        return RollupSettings()
    if not isinstance(doc, Mapping):
        problems.append("spend: must be a mapping")
        return RollupSettings()
    for extra in sorted(set(map(str, doc)) - {"timezone", "retention_days"}):
        problems.append(f"spend.{extra}: unknown key")
    timezone = doc.get("timezone", "UTC")
    try:
        if not isinstance(timezone, str) or timezone.startswith("/") or ".." in timezone:
            raise ValueError
        zoneinfo.ZoneInfo(timezone)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        problems.append(
            f"spend.timezone: must be an IANA time zone like Europe/Berlin (got {timezone!r})"
        )
        timezone = "UTC"
    days = doc.get("retention_days", DEFAULT_RETENTION_DAYS)
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 3660:
        problems.append(f"spend.retention_days: must be an integer in [1, 3660] (got {days!r})")
        days = DEFAULT_RETENTION_DAYS
    return RollupSettings(timezone=str(timezone), retention_days=days)
