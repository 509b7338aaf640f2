"""The spend page's sign-in handlers: `/ui/login` (to the identity provider), `/ui/callback`
(back from it, into a session cookie) and `/ui/logout` (POST, with the session's form token and
a same-origin check). The OIDC exchange itself is signin.py's; the sessions are sessions.py's."""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from gateway_extproc.ui.auth import SESSION_COOKIE
from gateway_extproc.ui.sessions import LoginState, new_id
from gateway_extproc.ui.shell import Shell
from gateway_extproc.ui.signin import SignIn, SignInError, verify_id_token

log = logging.getLogger("gateway.ui")

LOGIN_COOKIE = "gw_login"


class SignInHandlers:
    def __init__(self, shell: Shell, environ: Mapping[str, str]) -> None:
        self._shell = shell
        self._environ = environ
        self._signins: dict[tuple[object, ...], SignIn] = {}

    def _signin(self) -> tuple[SignIn, Any]:
        """The sign-in of the running configuration and its issuer; 404 without `oidc`."""
        ctx = self._shell.context()
        settings = ctx.config.spend_page
        oidc = settings.oidc
        if oidc is None:
            raise web.HTTPNotFound(
                text="this gateway has no sign-in (spend_page.oidc): send a Bearer credential"
            )
        issuer = next(i for i in ctx.authenticator.config.issuers if i.name == oidc.issuer)
        secret = self._environ.get(oidc.client_secret_env) if oidc.client_secret_env else None
        key = (oidc, settings.redirect_uri, secret)
        signin = self._signins.get(key)
        if signin is None:
            self._signins.clear()  # a reload changed it: one cached discovery at a time
            signin = self._signins[key] = SignIn(oidc, settings.redirect_uri, secret)
        return signin, issuer

    def _cookie(self, response: web.StreamResponse, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/ui",
            httponly=True,
            samesite="Lax",
            secure=self._shell.settings().secure_cookies,
        )

    async def login(self, request: web.Request) -> web.StreamResponse:
        signin, issuer = self._signin()
        wanted = request.query.get("next", "/ui/")
        target = wanted if wanted.startswith("/ui/") and "//" not in wanted else "/ui/"
        login = LoginState(
            state=secrets.token_urlsafe(24),
            nonce=secrets.token_urlsafe(24),
            verifier=secrets.token_urlsafe(48),
            next=target,
        )
        login_id = new_id()
        try:
            url = await signin.authorization_url(issuer, login)
        except SignInError as exc:
            return self._shell.message(request, 502, "Sign-in failed", str(exc))
        await self._shell.sessions().begin_login(login_id, login)
        response = web.HTTPFound(url)
        self._cookie(response, LOGIN_COOKIE, login_id, 600)
        return response

    async def callback(self, request: web.Request) -> web.StreamResponse:
        shell = self._shell
        signin, issuer = self._signin()
        login = await shell.sessions().take_login(request.cookies.get(LOGIN_COOKIE, ""))
        again = {"signin": True}
        if login is None:
            return shell.message(
                request,
                400,
                "Sign-in failed",
                "this sign-in expired or was already used (or cookies are off): start again",
                **again,
            )
        returned = request.query.get("state", "")
        if not hmac.compare_digest(returned.encode(), login.state.encode()):
            return shell.message(
                request,
                400,
                "Sign-in failed",
                "the sign-in's state does not match the one this browser started: start again",
                **again,
            )
        error = request.query.get("error")
        if error is not None:
            text = "you declined the sign-in" if error == "access_denied" else f"error {error}"
            return shell.message(
                request, 403, "Sign-in failed", f"the identity provider said: {text}", **again
            )
        code = request.query.get("code", "")
        if not code:
            return shell.message(request, 400, "Sign-in failed", "no code came back", **again)
        settings = shell.settings()
        try:
            id_token = await signin.exchange(issuer, code, login)
            jwks = shell.context().authenticator.jwks[issuer.name]
            identity = await verify_id_token(
                id_token, issuer, signin.settings.client_id, jwks, login.nonce
            )
        except SignInError as exc:
            return shell.message(request, 403, "Sign-in failed", str(exc), **again)
        session_id, _ = await shell.sessions().create(
            identity, settings.session_ttl_s, shell.clock()
        )
        log.info("spend page: %s signed in", identity.subject)
        response = web.HTTPSeeOther(login.next)
        self._cookie(response, SESSION_COOKIE, session_id, settings.session_ttl_s)
        response.del_cookie(LOGIN_COOKIE, path="/ui")
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        shell = self._shell
        origin = request.headers.get("origin")
        if origin is not None and origin != self._origin(request):
            return shell.message(request, 403, "Not signed out", "cross-site sign-out refused")
        session_id = request.cookies.get(SESSION_COOKIE, "")
        sessions = shell.sessions()
        session = await sessions.get(session_id, shell.clock()) if session_id else None
        form = await request.post()
        csrf = str(form.get("csrf", ""))
        if session is None or not hmac.compare_digest(csrf.encode(), session.csrf.encode()):
            return shell.message(request, 403, "Not signed out", "missing or stale form token")
        await sessions.delete(session_id)
        response = shell.message(
            request,
            200,
            "Signed out",
            "you are signed out",
            signin=shell.settings().oidc is not None,
        )
        response.del_cookie(SESSION_COOKIE, path="/ui")
        return response

    def _origin(self, request: web.Request) -> str:
        public = self._shell.settings().public_url
        if public:
            parts = urlsplit(public)
            return f"{parts.scheme}://{parts.netloc}"
        return f"{request.scheme}://{request.host}"
