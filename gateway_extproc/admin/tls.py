"""TLS for the admin API's gRPC port: the `admin_api.tls` setting, the server's credentials
(re-read when the files change, so a renewed certificate needs no restart), and the client's.

    admin_api:
      tls:
        cert_file: /etc/llm-gateway-admin-tls/tls.crt    # the server's PEM chain
        key_file: /etc/llm-gateway-admin-tls/tls.key
        client_ca_file: /etc/llm-gateway-admin-ca/ca.crt   # optional: mutual TLS

With `client_ca_file`, a client must present a certificate signed by that CA before any call
(the bearer token is still required: the certificate says which machine, the token who).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import grpc

__all__ = ["AdminTls", "channel_credentials", "parse_tls", "server_credentials"]

log = logging.getLogger("gateway.admin")


@dataclasses.dataclass(frozen=True)
class AdminTls:
    cert_file: str
    key_file: str
    client_ca_file: str | None = None  # set: clients need a certificate this CA signed

    @property
    def files(self) -> tuple[str, ...]:
        return (self.cert_file, self.key_file, *filter(None, (self.client_ca_file,)))


def _pem_file(doc: Mapping[object, object], key: str, problems: list[str]) -> str | None:
    """A readable file's path; None (with a problem, unless absent) otherwise."""
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        problems.append(f"admin_api.tls.{key}: must be a path (got {value!r})")
        return None
    try:
        with Path(value).open("rb") as f:
            f.read(1)
    except OSError as exc:
        problems.append(f"admin_api.tls.{key}: cannot read {value}: {exc.strerror or exc}")
    return value


def parse_tls(doc: object, problems: list[str]) -> AdminTls | None:
    """`tls: {cert_file, key_file[, client_ca_file]}`; every file must be readable now."""
    if doc is None:
        return None
    if not isinstance(doc, Mapping):
        problems.append("admin_api.tls: must be a mapping with cert_file, key_file")
        return None
    known = [f.name for f in dataclasses.fields(AdminTls)]
    for extra in sorted(set(map(str, doc)) - set(known)):
        problems.append(f"admin_api.tls.{extra}: unknown key (expected one of {', '.join(known)})")
    cert, key = _pem_file(doc, "cert_file", problems), _pem_file(doc, "key_file", problems)
    for name in ("cert_file", "key_file"):
        if doc.get(name) is None:
            problems.append(f"admin_api.tls.{name}: required (a PEM file)")
    client_ca = _pem_file(doc, "client_ca_file", problems)
    if cert is None or key is None:
        return None
    return AdminTls(cert_file=cert, key_file=key, client_ca_file=client_ca)


def _stamp(files: tuple[str, ...]) -> tuple[tuple[int, int, int], ...]:
    """What changes when a file is replaced (a Kubernetes Secret swaps a symlink)."""
    out = []
    for name in files:
        st = os.stat(name)
        out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


def _configuration(tls: AdminTls) -> grpc.ServerCertificateConfiguration:
    ca = Path(tls.client_ca_file).read_bytes() if tls.client_ca_file else None
    pair = (Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes())
    return grpc.ssl_server_certificate_configuration([pair], root_certificates=ca)


class _Reloader:
    """gRPC asks before every handshake; the files are read again only when they changed. A
    change that cannot be read (a half-written file) keeps the last good certificate."""

    def __init__(self, tls: AdminTls) -> None:
        self.tls = tls
        self.stamp = _stamp(tls.files)
        self.reloads = 0

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            stamp = _stamp(self.tls.files)
            if stamp == self.stamp:
                return None
            configuration = _configuration(self.tls)
        except OSError as exc:
            log.warning("admin API TLS: cannot re-read the certificate files: %s", exc)
            return None
        self.stamp = stamp
        self.reloads += 1
        log.info("admin API TLS: certificate files changed; new connections use them")
        return configuration


def server_credentials(tls: AdminTls) -> grpc.ServerCredentials:
    """TLS (mutual with `client_ca_file`), following certificate renewals."""
    return grpc.dynamic_ssl_server_credentials(
        _configuration(tls),
        _Reloader(tls),
        require_client_authentication=tls.client_ca_file is not None,
    )


def channel_credentials(
    ca_file: str | None, cert_file: str | None, key_file: str | None
) -> grpc.ChannelCredentials:
    """A client's: trust `ca_file` (else gRPC's default roots), present a certificate if given."""
    if (cert_file is None) != (key_file is None):
        raise ValueError("a client certificate needs both its certificate and key file")
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca_file).read_bytes() if ca_file else None,
        private_key=Path(key_file).read_bytes() if key_file else None,
        certificate_chain=Path(cert_file).read_bytes() if cert_file else None,
    )
