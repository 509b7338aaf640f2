"""A local development token issuer for `make run`: real ES256 JWTs without an identity provider.

`ensure_dev_issuer(directory)` creates on first use, and loads afterwards:
- `dev-issuer.key.pem`: an EC P-256 private key (PKCS#8 PEM, mode 0600);
- `jwks.json`: its public key, `kid` = the key's RFC 7638 thumbprint, which the gateway's
  verifier reads through `DevIssuer.issuer_config()` like any configured issuer.

`gatewayctl token --user alice@example.com --group eng` prints one token on stdout:

    export TOKEN=$(gatewayctl token --user alice@example.com --group ml-team)

It is for development only: anyone who can read the run directory can mint tokens. So a
configuration with `identity.dev_issuer: true` is refused unless `GATEWAY_ALLOW_DEV_ISSUER=1` is
in the environment, which `gatewayctl run` (make run, the test stacks) sets for its own processes
and a deployment never does by accident: copying `config/local.yaml` into production is refused.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway_extproc.identity.model import ClaimMapping, IssuerConfig

__all__ = [
    "ALLOW_ENV",
    "DEV_AUDIENCE",
    "DEV_ISSUER",
    "JWKS_FILE",
    "KEY_FILE",
    "RESERVED_CLAIMS",
    "DevIssuer",
    "DevIssuerError",
    "add_token_command",
    "cmd_token",
    "default_directory",
    "ensure_dev_issuer",
    "jwk_thumbprint",
]

ALLOW_ENV = "GATEWAY_ALLOW_DEV_ISSUER"  # "1": identity.dev_issuer may be on (gatewayctl run)
DEV_ISSUER = "http://gateway.local/dev-issuer"
DEV_AUDIENCE = "llm-gateway"
KEY_FILE = "dev-issuer.key.pem"
JWKS_FILE = "jwks.json"
RESERVED_CLAIMS = frozenset(
    {
        *("iss", "aud", "sub", "iat", "nbf", "exp", "jti"),
        *("email", "email_verified", "client_id", "azp", "groups"),
    }
)
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")


class DevIssuerError(Exception):
    """The dev issuer's key file exists but cannot be used."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk: Mapping[str, str]) -> str:
    """RFC 7638 SHA-256 thumbprint of an EC public JWK: the required members, sorted, no spaces."""
    members = {name: jwk[name] for name in ("crv", "kty", "x", "y")}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def _public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64url(numbers.x.to_bytes(32, "big")),
        "y": _b64url(numbers.y.to_bytes(32, "big")),
    }
    return {**jwk, "kid": jwk_thumbprint(jwk), "use": "sig", "alg": "ES256"}


@dataclasses.dataclass(frozen=True)
class DevIssuer:
    directory: Path
    kid: str
    key: ec.EllipticCurvePrivateKey = dataclasses.field(repr=False)

    @property
    def key_path(self) -> Path:
        return self.directory / KEY_FILE

    @property
    def jwks_path(self) -> Path:
        return self.directory / JWKS_FILE

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The public key set (what `jwks.json` holds), for the dev IdP's jwks_uri."""
        return {"keys": [_public_jwk(self.key)]}

    def issuer_config(self, attributes: Iterable[str] = ()) -> IssuerConfig:
        """The verifier's config for this issuer. `attributes` names top-level claims to record
        as verified attributes (`cost_center` -> claim `cost_center`)."""
        return IssuerConfig(
            name="dev",
            issuer=DEV_ISSUER,
            audiences=(DEV_AUDIENCE,),
            algorithms=("ES256",),
            jwks_file=str(self.jwks_path),
            claims=ClaimMapping(attributes={name: name for name in attributes}),
        )

    def mint(
        self,
        user: str | None,
        groups: list[str],
        service: str | None,
        ttl_s: int,
        attributes: dict[str, str],
        now: float,
        audience: str = DEV_AUDIENCE,
    ) -> str:
        """An ES256 JWT for a user (`email` claim, verified: this issuer vouches for it) or a
        service (`client_id`, no `email`), for `audience` (the admin API has its own).

        Raises ValueError unless exactly one of `user`, `service` is a non-empty string, `ttl_s`
        is positive, groups are non-empty strings and no attribute shadows a standard claim."""
        if (user is None) == (service is None):
            raise ValueError("give exactly one of a user or a service")
        subject = user if user is not None else service
        if not subject or subject != subject.strip():
            raise ValueError(f"the subject must be a non-empty name (got {subject!r})")
        if ttl_s <= 0:
            raise ValueError(f"the lifetime must be a positive number of seconds (got {ttl_s})")
        if any(not group or group != group.strip() for group in groups):
            raise ValueError(f"groups must be non-empty names (got {groups!r})")
        clashing = sorted(set(attributes) & RESERVED_CLAIMS)
        if clashing:
            raise ValueError(f"attributes must not replace standard claims: {', '.join(clashing)}")
        issued = int(now)
        claims: dict[str, object] = {
            **attributes,
            "iss": DEV_ISSUER,
            "aud": audience,
            "sub": subject,
            "iat": issued,
            "nbf": issued,
            "exp": issued + ttl_s,
            "groups": list(groups),
        }
        if user is not None:
            claims["email"] = user
            claims["email_verified"] = True
        else:
            claims["client_id"] = service
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": self.kid})


def _create_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Write a new key to `path` unless another process got there first; return the winner."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o600)  # whatever the umask
            out.write(pem)
        os.link(tmp, path)  # atomic create-if-absent, with the whole file in place
    except FileExistsError:
        return _load_key(path)
    finally:
        tmp.unlink(missing_ok=True)
    return key


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise DevIssuerError(f"{path}: not a readable unencrypted PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise DevIssuerError(f"{path}: not an EC P-256 private key; delete it to make a new one")
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return key


def _write_if_changed(path: Path, text: str) -> None:
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(0o644)
    os.replace(tmp, path)


def ensure_dev_issuer(directory: Path) -> DevIssuer:
    """Load the dev issuer in `directory`, creating its key pair on first use. The JWKS file is
    rewritten from the key whenever it is missing or differs."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path = directory / KEY_FILE
    key = _load_key(key_path) if key_path.exists() else _create_key(key_path)
    jwk = _public_jwk(key)
    _write_if_changed(directory / JWKS_FILE, json.dumps({"keys": [jwk]}, indent=2) + "\n")
    return DevIssuer(directory=directory, kid=jwk["kid"], key=key)


# --- gatewayctl token ----------------------------------------------------------------------------


def default_directory(environ: Mapping[str, str]) -> Path:
    """`$GATEWAY_RUN_DIR/dev-issuer`, else `.run/dev-issuer`."""
    return Path(environ.get("GATEWAY_RUN_DIR") or ".run") / "dev-issuer"


def _ttl(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds (got {text!r})")
    return value


def _attribute(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not _ATTRIBUTE_NAME.fullmatch(name):
        raise argparse.ArgumentTypeError(f"must be NAME=VALUE, NAME a claim name (got {text!r})")
    if name in RESERVED_CLAIMS:
        raise argparse.ArgumentTypeError(f"{name} is a standard claim the issuer sets itself")
    return name, value


def add_token_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    modes: Callable[[argparse._MutuallyExclusiveGroup], None] | None = None,
) -> argparse.ArgumentParser:
    """Register `gatewayctl token` on the CLI's subparsers. `modes` adds other ways of getting
    a token to the one-of group (--user, --service): `--print`, from gatewayctl login."""
    parser = subparsers.add_parser(
        "token",
        help="print a development JWT signed by the local dev issuer",
        description="Print a JWT from the local development issuer (make run trusts it). "
        "Usage: export TOKEN=$(gatewayctl token --user alice@example.com --group eng)",
    )
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="a person, e.g. alice@example.com (the email claim)")
    who.add_argument("--service", help="a service, e.g. ci-runner (the client_id claim)")
    if modes is not None:
        modes(who)
    parser.add_argument(
        "--group", action="append", dest="groups", metavar="GROUP", help="repeat for several"
    )
    parser.add_argument(
        "--ttl", type=_ttl, default=3600, metavar="SECONDS", help="lifetime (default 3600)"
    )
    parser.add_argument(
        "--audience",
        default=DEV_AUDIENCE,
        help=f"the aud claim (default {DEV_AUDIENCE}; the admin API wants its own, "
        "admin_api.audiences: llm-gateway-admin by default)",
    )
    parser.add_argument(
        "--attr",
        action="append",
        type=_attribute,
        dest="attributes",
        metavar="NAME=VALUE",
        help="an extra top-level claim, e.g. cost_center=42; repeat for several",
    )
    parser.add_argument(
        "--dir",
        default=None,
        help="the issuer's key directory (default: $GATEWAY_RUN_DIR/dev-issuer, else "
        ".run/dev-issuer)",
    )
    parser.set_defaults(func=cmd_token)
    return parser


def cmd_token(args: argparse.Namespace) -> int:
    """Print one token on stdout and nothing else; problems go to stderr (exit 2 for bad
    arguments, 1 for an unusable key directory)."""
    directory = Path(args.dir) if args.dir else default_directory(os.environ)
    try:
        issuer = ensure_dev_issuer(directory)
    except (OSError, DevIssuerError) as exc:
        print(f"gatewayctl token: {exc}", file=sys.stderr)
        return 1
    try:
        token = issuer.mint(
            user=args.user,
            groups=list(args.groups or []),
            service=args.service,
            ttl_s=args.ttl,
            attributes=dict(args.attributes or []),
            now=time.time(),
            audience=args.audience,
        )
    except ValueError as exc:
        print(f"gatewayctl token: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0
