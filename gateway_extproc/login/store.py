"""The credentials file: `$XDG_CONFIG_HOME/llm-gateway/credentials.json` (default
`~/.config`), one entry per gateway URL so several gateways coexist.

Owner-only: the directory is 0700 and the file 0600, written atomically (a temporary file in the
same directory, fsync, rename), and a file that anyone but its owner could read - or that
belongs to someone else - is refused rather than read. Every read-modify-write happens under an
exclusive lock on a lock file beside it (flock), so two `token --print` at once never both spend
one rotated refresh token. No OS keyring: docs/people.md says why and what to do instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from gateway_extproc.login.document import LoginError

FILE_VERSION = 1


def credentials_path(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME") or "~") / ".config")
    return Path(base).expanduser() / "llm-gateway" / "credentials.json"


@dataclasses.dataclass(frozen=True)
class StoredLogin:
    """One gateway's tokens and what is needed to refresh and revoke them without asking the
    gateway or the IdP's discovery again."""

    gateway: str
    issuer: str
    client_id: str
    token_kind: str  # access_token | id_token: which one is the gateway credential
    access_token: str
    refresh_token: str | None
    id_token: str | None
    expires_at: float | None  # the credential's expiry (unix seconds); None: unknown
    token_endpoint: str
    revocation_endpoint: str | None = None
    client_secret_env: str | None = None

    @property
    def credential(self) -> str:
        token = self.id_token if self.token_kind == "id_token" else self.access_token
        if not token:
            raise LoginError(f"no {self.token_kind} is stored for {self.gateway}")
        return token

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> StoredLogin:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})


class CredentialStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")

    def _ensure_dir(self) -> None:
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = directory.stat()
        if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) & 0o077:
            directory.chmod(0o700)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive, across processes, for a whole read-refresh-write."""
        self._ensure_dir()
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _load(self) -> dict[str, Any]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise LoginError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if info.st_uid != os.geteuid():
                raise LoginError(f"{self.path} belongs to another user: refusing to read it")
            if stat.S_IMODE(info.st_mode) & 0o077:
                raise LoginError(
                    f"{self.path} can be read or written by others "
                    f"(mode {stat.S_IMODE(info.st_mode):04o}): refusing to use it. Its tokens may "
                    f"have leaked: run gatewayctl logout, then chmod 600 it (or delete it) and "
                    f"gatewayctl login again"
                )
            raw = f.read()
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise LoginError(f"{self.path} is not valid JSON: delete it and log in again") from exc
        gateways = doc.get("gateways") if isinstance(doc, dict) else None
        return gateways if isinstance(gateways, dict) else {}

    def _save(self, gateways: Mapping[str, Any]) -> None:
        self._ensure_dir()
        text = json.dumps({"version": FILE_VERSION, "gateways": gateways}, indent=2) + "\n"
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    # Call these inside `locked()`.

    def get(self, gateway: str) -> StoredLogin | None:
        entry = self._load().get(gateway)
        return StoredLogin.from_json(entry) if isinstance(entry, dict) else None

    def put(self, entry: StoredLogin) -> None:
        gateways = self._load()
        gateways[entry.gateway] = entry.as_json()
        self._save(gateways)

    def remove(self, gateway: str) -> bool:
        gateways = self._load()
        if gateways.pop(gateway, None) is None:
            return False
        self._save(gateways)
        return True
