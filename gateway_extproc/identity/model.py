"""Identity configuration and the verified `Identity` every request carries. Values only.

Shared by the verifier (`jwt_verify`, `jwks`, `authenticator`), the policy engine (`policy`)
and the processor, so each can be written and tested against these shapes alone.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping


class AuthMethod(enum.StrEnum):
    JWT = "jwt"
    STATIC_TOKEN = "static_token"
    ANONYMOUS = "anonymous"


class Kind(enum.StrEnum):
    USER = "user"  # a person: the user claim resolved
    SERVICE = "service"  # CI job or agent: client-credentials token or static token
    ANONYMOUS = "anonymous"


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    kind: Kind
    auth_method: AuthMethod
    user: str | None  # e.g. alice@example.com
    service: str | None  # e.g. ci-runner
    groups: frozenset[str]
    issuer: str | None  # the configured issuer's name, "static" for static tokens
    attributes: Mapping[str, str]  # verified custom attributes (department, cost_center, ...)
    expires_at: float | None  # unix time; None for static tokens and anonymous
    client_id: str | None = None  # the OAuth client a user token was issued to (azp), if any
    # A static token's name. Static tokens and JWT services are separate namespaces: `service`
    # is None for a static token unless `identity.static_tokens_share_service_namespace`.
    static_token: str | None = None

    @property
    def subject(self) -> str:
        """The principal's name: the user, else the service or static token, else "anonymous"."""
        return self.user or self.service or self.static_token or "anonymous"


ANONYMOUS = Identity(
    kind=Kind.ANONYMOUS,
    auth_method=AuthMethod.ANONYMOUS,
    user=None,
    service=None,
    groups=frozenset(),
    issuer=None,
    attributes={},
    expires_at=None,
)


@dataclasses.dataclass(frozen=True)
class ClaimMapping:
    """Dotted claim paths (`realm_access.roles`). For each of user and service the first path
    that resolves wins; groups are the union of all paths (lists, or space-separated strings)."""

    user: tuple[str, ...] = ("email", "preferred_username")
    groups: tuple[str, ...] = ("groups",)
    service: tuple[str, ...] = ("client_id", "azp")
    attributes: Mapping[str, str] = dataclasses.field(default_factory=dict)  # name -> path


@dataclasses.dataclass(frozen=True)
class Assertions:
    """What an issuer may vouch for (`identity.issuers.NAME.asserts`); a token asserting more is
    refused. Every restriction that is set must hold; None means unrestricted."""

    kinds: frozenset[Kind] = frozenset({Kind.USER, Kind.SERVICE})
    user_domains: tuple[str, ...] | None = None  # lower-case e-mail domains, matched exactly
    service_prefixes: tuple[str, ...] | None = None  # a service name starts with one of these
    groups: tuple[str, ...] | None = None  # shell wildcards every asserted group must match


UNRESTRICTED = Assertions()
# An issuer with a shared secret (hs_secret): whoever holds the secret can mint any token, so by
# default it vouches for services only, and for no groups.
SHARED_SECRET_DEFAULT = Assertions(kinds=frozenset({Kind.SERVICE}), groups=())


@dataclasses.dataclass(frozen=True)
class IssuerConfig:
    name: str  # config key, recorded in audit records
    issuer: str  # the exact `iss` claim
    audiences: tuple[str, ...]
    algorithms: tuple[str, ...]  # allow-list; never "none"; HS* only with hs_secret
    jwks_url: str | None = None
    jwks_file: str | None = None
    hs_secret: bytes | None = dataclasses.field(default=None, repr=False)
    leeway_s: int = 30
    required_claims: tuple[str, ...] = ("exp", "iat")
    jwks_cache_ttl_s: int = 300  # refetch the JWKS this often
    jwks_refresh_min_interval_s: int = 30  # an unknown kid refreshes at most this often
    jwks_max_stale_s: int = 3600  # after fetch failures, keep the last good keys this long
    claims: ClaimMapping = dataclasses.field(default_factory=ClaimMapping)
    asserts: Assertions = UNRESTRICTED
    # The standard `email` claim names the user only with `email_verified: true`, unless the
    # issuer is trusted to put only verified (or immutable) addresses there; otherwise the
    # user is the token's `sub` (jwt_verify.identity_from_claims).
    trust_unverified_email: bool = False


@dataclasses.dataclass(frozen=True)
class StaticToken:
    """An agent's shared secret, stored only as its SHA-256 digest."""

    service: str
    sha256: bytes = dataclasses.field(repr=False)
    groups: frozenset[str] = frozenset()
    attributes: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class IdentityConfig:
    issuers: tuple[IssuerConfig, ...] = ()
    static_tokens: tuple[StaticToken, ...] = ()
    allow_anonymous: bool = False
    max_token_bytes: int = 8192
    verified_cache_size: int = 10_000
    metadata_header: str = "x-gateway-metadata"
    # Whether a static token's name is also its `service` (policies `services`, budget
    # `match.services` / `scope.kind: service` then match it, as they match JWT services).
    static_tokens_share_service_namespace: bool = False
