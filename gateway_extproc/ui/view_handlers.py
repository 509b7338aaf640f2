"""The spend page's views and their CSV exports: `/ui/` (spend), `/ui/budgets` and
`/ui/reconciliation` (admins only). Each reads what the admin API answers with (pages.py,
admin/recon_api.py) for the viewer the shell found, and renders it through the shell."""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web

from gateway_extproc.admin import recon_api
from gateway_extproc.budgets.overrides import Overrides
from gateway_extproc.ui import demo, pages, recon_view, views
from gateway_extproc.ui.shell import Shell, csv_response


class ViewHandlers:
    def __init__(self, shell: Shell) -> None:
        self._shell = shell
        self._overrides: dict[int, Overrides] = {}

    async def spend(self, request: web.Request) -> web.StreamResponse:
        shell = self._shell
        viewer, session = await shell.viewer(request)
        query = views.parse_query(request.query.items())
        store = shell.store()
        attributes = views.attribute_names(shell.context().authenticator.config)
        values = await pages.spend_context(store, query, viewer, shell.clock(), attributes)
        return shell.html(
            "spend.html",
            title="Spend",
            viewer=viewer,
            session=session,
            demo=await demo.present(store),
            active="spend",
            **values,
        )

    async def spend_csv(self, request: web.Request) -> web.StreamResponse:
        shell = self._shell
        viewer, _ = await shell.viewer(request)
        query = views.parse_query(request.query.items())
        _, response = await pages.spend(shell.store(), query, viewer, shell.clock())
        return csv_response(views.spend_csv(response), "spend.csv")

    async def _budget_records(self, request: web.Request) -> tuple[Any, Any, list[Any]]:
        shell = self._shell
        viewer, session = await shell.viewer(request)
        store = shell.store()
        overrides = self._overrides.get(id(store))
        if overrides is None or overrides.store is not store:
            overrides = self._overrides[id(store)] = Overrides(store)
        budgets = shell.context().config.budgets
        records = await pages.budget_records(overrides, budgets, viewer, shell.clock())
        return viewer, session, records

    async def budgets(self, request: web.Request) -> web.StreamResponse:
        viewer, session, records = await self._budget_records(request)
        return self._shell.html(
            "budgets.html",
            title="Budgets",
            viewer=viewer,
            session=session,
            demo=await demo.present(self._shell.store()),
            active="budgets",
            budgets=records,
        )

    async def budgets_csv(self, request: web.Request) -> web.StreamResponse:
        _, _, records = await self._budget_records(request)
        return csv_response(views.budgets_csv(records, pages.BUDGET_CSV_COLUMNS), "budgets.csv")

    async def _reconciled(self, request: web.Request) -> tuple[Any, Any, Any, list[Any], list[Any]]:
        """(viewer, session, query, results, missing) for an admin; 403 for anyone else."""
        shell = self._shell
        viewer, session = await shell.viewer(request)
        if not viewer.admin:
            response = shell.message(
                request,
                403,
                "Admins only",
                "reconciliation with the providers' bills is shown to admins only "
                "(admin_api.read_groups)",
                viewer=viewer,
                session=session,
            )
            raise web.HTTPForbidden(text=response.text, content_type=response.content_type)
        now = shell.clock()
        today = dt.datetime.fromtimestamp(now, dt.UTC).date()
        query = recon_view.parse_query(request.query.items(), today)
        settings = shell.context().config.reconcile
        # GetReconciliation's own read (admin/recon_api.reconciled): the page's numbers are
        # the admin API's numbers.
        results, missing = await recon_api.reconciled(query.request(), settings, shell.store(), now)
        return viewer, session, query, results, missing

    async def reconciliation(self, request: web.Request) -> web.StreamResponse:
        viewer, session, query, results, missing = await self._reconciled(request)
        settings = self._shell.context().config.reconcile
        return self._shell.html(
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

    async def reconciliation_csv(self, request: web.Request) -> web.StreamResponse:
        _, _, _, results, _ = await self._reconciled(request)
        return csv_response(recon_view.recon_csv(results), "reconciliation.csv")
