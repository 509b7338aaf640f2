"""The credentials file (login/store.py): where it is, owner-only permissions, atomic writes,
one entry per gateway, and refusing a file others can read."""

from __future__ import annotations

import dataclasses
import json
import stat
from pathlib import Path

import pytest

from gateway_extproc.login.document import LoginError
from gateway_extproc.login.store import CredentialStore, StoredLogin, credentials_path

ENTRY = StoredLogin(
    gateway="https://gw.example.com",
    issuer="https://idp.example.com",
    client_id="cli",
    token_kind="access_token",
    access_token="at-1",
    refresh_token="rt-1",
    id_token="idt-1",
    expires_at=2000.0,
    token_endpoint="https://idp.example.com/token",
    revocation_endpoint="https://idp.example.com/revoke",
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_path_follows_xdg_config_home() -> None:
    assert credentials_path({"XDG_CONFIG_HOME": "/x", "HOME": "/home/a"}) == Path(
        "/x/llm-gateway/credentials.json"
    )
    assert credentials_path({"HOME": "/home/a"}) == Path(
        "/home/a/.config/llm-gateway/credentials.json"
    )


def test_owner_only_atomic_and_keyed_by_gateway(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "cfg" / "llm-gateway" / "credentials.json")
    other = dataclasses.replace(ENTRY, gateway="http://127.0.0.1:10000", access_token="at-2")
    with store.locked():
        store.put(ENTRY)
        store.put(other)
    assert mode(store.path.parent) == 0o700
    assert mode(store.path) == 0o600
    assert sorted(p.name for p in store.path.parent.iterdir()) == [
        "credentials.json",
        "credentials.json.lock",
    ]  # no temporary file left behind
    with store.locked():
        assert store.get(ENTRY.gateway) == ENTRY
        assert store.get(other.gateway) == other
        assert store.remove(ENTRY.gateway) is True
        assert store.remove(ENTRY.gateway) is False
        assert store.get(ENTRY.gateway) is None
    assert list(json.loads(store.path.read_text())["gateways"]) == [other.gateway]


def test_a_loose_directory_is_tightened(tmp_path: Path) -> None:
    directory = tmp_path / "llm-gateway"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    store = CredentialStore(directory / "credentials.json")
    with store.locked():
        store.put(ENTRY)
    assert mode(directory) == 0o700


@pytest.mark.parametrize("loose", [0o644, 0o640, 0o604, 0o660])
def test_a_file_others_can_read_is_refused(tmp_path: Path, loose: int) -> None:
    store = CredentialStore(tmp_path / "credentials.json")
    with store.locked():
        store.put(ENTRY)
    store.path.chmod(loose)
    with store.locked(), pytest.raises(LoginError, match="refusing to use it"):
        store.get(ENTRY.gateway)


def test_the_credential_is_the_configured_token() -> None:
    assert ENTRY.credential == "at-1"
    assert dataclasses.replace(ENTRY, token_kind="id_token").credential == "idt-1"
    with pytest.raises(LoginError, match="no id_token is stored"):
        _ = dataclasses.replace(ENTRY, token_kind="id_token", id_token=None).credential
