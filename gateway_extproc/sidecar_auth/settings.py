"""Configuration of the sidecar's caller checks (`sidecar.caller_token`, `sidecar.state_keys`,
`sidecar.tls`) and the secrets it names, read once when a process starts.

`parse_sidecar_auth` validates the document (no secret is read: `gatewayctl check-config` without
`--require-credentials` and Envoy's bootstrap generator parse the same file). `load_secrets` reads
them, reporting every problem with its path and never a secret's value.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway_extproc.errors import ConfigError

# Envoy sends the token as gRPC metadata (a header value, where `%` starts a substitution):
# URL-safe characters only, and long enough that guessing is hopeless.
_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{32,512}")
MIN_STATE_KEY_CHARS = 32
DEFAULT_TOKEN_ENV = "GATEWAY_SIDECAR_TOKEN"
DEFAULT_STATE_KEYS_ENV = "GATEWAY_STATE_KEYS"
KEYS = frozenset({"caller_token", "state_keys", "tls"})
_SOURCE_KEYS = frozenset({"env", "file"})
_TLS_KEYS = ("cert_file", "key_file", "client_ca_file")


@dataclasses.dataclass(frozen=True)
class SecretSource:
    """`{env: NAME}` or `{file: PATH}`; a file may hold several values, one per line."""

    env: str | None = None
    file: str | None = None

    def describe(self) -> str:
        return f"environment variable {self.env}" if self.env else f"file {self.file}"


@dataclasses.dataclass(frozen=True)
class ServerTlsConfig:
    """The sidecar serves ext_proc over TLS and requires a client certificate from this CA."""

    cert_file: str
    key_file: str
    client_ca_file: str


@dataclasses.dataclass(frozen=True)
class SidecarAuthConfig:
    caller_token: SecretSource | None = SecretSource(env=DEFAULT_TOKEN_ENV)
    state_keys: SecretSource = SecretSource(env=DEFAULT_STATE_KEYS_ENV)
    tls: ServerTlsConfig | None = None


@dataclasses.dataclass(frozen=True)
class ServerTls:
    """PEM bytes for grpc.ssl_server_credentials."""

    cert: bytes
    key: bytes
    client_ca: bytes


@dataclasses.dataclass(frozen=True)
class SidecarSecrets:
    caller_tokens: tuple[bytes, ...]  # empty: callers are authenticated by TLS alone
    state_keys: tuple[bytes, ...]  # the first signs, any verifies
    tls: ServerTls | None


def _source(doc: Any, path: str, problems: list[str]) -> SecretSource | None:
    if not isinstance(doc, Mapping):
        problems.append(f"{path}: must be {{env: NAME}} or {{file: PATH}} (got {doc!r})")
        return None
    for extra in sorted(set(doc) - _SOURCE_KEYS):
        problems.append(f"{path}.{extra}: unknown key")
    env, file = doc.get("env"), doc.get("file")
    if (env is None) == (file is None):
        problems.append(f"{path}: set exactly one of env, file")
        return None
    for key, value in (("env", env), ("file", file)):
        if value is not None and (not isinstance(value, str) or not value):
            problems.append(f"{path}.{key}: must be a non-empty string (got {value!r})")
            return None
    return SecretSource(env=env, file=file)


def parse_sidecar_auth(sidecar: Mapping[str, Any], problems: list[str]) -> SidecarAuthConfig:
    """The `sidecar` section's `caller_token`, `state_keys` and `tls`."""
    default = SidecarAuthConfig()
    tls: ServerTlsConfig | None = None
    tls_doc = sidecar.get("tls")
    if isinstance(tls_doc, Mapping):
        for extra in sorted(set(tls_doc) - set(_TLS_KEYS)):
            problems.append(f"sidecar.tls.{extra}: unknown key")
        files = {}
        for key in _TLS_KEYS:
            value = tls_doc.get(key)
            if not isinstance(value, str) or not value:
                problems.append(f"sidecar.tls.{key}: must be a path (got {value!r})")
            files[key] = value if isinstance(value, str) else ""
        tls = ServerTlsConfig(**files)
    elif tls_doc is not None:
        problems.append("sidecar.tls: must be a mapping of cert_file, key_file, client_ca_file")
    token: SecretSource | None = default.caller_token
    if "caller_token" in sidecar:
        token_doc = sidecar["caller_token"]
        token = None if token_doc is None else _source(token_doc, "sidecar.caller_token", problems)
        if token_doc is None and tls_doc is None:
            problems.append(
                "sidecar.caller_token: required unless sidecar.tls authenticates Envoy by its "
                "client certificate"
            )
    keys = default.state_keys
    if "state_keys" in sidecar:
        keys = _source(sidecar["state_keys"], "sidecar.state_keys", problems) or keys
    return SidecarAuthConfig(caller_token=token, state_keys=keys, tls=tls)


def _read(source: SecretSource, environ: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(text, problem): the value, or why there is none (the value never appears in a problem)."""
    if source.env is not None:
        value = environ.get(source.env, "")
        return (value, None) if value.strip() else (None, f"{source.describe()} is not set")
    assert source.file is not None
    try:
        text = Path(source.file).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        return None, f"cannot read {source.describe()}: {reason}"
    return (text, None) if text.strip() else (None, f"{source.describe()} is empty")


def _lines(text: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def caller_tokens(
    config: SidecarAuthConfig, environ: Mapping[str, str], problems: list[str]
) -> tuple[str, ...]:
    """The caller tokens (one per line; Envoy sends the first, the sidecar accepts any)."""
    source = config.caller_token
    if source is None:
        return ()
    text, problem = _read(source, environ)
    if text is None:
        hint = " (gatewayctl run makes one per run; the Helm chart keeps one in a Secret)"
        problems.append(f"sidecar.caller_token: {problem}{hint}")
        return ()
    tokens = _lines(text)
    for i, token in enumerate(tokens):
        if not _TOKEN.fullmatch(token):
            problems.append(
                f"sidecar.caller_token: value {i + 1} of {source.describe()} must be 32 to 512 "
                "characters from A-Z a-z 0-9 . _ ~ + / = - (e.g. `openssl rand -base64 48`)"
            )
    return tokens


def load_secrets(config: SidecarAuthConfig, environ: Mapping[str, str]) -> SidecarSecrets:
    """Every secret the sidecar's caller checks need; ConfigError lists every problem."""
    problems: list[str] = []
    tokens = caller_tokens(config, environ, problems)
    keys: tuple[str, ...] = ()
    text, problem = _read(config.state_keys, environ)
    if text is None:
        problems.append(f"sidecar.state_keys: {problem} (one key per line, the first signs)")
    else:
        keys = _lines(text)
        for i, key in enumerate(keys):
            if len(key) < MIN_STATE_KEY_CHARS:
                problems.append(
                    f"sidecar.state_keys: key {i + 1} of {config.state_keys.describe()} is "
                    f"shorter than {MIN_STATE_KEY_CHARS} characters"
                )
    tls: ServerTls | None = None
    if config.tls is not None:
        pem: dict[str, bytes] = {}
        for key in _TLS_KEYS:
            path = getattr(config.tls, key)
            try:
                pem[key] = Path(path).read_bytes()
            except OSError as exc:
                problems.append(f"sidecar.tls.{key}: cannot read {path}: {exc.strerror or exc}")
        if len(pem) == len(_TLS_KEYS):
            tls = ServerTls(pem["cert_file"], pem["key_file"], pem["client_ca_file"])
    if problems:
        raise ConfigError(problems)
    return SidecarSecrets(
        caller_tokens=tuple(t.encode() for t in tokens),
        state_keys=tuple(k.encode() for k in keys),
        tls=tls,
    )


def plaintext_bind_problem(address: str) -> str | None:
    """Why the sidecar must not serve plaintext ext_proc on `address` (host:port, [v6]:port or
    unix:PATH), or None: without TLS it listens only where its Envoy is - loopback or a unix
    socket in the pod - never on an address the pod network reaches."""
    if address.startswith(("unix:", "unix-abstract:")):
        return None
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return None
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return None
    return (
        f"refusing to serve ext_proc in plaintext on {address}: anything that reaches that "
        "address could call the sidecar. Bind 127.0.0.1 (Envoy dials it over loopback), or "
        "configure sidecar.tls (client certificates required) for a sidecar apart from its Envoy"
    )


def fresh_secrets(config: SidecarAuthConfig) -> dict[str, str]:
    """A new random caller token and state key (`gatewayctl run` makes them per run), under the
    environment variables the configuration reads them from; an operator's `{file: ...}` is
    used as it is."""
    out: dict[str, str] = {}
    if config.caller_token is not None and config.caller_token.env is not None:
        out[config.caller_token.env] = secrets.token_urlsafe(32)
    if config.state_keys.env is not None:
        out[config.state_keys.env] = secrets.token_urlsafe(32)
    return out
