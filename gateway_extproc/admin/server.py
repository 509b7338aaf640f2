"""The admin API's gRPC server: authentication, per-method authorisation, error statuses.

Served by sidecar worker 0 only, on `admin_api.host:port` - one address for the CLI, a
Kubernetes Service and (later) a JSON transcoder to point at; it is low-volume, and every worker
reads and writes the same Redis state, so serving it from one worker loses nothing. Each call
is authenticated with credentials of the admin API's own (admin/auth.py: an admin audience from
an admitted issuer, or an admin static token; from the running configuration, so a reload
applies) and authorised per method: the caller's groups must meet `admin_api.read_groups` or
`write_groups` (write implies read).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway_extproc.admin import budget_api, recon_api, spend_api
from gateway_extproc.admin._generated.gateway.admin.v1 import admin_pb2 as pb
from gateway_extproc.admin.api import METHODS, READ, SERVICES, Handler, generic_handlers
from gateway_extproc.admin.auth import hint
from gateway_extproc.admin.budget_api import AdminAuditRecord, AdminError
from gateway_extproc.admin.recon_runner import ReconcileConfig, ReconcileError, Reconciler
from gateway_extproc.admin.tls import server_credentials
from gateway_extproc.budgets.overrides import Overrides
from gateway_extproc.budgets.results import BudgetStoreError
from gateway_extproc.budgets.store import BudgetStore
from gateway_extproc.catalog.pricing import format_usd
from gateway_extproc.errors import Unauthenticated
from gateway_extproc.identity.model import Identity
from gateway_extproc.spend.query import QueryError, RetentionError

if TYPE_CHECKING:
    from gateway_extproc.admin.settings import AdminApiConfig
    from gateway_extproc.audit import AuditSink
    from gateway_extproc.budgets.gate import BudgetGate
    from gateway_extproc.budgets.model import BudgetConfig
    from gateway_extproc.catalog.models import Catalog
    from gateway_extproc.identity.authenticator import Authenticator
    from gateway_extproc.observability.telemetry import Telemetry

log = logging.getLogger("gateway.admin")


class AdminConfig(ReconcileConfig, Protocol):
    @property
    def admin_api(self) -> AdminApiConfig: ...
    @property
    def budgets(self) -> Sequence[BudgetConfig]: ...


class AdminContext(Protocol):
    """What the admin API reads of the running configuration's context
    (`extproc.context.GatewayContext`, built from a configuration that holds the admin API's
    settings: a view of it, so the admin package does not import the context back)."""

    @property
    def config(self) -> AdminConfig: ...
    @property
    def budgets(self) -> BudgetGate: ...
    @property
    def admin_authenticator(self) -> Authenticator | None: ...
    @property
    def audit(self) -> AuditSink: ...
    @property
    def catalog(self) -> Catalog: ...
    @property
    def telemetry(self) -> Telemetry: ...


@dataclasses.dataclass(frozen=True)
class Call:
    caller: Identity
    ctx: AdminContext
    store: BudgetStore
    now: float


class AdminServicer:
    def __init__(
        self,
        context: Callable[[], AdminContext],
        clock: Callable[[], float] = time.time,
        reconciler: Reconciler | None = None,
    ) -> None:
        self._context = context  # the running configuration's context (swapped on reload)
        self._clock = clock
        self._reconciler = reconciler  # worker 0's (None: RunReconciliation is unavailable)
        self._overrides: dict[int, Overrides] = {}

    def handlers(self) -> dict[str, Handler]:
        def bind(name: str) -> Handler:
            async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
                return await self._call(name, request, context)

            return handle

        return {name: bind(name) for name in METHODS}

    async def _call(self, name: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        ctx = self._context()
        try:
            caller = await self._authorise(name, ctx, context)
            store = ctx.budgets.store
            if store is None:
                raise AdminError("FAILED_PRECONDITION", "this gateway has no budget store")
            method = getattr(self, f"_{name}")
            try:
                return await method(request, Call(caller, ctx, store, self._clock()))
            except BudgetStoreError as exc:
                # After a Redis restart each pooled connection fails its first use ("Connection
                # closed by server"). A read is idempotent: once more, on a fresh connection.
                # (A write is not retried: it may have reached Redis.)
                if METHODS[name].role != READ or not isinstance(
                    exc.__cause__, RedisConnectionError
                ):
                    raise
                log.warning("admin %s: %s; retrying the read once", name, exc)
                return await method(request, Call(caller, ctx, store, self._clock()))
        except AdminError as exc:
            code, message = grpc.StatusCode[exc.code], str(exc)
        except RetentionError as exc:
            code, message = grpc.StatusCode.OUT_OF_RANGE, str(exc)
        except ReconcileError as exc:  # a report unreadable: says which and why, never a key
            log.error("admin %s: %s", name, exc)
            code, message = grpc.StatusCode.UNAVAILABLE, str(exc)
        except QueryError as exc:
            code, message = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        except BudgetStoreError as exc:
            log.error("admin %s: %s", name, exc)
            code, message = grpc.StatusCode.UNAVAILABLE, "the budget store is unavailable"
        await context.abort(code, message)
        raise AssertionError("abort returned")  # pragma: no cover

    async def _authorise(
        self, name: str, ctx: AdminContext, context: grpc.aio.ServicerContext
    ) -> Identity:
        metadata = {k.lower(): v for k, v in (context.invocation_metadata() or ())}
        header = metadata.get("authorization")
        settings = ctx.config.admin_api
        authenticator = ctx.admin_authenticator
        if authenticator is None:  # a context built without the admin API (tests)
            raise AdminError("UNAVAILABLE", "the admin API is not enabled in this configuration")
        try:
            identity = await authenticator.authenticate(
                {"authorization": header} if isinstance(header, str) else {}
            )
        except Unauthenticated as exc:
            raise AdminError("UNAUTHENTICATED", f"{exc} ({hint(settings)})") from None
        allowed = settings.write_groups
        if METHODS[name].role == READ:
            allowed = allowed | settings.read_groups
        if not identity.groups & allowed:
            raise AdminError(
                "PERMISSION_DENIED",
                f"{identity.subject} may not call {name}: it needs one of the groups "
                f"{', '.join(sorted(allowed))}",
            )
        return identity

    def overrides(self, store: BudgetStore) -> Overrides:
        found = self._overrides.get(id(store))
        if found is None or found.store is not store:
            found = self._overrides[id(store)] = Overrides(store)
        return found

    # -- methods ------------------------------------------------------------------------------

    async def _GetSpend(self, request: pb.GetSpendRequest, call: Call) -> pb.GetSpendResponse:
        return await spend_api.get_spend(request, call.store, call.now)

    async def _ListBudgets(
        self, request: pb.ListBudgetsRequest, call: Call
    ) -> pb.ListBudgetsResponse:
        overrides = self.overrides(call.store)
        out = pb.ListBudgetsResponse()
        for budget in call.ctx.config.budgets:
            for value in await budget_api.scope_values(overrides, budget, call.now):
                out.budgets.append(await budget_api.status(overrides, budget, value, call.now))
        return out

    async def _GetBudgetStatus(
        self, request: pb.GetBudgetStatusRequest, call: Call
    ) -> pb.GetBudgetStatusResponse:
        budget = budget_api.find_budget(call.ctx.config.budgets, request.budget)
        overrides = self.overrides(call.store)
        values = [request.scope_value]
        if request.scope_value:
            budget_api.check_scope_value(budget, request.scope_value)
        else:
            values = await budget_api.scope_values(overrides, budget, call.now)
        statuses = [await budget_api.status(overrides, budget, v, call.now) for v in values]
        return pb.GetBudgetStatusResponse(statuses=statuses)

    async def _ListOverrides(
        self, request: pb.ListOverridesRequest, call: Call
    ) -> pb.ListOverridesResponse:
        found = await self.overrides(call.store).in_force(call.now)
        return pb.ListOverridesResponse(overrides=[budget_api.override_pb(o) for o in found])

    async def _SetOverride(self, request: pb.SetOverrideRequest, call: Call) -> pb.Override:
        budget = budget_api.validate_override(request, call.ctx.config.budgets, call.now)
        expires = budget_api.seconds_of(request.expires_at)
        overrides = self.overrides(call.store)
        previous = await overrides.set(
            budget,
            request.scope_value,
            request.limit_micros,
            expires,
            request.reason,
            call.caller.subject,
            call.now,
        )
        change = {
            "limit_usd": format_usd(request.limit_micros),
            "previous_override_usd": None if previous is None else format_usd(previous),
            "configured_limit_usd": format_usd(budget.limit_micros),
            "expires_at": budget_api.ts(expires).ToJsonString(),
        }
        self._audit(call, "SetOverride", request, change)
        found = await overrides.get(budget.name, request.scope_value, call.now)
        if found is None:  # expired between the two calls
            raise AdminError("ABORTED", "the override expired at once")
        return budget_api.override_pb(found, previous)

    async def _RemoveOverride(
        self, request: pb.RemoveOverrideRequest, call: Call
    ) -> pb.RemoveOverrideResponse:
        budget = budget_api.find_budget(call.ctx.config.budgets, request.budget)
        budget_api.check_scope_value(budget, request.scope_value)
        removed = await self.overrides(call.store).remove(budget.name, request.scope_value)
        if removed:
            self._audit(call, "RemoveOverride", request, {"removed": True})
        return pb.RemoveOverrideResponse(removed=removed)

    async def _TopUp(self, request: pb.TopUpRequest, call: Call) -> pb.TopUpResponse:
        budget = budget_api.validate_top_up(request, call.ctx.config.budgets)
        overrides = self.overrides(call.store)
        credit = await overrides.top_up(
            budget, request.scope_value, request.amount_micros, call.now
        )
        change = {
            "amount_usd": format_usd(request.amount_micros),
            "window_credit_usd": format_usd(credit),
        }
        self._audit(call, "TopUp", request, change)
        status = await budget_api.status(overrides, budget, request.scope_value, call.now)
        return pb.TopUpResponse(top_up_micros=credit, status=status)

    async def _GetReconciliation(
        self, request: pb.GetReconciliationRequest, call: Call
    ) -> pb.GetReconciliationResponse:
        return await recon_api.get_reconciliation(request, call.ctx, call.store, call.now)

    async def _RunReconciliation(
        self, request: pb.RunReconciliationRequest, call: Call
    ) -> pb.RunReconciliationResponse:
        if self._reconciler is None:
            raise AdminError("UNAVAILABLE", "this server does not run reconciliations")
        response = await recon_api.run_reconciliation(
            request, call.ctx, self._reconciler, call.store, call.now
        )
        change = {
            "days": [
                {
                    "provider": d.provider,
                    "day": d.day,
                    "capture_rate": d.total.capture_rate or None,
                    "gateway_usd": format_usd(d.total.gateway_cost_micros),
                    "provider_usd": format_usd(d.total.provider_cost_micros),
                    "unexplained_usd": format_usd(d.total.unexplained_micros),
                }
                for d in response.days
            ]
        }
        self._audit(call, "RunReconciliation", request, change)
        return response

    def _audit(self, call: Call, method: str, request: Any, change: dict[str, Any]) -> None:
        """The admin audit line: who, when, what, why (and a log line saying the same)."""
        budget = getattr(request, "budget", "")
        value = getattr(request, "scope_value", "")
        reason = request.reason
        record = AdminAuditRecord(method, call.caller, call.now, budget, value, change, reason)
        log.warning(
            "admin %s by %s: budget %s scope value %s: %s",
            method,
            call.caller.subject,
            budget,
            value,
            change,
            extra={"request_id": record.request_id},
        )
        try:
            call.ctx.audit.write(record)
        except OSError:
            log.exception("admin audit write failed", extra={"request_id": record.request_id})


async def start(
    context: Callable[[], AdminContext],
    address: str,
    clock: Callable[[], float] = time.time,
    reconciler: Reconciler | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Start the admin API on `address` (host:port; port 0: any free one), over TLS when
    `admin_api.tls` is set, and on `admin_api.socket` (plaintext, for Envoy in the same pod) when
    that is set. Returns the server (stop it with `server.stop(grace)`) and the bound port."""
    settings = context().config.admin_api
    server = grpc.aio.server()
    servicer = AdminServicer(context, clock, reconciler)
    server.add_generic_rpc_handlers(generic_handlers(servicer.handlers()))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    reflection.enable_server_reflection((*SERVICES, health_name, reflection.SERVICE_NAME), server)
    if settings.tls is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, server_credentials(settings.tls))
    if port == 0:
        raise RuntimeError(f"admin API: cannot listen on {address}")
    # gRPC replaces a socket file a killed worker left, and removes it at stop.
    socket = f"unix:{settings.socket}" if settings.socket is not None else None
    if socket is not None and server.add_insecure_port(socket) == 0:
        raise RuntimeError(f"admin API: cannot listen on unix:{settings.socket}")
    await server.start()
    for service in SERVICES:
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    mode = "plaintext" if settings.tls is None else "TLS"
    if settings.tls is not None and settings.tls.client_ca_file is not None:
        mode = "mutual TLS"
    where = address.rsplit(":", 1)[0] + f":{port}"
    log.info("admin API listening on %s (%s)", where, mode)
    return server, port
