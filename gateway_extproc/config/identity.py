"""The `identity:` section as the gateway reads it: the local development issuer's keys
(`dev_issuer`, `dev_idp_port`: `make run` only) taken out and checked here, the rest parsed by
identity/settings.py, and the secret files it names (a reload watches them). Pure but for the
secret files identity/settings.py reads."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from gateway_extproc.admin.auth import DEV_ISSUER_NAME
from gateway_extproc.config.reader import Reader
from gateway_extproc.identity.dev_oidc_requests import DEFAULT_PORT as DEV_IDP_DEFAULT_PORT
from gateway_extproc.identity.dev_oidc_requests import PORT_ENV as DEV_IDP_PORT_ENV
from gateway_extproc.identity.devissuer import ALLOW_ENV as DEV_ISSUER_ALLOW_ENV
from gateway_extproc.identity.devissuer import DEV_AUDIENCE, DEV_ISSUER
from gateway_extproc.identity.model import IdentityConfig, IssuerConfig
from gateway_extproc.identity.settings import parse_identity


@dataclasses.dataclass(frozen=True)
class IdentitySection:
    identity: IdentityConfig
    files: tuple[str, ...]  # static_tokens_file, hs_secret files
    dev_issuer: bool  # accept tokens from the local development issuer (make run)
    dev_idp_port: int  # gatewayctl run's dev IdP, with dev_issuer (0: any)


def parse_identity_section(r: Reader, doc: object, environ: Mapping[str, str]) -> IdentitySection:
    """The value of the `identity` key (None when the section is absent), every problem
    appended to `r` with its path."""
    dev_issuer = False
    dev_idp_port = DEV_IDP_DEFAULT_PORT
    if isinstance(doc, Mapping) and "dev_issuer" in doc:
        dev_issuer = r.boolean(doc, "identity", "dev_issuer", False)
    if isinstance(doc, Mapping):
        dev_idp_port = _dev_idp_port(r, doc, environ, dev_issuer)
        dev_keys = ("dev_issuer", "dev_idp_port")
        doc = {k: v for k, v in doc.items() if k not in dev_keys}
    if dev_issuer and environ.get(DEV_ISSUER_ALLOW_ENV) != "1":
        r.problems.append(
            "identity.dev_issuer: the local development issuer is for gatewayctl run (make run) "
            "only: anyone who can read its key directory can mint any identity. Remove it, or "
            f"set {DEV_ISSUER_ALLOW_ENV}=1 in the environment to allow it deliberately"
        )
    identity = parse_identity(doc, environ, r.problems)
    return IdentitySection(identity, _identity_files(doc), dev_issuer, dev_idp_port)


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


def with_dev_issuer(identity: IdentityConfig, dev_issuer: bool) -> IdentityConfig:
    """With `identity.dev_issuer`, the identity issuers plus the local development issuer (name
    `dev`; the runtime adds the real one, with its key), so `login.issuer: dev` can name it and
    `gatewayctl login` runs against the dev IdP `gatewayctl run` serves."""
    if not dev_issuer:
        return identity
    dev = IssuerConfig(
        name=DEV_ISSUER_NAME, issuer=DEV_ISSUER, audiences=(DEV_AUDIENCE,), algorithms=("ES256",)
    )
    return dataclasses.replace(identity, issuers=(*identity.issuers, dev))
