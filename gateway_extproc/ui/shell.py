"""What every answer of the spend page goes through: the middleware that turns errors into pages
and adds the security headers, the templates and the static files, and who is looking (a Bearer
credential or the sign-in's session cookie, else a refusal that sends a person to sign in).

Every answer carries a strict Content-Security-Policy (scripts from the page's own origin only,
no inline script, nothing framed) and `no-store`, except the static files, which are named by
their content's hash and cached for a year. Errors are pages that say what went wrong; anything
unexpected is a 500 with a request id, its details in the log only.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import uuid
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlencode

import jinja2
from aiohttp import web

from gateway_extproc.admin.budget_api import AdminError
from gateway_extproc.budgets.results import BudgetStoreError
from gateway_extproc.spend.query import QueryError
from gateway_extproc.ui.auth import SESSION_COOKIE, Refused, from_bearer, from_session
from gateway_extproc.ui.sessions import Sessions

if TYPE_CHECKING:
    from gateway_extproc.admin.settings import AdminApiConfig
    from gateway_extproc.budgets.gate import BudgetGate
    from gateway_extproc.budgets.model import BudgetConfig
    from gateway_extproc.budgets.store import BudgetStore
    from gateway_extproc.identity.authenticator import Authenticator
    from gateway_extproc.reconcile.settings import ReconcileSettings
    from gateway_extproc.ui.settings import SpendPageConfig

log = logging.getLogger("gateway.ui")

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


class Shell:
    """The parts every handler shares: the running context, the clock, rendering and the viewer."""

    def __init__(self, context: Callable[[], PageContext], clock: Callable[[], float]) -> None:
        self.context = context
        self.clock = clock
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

    # -- plumbing -------------------------------------------------------------------------------

    @web.middleware
    async def guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # raised on, not returned (deprecated by aiohttp)
            harden(exc.headers)
            raise
        except QueryError as exc:
            response = self.message(request, 400, "Bad view", str(exc))
        except AdminError as exc:  # reconciliation not configured, or an unknown provider
            status = 404 if exc.code == "FAILED_PRECONDITION" else 400
            response = self.message(request, status, "Reconciliation", str(exc))
        except BudgetStoreError as exc:
            log.error("spend page: %s", exc)
            response = self.message(request, 503, "Unavailable", "the budget store is unavailable")
        except Exception:
            request_id = f"ui-{uuid.uuid4()}"
            log.exception(
                "spend page: %s %s failed",
                request.method,
                request.path,
                extra={"request_id": request_id},
            )
            response = self.message(
                request, 500, "Something went wrong", f"internal error (request id {request_id})"
            )
        harden(response.headers)
        return response

    def settings(self) -> SpendPageConfig:
        return self.context().config.spend_page

    def store(self) -> BudgetStore:
        store = self.context().budgets.store
        if store is None:
            raise BudgetStoreError("this gateway has no budget store")
        return store

    def sessions(self) -> Sessions:
        store = self.store()
        return Sessions(store.client, store.key_base)

    def html(self, template: str, status: int = 200, **values: Any) -> web.Response:
        values.setdefault("viewer", None)
        values.setdefault("session", None)
        values.setdefault("demo", False)
        values.setdefault("active", "")
        for flag in ("signin", "bearer_only"):
            values.setdefault(flag, False)
        values.setdefault("public_url", "")
        values.setdefault("reconcile", self.context().config.reconcile.enabled)
        body = self._templates.get_template(template).render(**values)
        return web.Response(text=body, status=status, content_type="text/html")

    def message(
        self, request: web.Request, status: int, title: str, message: str, **flags: Any
    ) -> web.Response:
        if request.path.endswith(".csv"):
            return web.Response(text=message + "\n", status=status, content_type="text/plain")
        return self.html("message.html", status, title=title, message=message, **flags)

    async def to_slash(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/ui/")

    async def static_file(self, request: web.Request) -> web.StreamResponse:
        found = self._static.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound(text="not found")
        data, content_type, version = found
        response = web.Response(body=data, content_type=content_type)
        response.headers["cache-control"] = "public, max-age=31536000, immutable"
        response.headers["etag"] = f'"{version}"'
        return response

    # -- who is looking ---------------------------------------------------------------------

    async def viewer(self, request: web.Request) -> tuple[Any, Any]:
        """(Viewer, Session or None); raises an HTTP answer when there is no credential."""
        ctx = self.context()
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
            found = await from_session(session_id, self.sessions(), admin, self.clock())
            if found is not None:
                return found
        raise self._refusal(
            request,
            "sign in to see this page"
            if self.settings().oidc
            else "send Authorization: Bearer <token>",
        )

    def _refusal(self, request: web.Request, message: str) -> web.HTTPException:
        settings = self.settings()
        html = not request.path.endswith(".csv")
        if html and settings.oidc is not None and not request.headers.get("authorization"):
            target = request.path_qs if request.path.startswith("/ui/") else "/ui/"
            return web.HTTPFound(f"/ui/login?{urlencode({'next': target})}")
        response = self.message(
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


def csv_response(text: str, name: str) -> web.Response:
    response = web.Response(text=text, content_type="text/csv")
    response.headers["content-disposition"] = f'attachment; filename="{name}"'
    return response


def harden(headers: MutableMapping[str, str]) -> None:
    """The security headers every answer carries (docs/spend-page.md)."""
    headers.setdefault("content-security-policy", CSP)
    headers.setdefault("x-content-type-options", "nosniff")
    # same-origin, not no-referrer: a view's URL (its filters name people) never leaves for
    # another site, and the browser still sends the Origin the sign-out check compares
    # (with no-referrer, Chromium sends `Origin: null` on the page's own form).
    headers.setdefault("referrer-policy", "same-origin")
    headers.setdefault("cache-control", "no-store")
