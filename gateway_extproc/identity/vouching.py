"""What each issuer may vouch for: parsing `identity.issuers.NAME.asserts` and checking a token's
identity against it. Pure.

    identity:
      issuers:
        ci:
          hs_secret: {env: CI_JWT_SECRET}
          asserts:
            kinds: [service]             # user, service (default both; hs_secret: service)
            service_prefixes: ["ci-"]    # a service name must start with one of these
            groups: ["ci-*"]             # every asserted group must match (hs_secret: none)
        corp:
          jwks_url: ...
          asserts:
            user_domains: [example.com]  # a user must be an e-mail address in one of these

A token is refused (401) when it asserts a kind, user, service or group its issuer may not:
trusting an issuer's signature is not trusting it for every principal. Messages name the issuer
and the rule, never a value taken from the token. At most one issuer may go unrestricted
(`several_unrestricted`): the configuration is refused otherwise.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping

from gateway_extproc.identity.model import (
    SHARED_SECRET_DEFAULT,
    UNRESTRICTED,
    Assertions,
    Identity,
    IssuerConfig,
    Kind,
)

__all__ = ["ASSERTS_KEYS", "parse_asserts", "refusal", "several_unrestricted"]

ASSERTS_KEYS = ("kinds", "user_domains", "service_prefixes", "groups")
_KINDS = {Kind.USER.value: Kind.USER, Kind.SERVICE.value: Kind.SERVICE}
_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+")


def _strings(
    doc: Mapping[object, object], key: str, path: str, problems: list[str]
) -> tuple[str, ...] | None:
    """A list of non-empty strings without surrounding spaces; None when absent."""
    if key not in doc:
        return None
    raw, where = doc[key], f"{path}.{key}"
    if not isinstance(raw, list):
        problems.append(f"{where}: must be a list of strings (got {raw!r})")
        return None
    out: list[str] = []
    for i, item in enumerate(raw):
        if not isinstance(item, str) or not item or item != item.strip():
            problems.append(f"{where}[{i}]: must be a non-empty string (got {item!r})")
        elif item not in out:
            out.append(item)
    return tuple(out)


def parse_asserts(
    doc: object, path: str, *, shared_secret: bool, problems: list[str]
) -> Assertions:
    """The value of `asserts` (None: the default for this kind of issuer). Every problem is
    appended with its path."""
    default = SHARED_SECRET_DEFAULT if shared_secret else UNRESTRICTED
    if doc is None:
        return default
    if not isinstance(doc, Mapping):
        problems.append(f"{path}: must be a mapping with keys {', '.join(ASSERTS_KEYS)}")
        return default
    for key in sorted(map(str, set(doc) - set(ASSERTS_KEYS))):
        problems.append(f"{path}.{key}: unknown key (expected one of {', '.join(ASSERTS_KEYS)})")
    kinds = default.kinds
    names = _strings(doc, "kinds", path, problems)
    if names is not None:
        bad = [name for name in names if name not in _KINDS]
        if bad or not names:
            problems.append(
                f"{path}.kinds: must be a non-empty list of user, service (got {doc['kinds']!r})"
            )
        else:
            kinds = frozenset(_KINDS[name] for name in names)
    domains = _strings(doc, "user_domains", path, problems)
    if domains is not None:
        for i, domain in enumerate(domains):
            if not _DOMAIN.fullmatch(domain):
                problems.append(
                    f"{path}.user_domains[{i}]: must be a lower-case domain such as example.com "
                    f"(got {domain!r})"
                )
        if Kind.USER not in kinds:
            problems.append(f"{path}.user_domains: set, but kinds does not include user")
    prefixes = _strings(doc, "service_prefixes", path, problems)
    if prefixes is not None and Kind.SERVICE not in kinds:
        problems.append(f"{path}.service_prefixes: set, but kinds does not include service")
    groups = _strings(doc, "groups", path, problems)
    return Assertions(
        kinds=kinds,
        user_domains=domains,
        service_prefixes=prefixes,
        groups=default.groups if "groups" not in doc else groups,
    )


def _restricts_nothing(a: Assertions) -> bool:
    """Whether `a` lets its issuer assert every principal: both kinds, and no domain, prefix
    or group pattern that excludes anything (the group pattern "*" matches every group)."""
    return (
        a.kinds == UNRESTRICTED.kinds
        and a.user_domains is None
        and a.service_prefixes is None
        and (a.groups is None or "*" in a.groups)
    )


def several_unrestricted(issuers: Iterable[IssuerConfig]) -> str | None:
    """Why these issuers cannot be trusted together, or None. An issuer whose `asserts` allows
    everything (a JWKS issuer without `asserts`, or with one that restricts nothing) may mint
    any principal; two such issuers can each impersonate the other's users, so with several
    issuers at most one may go unrestricted."""
    names = [issuer.name for issuer in issuers if _restricts_nothing(issuer.asserts)]
    if len(names) < 2:
        return None
    return (
        f"{', '.join(names)} may each vouch for any user, service and group (no asserts "
        "restricts them), so each could impersonate the other's users: give all but one of "
        "them an asserts (user_domains, service_prefixes, groups or kinds) saying what it "
        "vouches for"
    )


def _listing(items: tuple[str, ...]) -> str:
    return ", ".join(items) if items else "none"


def refusal(identity: Identity, issuer: str, asserts: Assertions) -> str | None:
    """Why `issuer` may not vouch for `identity` (a message for the 401), or None if it may."""
    if identity.kind not in asserts.kinds:
        allowed = " and ".join(sorted(kind.value + "s" for kind in asserts.kinds))
        return f"issuer {issuer} may not assert a {identity.kind.value} (it may assert {allowed})"
    if asserts.user_domains is not None and identity.user is not None:
        _, at, domain = identity.user.rpartition("@")
        if not at or domain.lower() not in asserts.user_domains:
            return (
                f"issuer {issuer} may not assert this user: it vouches only for e-mail "
                f"addresses in {_listing(asserts.user_domains)}"
            )
    prefixes, service = asserts.service_prefixes, identity.service
    if prefixes is not None and service is not None and not service.startswith(prefixes):
        return (
            f"issuer {issuer} may not assert this service: it vouches only for names "
            f"starting with {_listing(prefixes)}"
        )
    patterns = asserts.groups
    if patterns is not None:
        for group in identity.groups:
            if not any(fnmatch.fnmatchcase(group, pattern) for pattern in patterns):
                return (
                    f"issuer {issuer} may not assert this group membership: it vouches only "
                    f"for groups matching {_listing(patterns)}"
                )
    return None
