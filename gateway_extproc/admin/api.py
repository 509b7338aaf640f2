"""The admin API's methods: who may call each, and the binding of the generated messages to
gRPC (the server's generic handler, and the client's callables) without a `*_pb2_grpc` module."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc

from gateway_extproc.admin._generated.gateway.admin.v1 import admin_pb2 as pb

SERVICE = "gateway.admin.v1.AdminService"
RECONCILIATION = "gateway.admin.v1.ReconciliationService"
SERVICES = (SERVICE, RECONCILIATION)
READ, WRITE = "read", "write"


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    request: Any  # the generated message classes
    response: Any
    role: str  # READ: any admin group; WRITE: a write group
    service: str = SERVICE

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"


METHODS: Mapping[str, Method] = {
    m.name: m
    for m in (
        Method("GetSpend", pb.GetSpendRequest, pb.GetSpendResponse, READ),
        Method("ListBudgets", pb.ListBudgetsRequest, pb.ListBudgetsResponse, READ),
        Method("GetBudgetStatus", pb.GetBudgetStatusRequest, pb.GetBudgetStatusResponse, READ),
        Method("ListOverrides", pb.ListOverridesRequest, pb.ListOverridesResponse, READ),
        Method("SetOverride", pb.SetOverrideRequest, pb.Override, WRITE),
        Method("RemoveOverride", pb.RemoveOverrideRequest, pb.RemoveOverrideResponse, WRITE),
        Method("TopUp", pb.TopUpRequest, pb.TopUpResponse, WRITE),
        Method(
            "GetReconciliation",
            pb.GetReconciliationRequest,
            pb.GetReconciliationResponse,
            READ,
            RECONCILIATION,
        ),
        Method(
            "RunReconciliation",
            pb.RunReconciliationRequest,
            pb.RunReconciliationResponse,
            WRITE,
            RECONCILIATION,
        ),
    )
}

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def generic_handlers(handlers: Mapping[str, Handler]) -> tuple[grpc.GenericRpcHandler, ...]:
    """One generic handler per service (AdminService, ReconciliationService)."""
    return tuple(
        grpc.method_handlers_generic_handler(
            service,
            {
                name: grpc.unary_unary_rpc_method_handler(
                    handlers[name],
                    request_deserializer=m.request.FromString,
                    response_serializer=m.response.SerializeToString,
                )
                for name, m in METHODS.items()
                if m.service == service
            },
        )
        for service in SERVICES
    )


class AdminClient:
    """A client of the admin API (`gatewayctl spend`, `gatewayctl budgets`, tests)."""

    def __init__(self, channel: grpc.aio.Channel, token: str | None) -> None:
        self._channel = channel
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    async def call(self, name: str, request: Any, timeout_s: float = 30.0) -> Any:
        m = METHODS[name]
        stub = self._channel.unary_unary(
            m.path,
            request_serializer=m.request.SerializeToString,
            response_deserializer=m.response.FromString,
        )
        return await stub(request, metadata=self._metadata, timeout=timeout_s)
