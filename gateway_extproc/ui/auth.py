"""Who is looking at the page: a Bearer credential (an admin token, else a data-plane token) or
the sign-in's session cookie, turned into a `Viewer` (access.py decides what it sees)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from gateway_extproc.errors import Unauthenticated
from gateway_extproc.identity.model import Kind
from gateway_extproc.ui.access import Source, Viewer, viewer
from gateway_extproc.ui.sessions import Session, Sessions

if TYPE_CHECKING:
    from gateway_extproc.admin.settings import AdminApiConfig
    from gateway_extproc.identity.authenticator import Authenticator

SESSION_COOKIE = "gw_session"


class Refused(Exception):
    """No usable credential; the message says why (no secrets in it)."""


class Authenticators(Protocol):
    @property
    def authenticator(self) -> Authenticator: ...
    @property
    def admin_authenticator(self) -> Authenticator | None: ...


async def from_bearer(
    headers: Mapping[str, str], ctx: Authenticators, admin: AdminApiConfig
) -> Viewer:
    """An admin API credential first (its own audience), else a data-plane credential."""
    auth_headers = {"authorization": headers.get("authorization", "")}
    if ctx.admin_authenticator is not None:
        try:
            identity = await ctx.admin_authenticator.authenticate(auth_headers)
            return _checked(viewer(identity, Source.ADMIN_TOKEN, admin))
        except Unauthenticated:
            pass
    try:
        identity = await ctx.authenticator.authenticate(auth_headers)
    except Unauthenticated as exc:
        raise Refused(str(exc)) from None
    return _checked(viewer(identity, Source.DATA_TOKEN, admin))


def _checked(found: Viewer) -> Viewer:
    if found.identity.kind is Kind.ANONYMOUS:
        raise Refused("an anonymous caller has no spend of its own: send a credential")
    return found


async def from_session(
    session_id: str, sessions: Sessions, admin: AdminApiConfig, now: float
) -> tuple[Viewer, Session] | None:
    session = await sessions.get(session_id, now)
    if session is None:
        return None
    return viewer(session.identity, Source.SESSION, admin), session
