"""The `identity:` section of the gateway config: issuers, static tokens, limits.

    identity:
      allow_anonymous: false
      max_token_bytes: 8192
      verified_cache_size: 10000
      metadata_header: x-gateway-metadata
      issuers:
        corp:
          issuer: https://login.example.com/realms/corp
          audiences: [llm-gateway]
          jwks_url: https://login.example.com/realms/corp/protocol/openid-connect/certs
          algorithms: [RS256, ES256]
          claims: {user: [email], groups: [groups, realm_access.roles]}
          asserts: {kinds: [user, service], user_domains: [example.com]}   # see vouching.py
          trust_unverified_email: false   # true: `email` names the user without email_verified
      static_tokens:
        docs-bot: {sha256: "<64 hex>", groups: [bots], attributes: {cost_center: "42"}}
      static_tokens_file: /run/secrets/static-tokens.yaml   # same mapping as static_tokens
      static_tokens_share_service_namespace: false   # true: a static token is also a `service`

Issuers are parsed in `issuer_settings`, static tokens in `static_token_settings`.
`parse_identity` appends every problem, each with its path, to the caller's list and returns a
best-effort config; the caller raises `ConfigError` if any were found. Secrets (`hs_secret`,
`static_tokens_file`) are read while parsing, once per (re)load, never at import time.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from gateway_extproc.identity.issuer_settings import parse_issuers
from gateway_extproc.identity.model import IdentityConfig
from gateway_extproc.identity.reader import SectionReader
from gateway_extproc.identity.static_token_settings import parse_static_tokens

__all__ = ["parse_identity"]

# The accepted keys are the dataclasses' fields, so a new field cannot be forgotten here.
_IDENTITY_KEYS = frozenset(f.name for f in dataclasses.fields(IdentityConfig)) | {
    "static_tokens_file"
}

_HEADER = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")  # an RFC 9110 token, lower-cased


def parse_identity(doc: object, environ: Mapping[str, str], problems: list[str]) -> IdentityConfig:
    """Parse the value of the `identity` key (None when the section is absent: the defaults)."""
    if doc is None:
        return IdentityConfig()
    if not isinstance(doc, Mapping):
        problems.append(f"identity: must be a mapping (got {doc!r})")
        return IdentityConfig()
    r = SectionReader(doc, "identity", problems)
    r.unknown_keys(_IDENTITY_KEYS)
    default = IdentityConfig()
    header = doc.get("metadata_header", default.metadata_header)
    if not isinstance(header, str) or not _HEADER.fullmatch(header.lower()):
        r.problem("metadata_header", f"must be an HTTP header name (got {header!r})")
        header = default.metadata_header
    return IdentityConfig(
        issuers=parse_issuers(doc, environ, problems),
        static_tokens=parse_static_tokens(doc, problems),
        allow_anonymous=r.boolean("allow_anonymous", default.allow_anonymous),
        max_token_bytes=r.integer("max_token_bytes", default.max_token_bytes, 256, 65_536),
        verified_cache_size=r.integer(
            "verified_cache_size", default.verified_cache_size, 0, 10_000_000
        ),
        metadata_header=header.lower(),
        static_tokens_share_service_namespace=r.boolean(
            "static_tokens_share_service_namespace", default.static_tokens_share_service_namespace
        ),
    )
