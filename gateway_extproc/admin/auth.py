"""Who may call the admin API: credentials of its own, apart from the data plane's. Pure.

A token that spends money is not a token that changes budgets. An admin caller presents
- a JWT whose `aud` is one of `admin_api.audiences` (default `llm-gateway-admin`, which must not
  be a data-plane audience of any admitted issuer) from one of `admin_api.issuers` (default:
  every issuer with a JWKS; a shared-secret issuer only when named, as whoever holds the secret
  can mint any audience); the issuer's own checks (algorithms, leeway, `asserts`, verified
  e-mail) still apply;
- or a static token named in `admin_api.static_tokens`, which the data plane then refuses.

Groups (`read_groups`, `write_groups`) decide what an authenticated caller may do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from gateway_extproc.admin.settings import AdminApiConfig
from gateway_extproc.identity.devissuer import DEV_AUDIENCE
from gateway_extproc.identity.model import IdentityConfig, IssuerConfig

__all__ = ["DEV_ISSUER_NAME", "admin_identity", "caller_problems", "data_plane_identity", "hint"]

DEV_ISSUER_NAME = "dev"  # DevIssuer.issuer_config's name (added at runtime, not in identity)


def _admitted(names: Iterable[tuple[str, bool]], admin: AdminApiConfig) -> list[str]:
    """Of (issuer name, has a shared secret), the names admin tokens may come from."""
    if admin.issuers is not None:
        return [name for name, _ in names if name in admin.issuers]
    return [name for name, shared_secret in names if not shared_secret]


def admin_identity(identity: IdentityConfig, admin: AdminApiConfig) -> IdentityConfig:
    """The identity configuration the admin API authenticates with: the admitted issuers with
    the admin audiences instead of their own, the admin static tokens, never anonymous."""
    admitted = set(_admitted(((i.name, i.hs_secret is not None) for i in identity.issuers), admin))
    return dataclasses.replace(
        identity,
        issuers=tuple(
            dataclasses.replace(issuer, audiences=admin.audiences)
            for issuer in identity.issuers
            if issuer.name in admitted
        ),
        static_tokens=tuple(t for t in identity.static_tokens if t.service in admin.static_tokens),
        allow_anonymous=False,
    )


def data_plane_identity(identity: IdentityConfig, admin: AdminApiConfig) -> IdentityConfig:
    """The request path's identity configuration: without the admin static tokens."""
    if not admin.static_tokens:
        return identity
    return dataclasses.replace(
        identity,
        static_tokens=tuple(
            t for t in identity.static_tokens if t.service not in admin.static_tokens
        ),
    )


def caller_problems(admin: AdminApiConfig, identity: IdentityConfig, dev_issuer: bool) -> list[str]:
    """Names that match nothing, an admin audience that a data-plane token carries, and an
    enabled API that no credential could call."""
    issuers: list[IssuerConfig] = list(identity.issuers)
    known = [(i.name, i.hs_secret is not None) for i in issuers]
    audiences = {i.name: i.audiences for i in issuers}
    if dev_issuer:
        known.append((DEV_ISSUER_NAME, False))
        audiences[DEV_ISSUER_NAME] = (DEV_AUDIENCE,)
    problems: list[str] = []
    configured = ", ".join(name for name, _ in known) or "none"
    for i, name in enumerate(admin.issuers or ()):
        if name not in audiences:
            problems.append(
                f"admin_api.issuers[{i}]: no issuer named {name!r} (configured: {configured})"
            )
    tokens = {t.service for t in identity.static_tokens}
    for name in sorted(admin.static_tokens - tokens):
        problems.append(
            f"admin_api.static_tokens: no static token named {name!r} in identity.static_tokens "
            "or identity.static_tokens_file"
        )
    admitted = _admitted(known, admin)
    for name in admitted:
        shared = sorted(set(audiences[name]) & set(admin.audiences))
        if shared:
            problems.append(
                f"admin_api.audiences: {', '.join(shared)} is also a data-plane audience of "
                f"issuer {name}: every token it issues for the gateway would be an admin "
                "credential; give the admin API an audience of its own"
            )
    if admin.enabled and not admitted and not admin.static_tokens & tokens:
        problems.append(
            "admin_api: no credential can call the admin API: name the issuers whose tokens "
            "may (admin_api.issuers; shared-secret issuers only by name) or admin static tokens "
            "(admin_api.static_tokens)"
        )
    return problems


def hint(admin: AdminApiConfig) -> str:
    """What the admin API accepts, for an UNAUTHENTICATED message (no secrets in it)."""
    issuers = "every issuer with a JWKS" if admin.issuers is None else ", ".join(admin.issuers)
    parts = [f"a token for audience {' or '.join(admin.audiences)} from {issuers or 'no issuer'}"]
    if admin.static_tokens:
        parts.append("an admin static token")
    return "the admin API accepts " + ", or ".join(parts) + "; data-plane tokens are refused"
