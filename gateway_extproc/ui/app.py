"""The spend page's HTTP routes (aiohttp), served by sidecar worker 0 behind Envoy's admin JSON
listener: `/ui/` (spend), `/ui/budgets`, `/ui/reconciliation` (admins), their `.csv` exports,
the sign-in (`/ui/login`, `/ui/callback`), `/ui/logout` (POST) and `/ui/static/`.

Where each part lives: shell.py (every answer's security headers and error pages, templates,
static files, who is looking), view_handlers.py (the views and their CSV), signin_handlers.py
(sign-in, callback, sign-out and their cookies).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from aiohttp import web

from gateway_extproc.ui import recon_view
from gateway_extproc.ui.shell import PageContext, Shell
from gateway_extproc.ui.signin_handlers import SignInHandlers
from gateway_extproc.ui.view_handlers import ViewHandlers

__all__ = ["Page", "PageContext"]


class Page:
    def __init__(
        self,
        context: Callable[[], PageContext],
        environ: Mapping[str, str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._shell = Shell(context, clock)
        self._views = ViewHandlers(self._shell)
        self._signin = SignInHandlers(self._shell, environ)

    def app(self) -> web.Application:
        shell, views, signin = self._shell, self._views, self._signin
        app = web.Application(middlewares=[shell.guard])
        app.router.add_get("/ui", shell.to_slash)
        app.router.add_get("/ui/", views.spend)
        app.router.add_get("/ui/spend.csv", views.spend_csv)
        app.router.add_get("/ui/budgets", views.budgets)
        app.router.add_get("/ui/budgets.csv", views.budgets_csv)
        app.router.add_get(recon_view.PATH, views.reconciliation)
        app.router.add_get(recon_view.PATH + ".csv", views.reconciliation_csv)
        app.router.add_get("/ui/login", signin.login)
        app.router.add_get("/ui/callback", signin.callback)
        app.router.add_post("/ui/logout", signin.logout)
        app.router.add_get("/ui/static/{name:.+}", shell.static_file)
        return app
