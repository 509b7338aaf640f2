"""Start the spend page on sidecar worker 0: aiohttp on a loopback port (`spend_page.port`), or
on a unix socket beside the admin socket when the admin API uses TLS (Envoy, terminating the
JSON listener's TLS, reaches worker 0 in the same pod over sockets). Seeds the demo history
first when `spend_page.demo_data` is on."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping

from aiohttp import web

from gateway_extproc.budgets.results import BudgetStoreError
from gateway_extproc.ui import demo
from gateway_extproc.ui.app import Page, PageContext

log = logging.getLogger("gateway.ui")


async def start(
    context: Callable[[], PageContext],
    host: str,
    port: int,
    socket_path: str | None,
    environ: Mapping[str, str],
    clock: Callable[[], float] = time.time,
) -> tuple[web.AppRunner, int]:
    """Returns the runner (stop it with `runner.cleanup()`) and the bound TCP port (0 when
    serving on the unix socket)."""
    ctx = context()
    store = ctx.budgets.store
    if ctx.config.spend_page.demo_data and store is not None:
        try:
            await demo.seed(store, clock())
        except BudgetStoreError as exc:
            log.warning("spend page: demo data not seeded: %s", exc)
    runner = web.AppRunner(Page(context, environ, clock).app(), access_log=None)
    await runner.setup()
    if socket_path is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)  # a killed worker's
        await web.UnixSite(runner, socket_path).start()
        log.info("spend page listening on unix:%s", socket_path)
        return runner, 0
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = next(addr[1] for addr in runner.addresses if isinstance(addr, tuple) and len(addr) >= 2)
    log.info("spend page listening on %s:%d", host, bound)
    return runner, int(bound)
