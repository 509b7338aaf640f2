"""The spend page's HTTP handlers (aiohttp), served by sidecar worker 0 behind Envoy's admin JSON
listener: `/ui/` (spend), `/ui/budgets`, `/ui/reconciliation` (admins), their `.csv` exports,
the sign-in (`/ui/login`, `/ui/callback`), `/ui/logout` (POST) and `/ui/static/`.

Every answer carries a strict Content-Security-Policy (scripts from the page's own origin only,
no inline script, nothing framed) and `no-store`, except the static files, which are named by
their content's hash and cached for a year. Errors are pages that say what went wrong; anything
unexpected is a 500 with a request id, its details in the log only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import importlib.resources
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlencode, urlsplit

import jinja2
from aiohttp import web

from gateway_extproc.admin import recon_api
from gateway_extproc.admin.budget_api import AdminError
from gateway_extproc.budgets.overrides import Overrides
from gateway_extproc.budgets.results import BudgetStoreError
from gateway_extproc.spend.query import QueryError
from gateway_extproc.ui import demo, pages, recon_view, views
from gateway_extproc.ui.auth import SESSION_COOKIE, Refused, from_bearer, from_session
from gateway_extproc.ui.sessions import LoginState, Sessions, new_id
from gateway_extproc.ui.signin import SignIn, SignInError, verify_id_token

if TYPE_CHECKING:
    from gateway_extproc.admin.settings import AdminApiConfig
    from gateway_extproc.budgets.gate import BudgetGate
    from gateway_extproc.budgets.model import BudgetConfig
    from gateway_extproc.budgets.store import BudgetStore
    from gateway_extproc.identity.authenticator import Authenticator
    from gateway_extproc.reconcile.settings import ReconcileSettings
    from gateway_extproc.ui.settings import SpendPageConfig

log = logging.getLogger("gateway.ui")

LOGIN_COOKIE = "gw_login"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", "": "text/plain"}
STATIC_FILES = ("page.css", "page.js", "uplot/uPlot.iife.min.js", "uplot/uPlot.min.css")


class PageConfig(Protocol):
    @property
    def admin_api(self) -> AdminApiConfig: ...
    @property
    def spend_page(self) -> SpendPageConfig: ...
    @property
    def budgets(self) -> Sequence[BudgetConfig]: ...
    @property
    def reconcile(self) -> ReconcileSettings: ...


class PageContext(Protocol):
    """What the page reads of the running configuration's context (swapped on reload)."""

    @property
    def config(self) -> PageConfig: ...
    @property
    def authenticator(self) -> Authenticator: ...
    @property
    def admin_authenticator(self) -> Authenticator | None: ...
    @property
    def budgets(self) -> BudgetGate: ...


class Page:
    def __init__(
        self,
        context: Callable[[], PageContext],
        environ: Mapping[str, str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._context = context
        self._environ = environ
        self._clock = clock
        self._signins: dict[tuple[object, ...], SignIn] = {}
        self._overrides: dict[int, Overrides] = {}
        package = importlib.resources.files("gateway_extproc.ui")
        self._static: dict[str, tuple[bytes, str, str]] = {}
        for name in STATIC_FILES:
            data = package.joinpath("static", name).read_bytes()
            suffix = "." + name.rsplit(".", 1)[-1]
            version = hashlib.sha256(data).hexdigest()[:12]
            self._static[name] = (data, STATIC_TYPES.get(suffix, "text/plain"), version)
        self._templates = jinja2.Environment(
            loader=jinja2.PackageLoader("gateway_extproc.ui", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self._templates.globals["static"] = self.static_url

    def static_url(self, name: str) -> str:
        return f"/ui/static/{name}?v={self._static[name][2]}"

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/ui", self._to_slash)
        app.router.add_get("/ui/", self._spend)
        app.router.add_get("/ui/spend.csv", self._spend_csv)
        app.router.add_get("/ui/budgets", self._budgets)
        app.router.add_get("/ui/budgets.csv", self._budgets_csv)
        app.router.add_get(recon_view.PATH, self._reconciliation)
        app.router.add_get(recon_view.PATH + ".csv", self._reconciliation_csv)
        app.router.add_get("/ui/login", self._login)
        app.router.add_get("/ui/callback", self._callback)
        app.router.add_post("/ui/logout", self._logout)
        app.router.add_get("/ui/static/{name:.+}", self._static_file)
        return app

    # -- plumbing -------------------------------------------------------------------------------

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # raised on, not returned (deprecated by aiohttp)
            _harden(exc.headers)
            raise
        except QueryError as exc:
            response = self._message(request, 400, "Bad view", str(exc))
        except AdminError as exc:  # reconciliation not configured, or an unknown provider
            status = 404 if exc.code == "FAILED_PRECONDITION" else 400
            response = self._message(request, status, "Reconciliation", str(exc))
        except BudgetStoreError as exc:
            log.error("spend page: %s", exc)
            response = self._message(request, 503, "Unavailable", "the budget store is unavailable")
        except Exception:
            request_id = f"ui-{uuid.uuid4()}"
            log.exception(
                "spend page: %s %s failed",
                request.method,
                request.path,
                extra={"request_id": request_id},
            )
            response = self._message(
                request, 500, "Something went wrong", f"internal error (request id {request_id})"
            )
        _harden(response.headers)
        return response

    def _settings(self) -> SpendPageConfig:
        return self._context().config.spend_page

    def _store(self) -> BudgetStore:
        store = self._context().budgets.store
        if store is None:
            raise BudgetStoreError("this gateway has no budget store")
        return store

    def _html(self, template: str, status: int = 200, **values: Any) -> web.Response:
        values.setdefault("viewer", None)
        values.setdefault("session", None)
        values.setdefault("demo", False)
        values.setdefault("active", "")
        for flag in ("signin", "bearer_only"):
            values.setdefault(flag, False)
        values.setdefault("public_url", "")
        values.setdefault("reconcile", self._context().config.reconcile.enabled)
        body = self._templates.get_template(template).render(**values)
        return web.Response(text=body, status=status, content_type="text/html")

    def _message(
        self, request: web.Request, status: int, title: str, message: str, **flags: Any
    ) -> web.Response:
        if request.path.endswith(".csv"):
            return web.Response(text=message + "\n", status=status, content_type="text/plain")
        return self._html("message.html", status, title=title, message=message, **flags)

    async def _to_slash(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/ui/")

    async def _static_file(self, request: web.Request) -> web.StreamResponse:
        found = self._static.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound(text="not found")
        data, content_type, version = found
        response = web.Response(body=data, content_type=content_type)
        response.headers["cache-control"] = "public, max-age=31536000, immutable"
        response.headers["etag"] = f'"{version}"'
        return response

    # -- who is looking ---------------------------------------------------------------------

    async def _viewer(self, request: web.Request) -> tuple[Any, Any]:
        """(Viewer, Session or None); raises an HTTP answer when there is no credential."""
        ctx = self._context()
        admin = ctx.config.admin_api
        if "authorization" in request.headers or "x-api-key" in request.headers:
            try:
                headers = {k.lower(): v for k, v in request.headers.items()}
                if "authorization" not in headers:
                    headers["authorization"] = f"Bearer {headers['x-api-key']}"
                return await from_bearer(headers, ctx, admin), None
            except Refused as exc:
                raise self._refusal(request, str(exc)) from None
        session_id = request.cookies.get(SESSION_COOKIE, "")
        if session_id:
            found = await from_session(session_id, self._sessions(), admin, self._clock())
            if found is not None:
                return found
        raise self._refusal(
            request,
            "sign in to see this page"
            if self._settings().oidc
            else "send Authorization: Bearer <token>",
        )

    def _refusal(self, request: web.Request, message: str) -> web.HTTPException:
        settings = self._settings()
        html = not request.path.endswith(".csv")
        if html and settings.oidc is not None and not request.headers.get("authorization"):
            target = request.path_qs if request.path.startswith("/ui/") else "/ui/"
            return web.HTTPFound(f"/ui/login?{urlencode({'next': target})}")
        response = self._message(
            request,
            401,
            "Sign in",
            message,
            signin=settings.oidc is not None,
            bearer_only=settings.oidc is None,
            public_url=settings.public_url,
        )
        return web.HTTPUnauthorized(
            text=response.text,
            content_type=response.content_type,
            headers={"www-authenticate": 'Bearer realm="llm-gateway spend page"'},
        )

    def _sessions(self) -> Sessions:
        store = self._store()
        return Sessions(store.client, store.key_base)

    # -- views --------------------------------------------------------------------------------

    async def _spend(self, request: web.Request) -> web.StreamResponse:
        viewer, session = await self._viewer(request)
        query = views.parse_query(request.query.items())
        store = self._store()
        values = await pages.spend_context(store, query, viewer, self._clock())
        return self._html(
            "spend.html",
            title="Spend",
            viewer=viewer,
            session=session,
            demo=await demo.present(store),
            active="spend",
            **values,
        )

    async def _spend_csv(self, request: web.Request) -> web.StreamResponse:
        viewer, _ = await self._viewer(request)
        query = views.parse_query(request.query.items())
        _, response = await pages.spend(self._store(), query, viewer, self._clock())
        return _csv(views.spend_csv(response), "spend.csv")

    async def _budget_records(self, request: web.Request) -> tuple[Any, Any, list[Any]]:
        viewer, session = await self._viewer(request)
        store = self._store()
        overrides = self._overrides.get(id(store))
        if overrides is None or overrides.store is not store:
            overrides = self._overrides[id(store)] = Overrides(store)
        budgets = self._context().config.budgets
        records = await pages.budget_records(overrides, budgets, viewer, self._clock())
        return viewer, session, records

    async def _budgets(self, request: web.Request) -> web.StreamResponse:
        viewer, session, records = await self._budget_records(request)
        return self._html(
            "budgets.html",
            title="Budgets",
            viewer=viewer,
            session=session,
            demo=await demo.present(self._store()),
            active="budgets",
            budgets=records,
        )

    async def _budgets_csv(self, request: web.Request) -> web.StreamResponse:
        _, _, records = await self._budget_records(request)
        return _csv(views.budgets_csv(records, pages.BUDGET_CSV_COLUMNS), "budgets.csv")

    async def _reconciled(self, request: web.Request) -> tuple[Any, Any, Any, list[Any], list[Any]]:
        """(viewer, session, query, results, missing) for an admin; 403 for anyone else."""
        viewer, session = await self._viewer(request)
        if not viewer.admin:
            response = self._message(
                request,
                403,
                "Admins only",
                "reconciliation with the providers' bills is shown to admins only "
                "(admin_api.read_groups)",
                viewer=viewer,
                session=session,
            )
            raise web.HTTPForbidden(text=response.text, content_type=response.content_type)
        now = self._clock()
        today = dt.datetime.fromtimestamp(now, dt.UTC).date()
        query = recon_view.parse_query(request.query.items(), today)
        settings = self._context().config.reconcile
        # GetReconciliation's own read (admin/recon_api.reconciled): the page's numbers are
        # the admin API's numbers.
        results, missing = await recon_api.reconciled(query.request(), settings, self._store(), now)
        return viewer, session, query, results, missing

    async def _reconciliation(self, request: web.Request) -> web.StreamResponse:
        viewer, session, query, results, missing = await self._reconciled(request)
        settings = self._context().config.reconcile
        return self._html(
            "reconciliation.html",
            title="Reconciliation",
            viewer=viewer,
            session=session,
            active="reconciliation",
            query=query,
            providers=[p.provider for p in settings.providers],
            thresholds=recon_view.thresholds(settings.alert),
            blocks=recon_view.blocks(results, missing, settings.alert),
            headers=recon_view.ROW_HEADERS,
            csv_link=query.link(recon_view.PATH + ".csv"),
        )

    async def _reconciliation_csv(self, request: web.Request) -> web.StreamResponse:
        _, _, _, results, _ = await self._reconciled(request)
        return _csv(recon_view.recon_csv(results), "reconciliation.csv")

    # -- sign-in ------------------------------------------------------------------------------

    def _signin(self) -> tuple[SignIn, Any]:
        """The sign-in of the running configuration and its issuer; 404 without `oidc`."""
        ctx = self._context()
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
            secure=self._settings().secure_cookies,
        )

    async def _login(self, request: web.Request) -> web.StreamResponse:
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
            return self._message(request, 502, "Sign-in failed", str(exc))
        await self._sessions().begin_login(login_id, login)
        response = web.HTTPFound(url)
        self._cookie(response, LOGIN_COOKIE, login_id, 600)
        return response

    async def _callback(self, request: web.Request) -> web.StreamResponse:
        signin, issuer = self._signin()
        login = await self._sessions().take_login(request.cookies.get(LOGIN_COOKIE, ""))
        again = {"signin": True}
        if login is None:
            return self._message(
                request,
                400,
                "Sign-in failed",
                "this sign-in expired or was already used (or cookies are off): start again",
                **again,
            )
        returned = request.query.get("state", "")
        if not hmac.compare_digest(returned.encode(), login.state.encode()):
            return self._message(
                request,
                400,
                "Sign-in failed",
                "the sign-in's state does not match the one this browser started: start again",
                **again,
            )
        error = request.query.get("error")
        if error is not None:
            text = "you declined the sign-in" if error == "access_denied" else f"error {error}"
            return self._message(
                request, 403, "Sign-in failed", f"the identity provider said: {text}", **again
            )
        code = request.query.get("code", "")
        if not code:
            return self._message(request, 400, "Sign-in failed", "no code came back", **again)
        settings = self._settings()
        try:
            id_token = await signin.exchange(issuer, code, login)
            jwks = self._context().authenticator.jwks[issuer.name]
            identity = await verify_id_token(
                id_token, issuer, signin.settings.client_id, jwks, login.nonce
            )
        except SignInError as exc:
            return self._message(request, 403, "Sign-in failed", str(exc), **again)
        session_id, _ = await self._sessions().create(
            identity, settings.session_ttl_s, self._clock()
        )
        log.info("spend page: %s signed in", identity.subject)
        response = web.HTTPSeeOther(login.next)
        self._cookie(response, SESSION_COOKIE, session_id, settings.session_ttl_s)
        response.del_cookie(LOGIN_COOKIE, path="/ui")
        return response

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("origin")
        if origin is not None and origin != self._origin(request):
            return self._message(request, 403, "Not signed out", "cross-site sign-out refused")
        session_id = request.cookies.get(SESSION_COOKIE, "")
        sessions = self._sessions()
        session = await sessions.get(session_id, self._clock()) if session_id else None
        form = await request.post()
        csrf = str(form.get("csrf", ""))
        if session is None or not hmac.compare_digest(csrf.encode(), session.csrf.encode()):
            return self._message(request, 403, "Not signed out", "missing or stale form token")
        await sessions.delete(session_id)
        response = self._message(
            request,
            200,
            "Signed out",
            "you are signed out",
            signin=self._settings().oidc is not None,
        )
        response.del_cookie(SESSION_COOKIE, path="/ui")
        return response

    def _origin(self, request: web.Request) -> str:
        public = self._settings().public_url
        if public:
            parts = urlsplit(public)
            return f"{parts.scheme}://{parts.netloc}"
        return f"{request.scheme}://{request.host}"


def _csv(text: str, name: str) -> web.Response:
    response = web.Response(text=text, content_type="text/csv")
    response.headers["content-disposition"] = f'attachment; filename="{name}"'
    return response


def _harden(headers: MutableMapping[str, str]) -> None:
    """The security headers every answer carries (docs/spend-page.md)."""
    headers.setdefault("content-security-policy", CSP)
    headers.setdefault("x-content-type-options", "nosniff")
    # same-origin, not no-referrer: a view's URL (its filters name people) never leaves for
    # another site, and the browser still sends the Origin the sign-out check compares
    # (with no-referrer, Chromium sends `Origin: null` on the page's own form).
    headers.setdefault("referrer-policy", "same-origin")
    headers.setdefault("cache-control", "no-store")
