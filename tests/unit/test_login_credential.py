"""A fresh credential (login/credential.py): the refresh decision, the credential's expiry, and
refreshing through Authlib against the test IdP - once, however many callers ask at once."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from gateway_extproc.login.credential import (
    credential_expiry,
    fresh_credential,
    needs_refresh,
)
from gateway_extproc.login.document import LoginError
from gateway_extproc.login.store import CredentialStore, StoredLogin
from tests.idp import DEVICE_GRANT, IdpClient, IdpUser, OidcProvider

GATEWAY = "http://gw.test"


@pytest.mark.parametrize(
    ("expires_at", "now", "margin", "refresh"),
    [
        (None, 1000, 60, False),  # unknown: used until refused
        (2000, 1000, 60, False),
        (1061, 1000, 60, False),
        (1060, 1000, 60, True),  # within the margin
        (999, 1000, 0, True),  # expired
        (1000, 1000, 0, True),
    ],
)
def test_needs_refresh(expires_at: float | None, now: float, margin: float, refresh: bool) -> None:
    assert needs_refresh(expires_at, now, margin) is refresh


def test_credential_expiry() -> None:
    id_token = jwt.encode({"exp": 1500}, "k" * 32, algorithm="HS256")
    access_jwt = jwt.encode({"exp": 1700}, "k" * 32, algorithm="HS256")
    assert credential_expiry({"id_token": id_token, "expires_in": 60}, "id_token", 1000) == 1500
    assert credential_expiry({"access_token": "x", "expires_at": 1234}, "access_token", 0) == 1234
    assert credential_expiry({"access_token": "x", "expires_in": 60}, "access_token", 1000) == 1060
    assert credential_expiry({"access_token": access_jwt}, "access_token", 1000) == 1700
    assert credential_expiry({"access_token": "opaque"}, "access_token", 1000) is None


@pytest.fixture(scope="module")
def idp() -> Iterator[OidcProvider]:
    provider = OidcProvider(
        [IdpUser("ada@example.com", "pw", ("eng",))], [IdpClient("cli")], device_interval=0
    )
    yield provider
    provider.close()


def logged_in(idp: OidcProvider, path: Path) -> tuple[CredentialStore, StoredLogin]:
    """A stored login whose access token has expired (as gatewayctl login leaves it, later)."""
    with idp._lock:
        token = idp._issue(idp.users["ada@example.com"], "cli", "openid offline_access")
    entry = StoredLogin(
        gateway=GATEWAY,
        issuer=idp.issuer,
        client_id="cli",
        token_kind="access_token",
        access_token=token["access_token"],
        refresh_token=token["refresh_token"],
        id_token=token["id_token"],
        expires_at=time.time() - 1,
        token_endpoint=f"{idp.issuer}/token",
        revocation_endpoint=f"{idp.issuer}/revoke",
    )
    store = CredentialStore(path / "credentials.json")
    with store.locked():
        store.put(entry)
    return store, entry


def test_not_logged_in(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "credentials.json")
    with pytest.raises(LoginError, match=f"not logged in to {GATEWAY}: run gatewayctl login"):
        fresh_credential(store, GATEWAY, now=time.time)


def test_a_fresh_token_is_used_as_it_is(idp: OidcProvider, tmp_path: Path) -> None:
    store, entry = logged_in(idp, tmp_path)
    with store.locked():
        store.put(dataclasses.replace(entry, expires_at=time.time() + 600))
    before = len(idp.grants("refresh_token"))
    assert fresh_credential(store, GATEWAY, now=time.time) == entry.access_token
    assert len(idp.grants("refresh_token")) == before


def test_concurrent_callers_refresh_once(idp: OidcProvider, tmp_path: Path) -> None:
    """Four callers find the token expired at once: one refreshes (the IdP rotates the refresh
    token: a second use would be refused), the others wait for the lock and read its result."""
    store, entry = logged_in(idp, tmp_path)
    before = len(idp.grants("refresh_token"))
    barrier = threading.Barrier(4)
    results: list[object] = []

    def caller() -> None:
        barrier.wait()
        try:
            results.append(fresh_credential(store, GATEWAY, now=time.time))
        except LoginError as exc:
            results.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    refreshes = idp.grants("refresh_token")[before:]
    assert [c.outcome for c in refreshes] == ["ok"]
    # (The new access token may equal the old one: the test IdP's JWTs have whole-second
    # times. The refresh is proven by the IdP's record, the rotation and the new expiry.)
    assert len(set(map(str, results))) == 1 and isinstance(results[0], str)
    with store.locked():
        stored = store.get(GATEWAY)
    assert stored is not None and stored.access_token == results[0]
    assert stored.refresh_token != entry.refresh_token  # the rotated one is kept
    assert stored.expires_at is not None and stored.expires_at > time.time() + 60


def test_a_refused_refresh_says_log_in_again(idp: OidcProvider, tmp_path: Path) -> None:
    store, entry = logged_in(idp, tmp_path)
    with store.locked():
        store.put(dataclasses.replace(entry, refresh_token="spent"))
    with pytest.raises(LoginError, match=r"refused to refresh the token \(invalid_grant\): run"):
        fresh_credential(store, GATEWAY, now=time.time)
    assert idp.grants(DEVICE_GRANT) == []  # nothing but the refresh was tried
