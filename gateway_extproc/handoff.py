"""A forwarded request's state, handed from the request phase to whoever meters its response.

In the default `metering.mode: observe`, the request phase (a synchronous ext_proc stream) and
the response phase (a second ext_proc filter in observability mode: Envoy never waits for it)
are two gRPC streams that may land on different sidecar workers. The request phase puts this
state into Envoy dynamic metadata (namespace `NAMESPACE`, key `STATE_KEY`, one compact JSON
string); Envoy forwards it on every message of the observer's stream, so any worker can meter,
price, settle and audit the request. In `synchronous` mode the same state object is handed over
in-process. Pure: values in, values out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import orjson

from gateway_extproc.apis import Api
from gateway_extproc.catalog.pricing import LongContext, Price
from gateway_extproc.cost.endings import ChargeLimits
from gateway_extproc.identity.model import AuthMethod, Identity, Kind

# Envoy dynamic-metadata namespace the request filter writes and the observer filter forwards.
NAMESPACE = "llm_gateway"
STATE_KEY = "state"
# Beside it, the HMAC of STATE_KEY's exact text under the sidecar workers' state key
# (sidecar_auth/seal.py): an observer trusts no state without it.
MAC_KEY = "state_mac"
# Beside STATE_KEY, the namespace holds response headers under their own names; Envoy copies
# them into the client's response (route `response_headers_to_add`, envoy/routes.py).
VERSION = 1
# Fallback chains (docs/fallback.md): the endpoint metadata that names the target an attempt got
# (names only, never secrets), the namespace the per-attempt filter writes `attempt_<n>` records
# into (Envoy passes them to the downstream filters with the final response), and the gRPC
# metadata Envoy's generated config sets on the per-attempt filter's streams, which tells the
# sidecar the two kinds of stream apart (a client cannot set gRPC metadata: only Envoy, which
# proves itself with the caller token, opens streams).
TARGET_NAMESPACE = "gw.target"
TARGET_KEY = "target"
POOL_KEY = "key"  # a key pool's endpoint: the name of its key (never the secret)
ATTEMPTS_NAMESPACE = "llm_gateway.attempts"
# Envoy's count of the request's attempts (1, 2, ...), on each upstream request when chains are
# configured: attempt records are numbered by it (two keys of one target are two attempts).
ATTEMPT_COUNT_HEADER = "x-envoy-attempt-count"
STREAM_KIND_KEY = "x-gateway-stream"
UPSTREAM_STREAM = "upstream"


class HandoffError(ValueError):
    """The metadata does not hold a state this sidecar can read."""


@dataclasses.dataclass(frozen=True, slots=True)
class BudgetHandoff:
    """What settling a request's reservation needs (budgets/gate.py `settle_outcome`)."""

    decision: str  # budgets.gate.Decision value
    reservation_id: str
    reserved: bool
    charges: tuple[tuple[str, str, int, int], ...]  # budget, scope value, estimate, limit (micros)
    arrived: float
    audit: Mapping[str, Any] | None  # budgets/report.py audit_fields, overrun filled at the end
    span_budgets: tuple[tuple[str, str, int, int, int], ...] = ()  # observability facts

    @property
    def estimate_micros(self) -> int:
        return max((c[2] for c in self.charges), default=0)


@dataclasses.dataclass(frozen=True, slots=True)
class ChainTarget:
    """One target of a chained request, as the request phase admitted and priced it: what the
    per-attempt filter rewrites the request for, and what the response is metered at when this
    target answers (docs/fallback.md)."""

    target: str  # `openai/gpt-4o`, as the endpoint metadata names it
    provider: str
    model: str  # the catalog entry sent upstream
    api: Api  # the API the provider is called with (a streamed request's)
    price: Price
    max_tokens: int | None  # the output limit sent upstream
    cap: tuple[str, int] | None  # the output cap written into a same-API body
    charge_limits: ChargeLimits | None = None

    def to_doc(self) -> list[Any]:
        return [
            self.target,
            self.provider,
            self.model,
            self.api.name,
            _price_doc(self.price),
            self.max_tokens,
            None if self.cap is None else list(self.cap),
            None if self.charge_limits is None else self.charge_limits.to_doc(),
        ]

    @classmethod
    def of_doc(cls, doc: list[Any]) -> ChainTarget:
        cap, limits = doc[6], doc[7]
        return cls(
            target=str(doc[0]),
            provider=str(doc[1]),
            model=str(doc[2]),
            api=Api[doc[3]],
            price=_price_of(doc[4]),
            max_tokens=None if doc[5] is None else int(doc[5]),
            cap=None if cap is None else (str(cap[0]), int(cap[1])),
            charge_limits=None if limits is None else ChargeLimits.of_doc(limits),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class RequestState:
    request_id: str
    arrived: float  # unix time the request phase started
    method: str
    path: str
    api: Api
    requested_model: str
    served_model: str  # the catalog entry sent upstream (after a downgrade)
    price: Price  # its price for this request (service tier, long-context beta applied)
    provider: str
    stream: bool
    input_tokens_estimate: int
    max_tokens: int | None  # the output limit sent upstream (the client's or the injected cap)
    cap_injected: bool
    identity: Identity
    metadata: Mapping[str, str]  # unverified client metadata (audited as such)
    budget: BudgetHandoff | None
    traceparent: str | None = None
    tracestate: str | None = None
    # Audit record fields the request phase decided (guardrails, rate limits, cache): name ->
    # a JSON value, passed to AuditRecord as they are.
    audit_extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    cache: str | None = None  # the response cache's ticket (cache.key.CacheTicket metadata)
    started_monotonic: float | None = None  # same process only (synchronous mode)
    # What bounds the request's bill: an ending without the provider's usage is charged within
    # it (endings.py). None: not boundable (or a state from an older worker): estimated.
    charge_limits: ChargeLimits | None = None
    # A translated request (translate/): the API the client called; `api` is the provider's,
    # whose bytes are metered. None: the client called the provider's API itself.
    client_api: Api | None = None
    wants_usage: bool = False  # the client asked for a stream's usage (`include_usage`)
    # A chained request (fallback): the targets Envoy may try, in order, the first the one
    # above. Empty: not chained.
    chain: tuple[ChainTarget, ...] = ()

    def answered_by(self, target: ChainTarget) -> RequestState:
        """This state as if `target` had been sent the request: its model, price, provider, API
        (translated from the client's when it differs) and limits."""
        client = self.client_api or self.api
        return dataclasses.replace(
            self,
            served_model=target.model,
            price=target.price,
            provider=target.provider,
            api=target.api,
            client_api=None if target.api.schema is client.schema else client,
            max_tokens=target.max_tokens,
            cap_injected=target.cap is not None,
            charge_limits=target.charge_limits,
        )

    # -- encoding ----------------------------------------------------------------------------

    def encode(self) -> str:
        """Compact JSON for the dynamic metadata (monotonic time is process-local: dropped)."""
        doc: dict[str, Any] = {
            "v": VERSION,
            "rid": self.request_id,
            "t": self.arrived,
            "m": self.method,
            "p": self.path,
            "api": self.api.name,
            "req": self.requested_model,
            "srv": self.served_model,
            "price": _price_doc(self.price),
            "prov": self.provider,
            "s": self.stream,
            "in": self.input_tokens_estimate,
            "max": self.max_tokens,
            "cap": self.cap_injected,
            "id": _identity_doc(self.identity),
            "md": dict(self.metadata),
            "b": None if self.budget is None else _budget_doc(self.budget),
            "tp": self.traceparent,
            "ts": self.tracestate,
            "ax": dict(self.audit_extra),
            "ck": self.cache,
            "cl": None if self.charge_limits is None else self.charge_limits.to_doc(),
            "capi": None if self.client_api is None else self.client_api.name,
            "wu": self.wants_usage,
        }
        if self.chain:
            doc["ch"] = [t.to_doc() for t in self.chain]
        return orjson.dumps(doc).decode()

    @classmethod
    def decode(cls, text: str) -> RequestState:
        try:
            doc = orjson.loads(text)
            if doc.get("v") != VERSION:
                raise HandoffError(f"state version {doc.get('v')!r} is not {VERSION}")
            return cls(
                request_id=str(doc["rid"]),
                arrived=float(doc["t"]),
                method=str(doc["m"]),
                path=str(doc["p"]),
                api=Api[doc["api"]],
                requested_model=str(doc["req"]),
                served_model=str(doc["srv"]),
                price=_price_of(doc["price"]),
                provider=str(doc["prov"]),
                stream=bool(doc["s"]),
                input_tokens_estimate=int(doc["in"]),
                max_tokens=None if doc["max"] is None else int(doc["max"]),
                cap_injected=bool(doc["cap"]),
                identity=_identity_of(doc["id"]),
                metadata={str(k): str(v) for k, v in doc["md"].items()},
                budget=None if doc["b"] is None else _budget_of(doc["b"]),
                traceparent=doc["tp"],
                tracestate=doc["ts"],
                audit_extra=dict(doc["ax"]),
                cache=None if doc["ck"] is None else str(doc["ck"]),
                charge_limits=None if doc.get("cl") is None else ChargeLimits.of_doc(doc["cl"]),
                client_api=None if doc.get("capi") is None else Api[doc["capi"]],
                wants_usage=bool(doc.get("wu", False)),
                chain=tuple(ChainTarget.of_doc(t) for t in doc.get("ch", ())),
            )
        except HandoffError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, orjson.JSONDecodeError) as exc:
            raise HandoffError(f"unreadable request state: {type(exc).__name__}: {exc}") from None


def _price_doc(price: Price) -> list[Any]:
    tier = price.long_context
    return [
        price.input,
        price.output,
        price.cached_input,
        price.cache_write,
        price.reasoning,
        price.cache_write_1h,
        None if tier is None else [tier.above_input_tokens, _price_doc(tier.price)],
    ]


def _price_of(doc: list[Any]) -> Price:
    tier = doc[6]
    return Price(
        input=int(doc[0]),
        output=int(doc[1]),
        cached_input=int(doc[2]),
        cache_write=int(doc[3]),
        reasoning=int(doc[4]),
        cache_write_1h=None if doc[5] is None else int(doc[5]),
        long_context=None if tier is None else LongContext(int(tier[0]), _price_of(tier[1])),
    )


def identity_doc(identity: Identity) -> dict[str, Any]:
    """An identity as compact JSON values (the hand-off; a reservation's facts for the reaper)."""
    return _identity_doc(identity)


def identity_of(doc: Mapping[str, Any]) -> Identity:
    return _identity_of(doc)


def _identity_doc(identity: Identity) -> dict[str, Any]:
    return {
        "k": identity.kind.value,
        "a": identity.auth_method.value,
        "u": identity.user,
        "s": identity.service,
        "g": sorted(identity.groups),
        "i": identity.issuer,
        "at": dict(identity.attributes),
        "e": identity.expires_at,
        "c": identity.client_id,
        "st": identity.static_token,
    }


def _identity_of(doc: Mapping[str, Any]) -> Identity:
    return Identity(
        kind=Kind(doc["k"]),
        auth_method=AuthMethod(doc["a"]),
        user=doc["u"],
        service=doc["s"],
        groups=frozenset(str(g) for g in doc["g"]),
        issuer=doc["i"],
        attributes={str(k): str(v) for k, v in doc["at"].items()},
        expires_at=doc["e"],
        client_id=doc["c"],
        static_token=doc["st"],
    )


def _budget_doc(b: BudgetHandoff) -> dict[str, Any]:
    return {
        "d": b.decision,
        "r": b.reservation_id,
        "res": b.reserved,
        "c": [list(c) for c in b.charges],
        "t": b.arrived,
        "a": None if b.audit is None else dict(b.audit),
        "sb": [list(s) for s in b.span_budgets],
    }


def _budget_of(doc: Mapping[str, Any]) -> BudgetHandoff:
    return BudgetHandoff(
        decision=str(doc["d"]),
        reservation_id=str(doc["r"]),
        reserved=bool(doc["res"]),
        charges=tuple((str(c[0]), str(c[1]), int(c[2]), int(c[3])) for c in doc["c"]),
        arrived=float(doc["t"]),
        audit=doc["a"],
        span_budgets=tuple(
            (str(s[0]), str(s[1]), int(s[2]), int(s[3]), int(s[4])) for s in doc["sb"]
        ),
    )
