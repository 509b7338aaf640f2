"""One attempt of a chained request (docs/fallback.md): the per-attempt ext_proc stream Envoy opens
from a chain cluster's upstream filters, once the router picked the target for this attempt.

From the target its endpoint names (a request attribute) and the request filter's signed state
(dynamic metadata), it rewrites the request Envoy replays from its retry buffer for that target:
path, host, credential (every client credential removed again), the body's model and output cap,
or the whole body translated for another API, SigV4 last for Bedrock - with the same functions the
request phase forwards with (route.py). When the attempt's response headers come it records
`attempt_<n>: {target, status, latency_ms}` in the attempts namespace: the request filter and the
observer receive every attempt's record with the final response (Envoy merges them by key).

A stream without a verifiable state, or for a target the state did not admit, is answered with
an error (Envoy's local reply from this filter is final: never retried).
"""

from __future__ import annotations

import logging

import orjson
from google.protobuf import struct_pb2

from gateway_extproc import handoff
from gateway_extproc.errors import ClientError, InternalError, ProviderUnavailable
from gateway_extproc.extproc import messages as msgs
from gateway_extproc.extproc.context import GatewayContext
from gateway_extproc.handoff import ChainTarget, HandoffError, RequestState
from gateway_extproc.providers.registry import error_body
from gateway_extproc.request import route
from gateway_extproc.request.bodyparse import parse_off_loop
from gateway_extproc.translate.pairs import translation_for

log = logging.getLogger("gateway.attempt")

# The attribute key Envoy sends the target under (envoy/filters.py TARGET_ATTRIBUTE).
_ATTRIBUTES = "envoy.filters.http.ext_proc"
# Client credentials: never forwarded (the request filter removed them; removed again here).
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key", "x-goog-api-key")


def target_attribute(message: msgs.ProcessingRequest) -> str | None:
    attrs = message.attributes.get(_ATTRIBUTES)
    if attrs is None:
        return None
    for key, value in attrs.fields.items():
        if key.endswith(f"['{handoff.TARGET_KEY}']") and value.string_value:
            return str(value.string_value)
    return None


class AttemptProcessor:
    """One per-attempt stream: request headers, request body, response headers."""

    def __init__(self, ctx: GatewayContext) -> None:
        self.ctx = ctx
        self.started = ctx.monotonic()
        self.state: RequestState | None = None
        self.index = -1  # the target's place in the chain
        self.target: ChainTarget | None = None
        self.headers: dict[str, str] = {}

    async def handle(self, message: msgs.ProcessingRequest) -> msgs.ProcessingResponse:
        phase = message.WhichOneof("request")
        try:
            if phase == "request_headers":
                self.headers = msgs.headers_of(message.request_headers)
                self._find_target(message)
                return msgs.passthrough(message)
            if phase == "request_body":
                return msgs.request_body_reply(await self._rewrite(message.request_body.body))
            if phase == "response_headers":
                reply = msgs.passthrough(message)
                reply.dynamic_metadata.CopyFrom(self._record(message))
                return reply
            return msgs.passthrough(message)
        except ClientError as err:
            return self._reject(err)
        except Exception:
            rid = self.state.request_id if self.state is not None else "-"
            log.exception("attempt rewrite failed", extra={"request_id": rid})
            return self._reject(InternalError(f"internal gateway error (request id {rid})"))

    def _find_target(self, message: msgs.ProcessingRequest) -> None:
        """The request's state (signed by a worker of this deployment) and this attempt's
        target in it."""
        text = msgs.observed_state(message, handoff.NAMESPACE, handoff.STATE_KEY)
        mac = msgs.observed_state(message, handoff.NAMESPACE, handoff.MAC_KEY)
        if text is None or not self.ctx.sidecar_auth.seal.verify(text, mac):
            raise ProviderUnavailable("a fallback attempt without the request's signed state")
        try:
            self.state = state = RequestState.decode(text)
        except HandoffError as exc:
            raise ProviderUnavailable(f"a fallback attempt's state is unreadable: {exc}") from None
        name = target_attribute(message)
        for i, target in enumerate(state.chain):
            if target.target == name:
                self.index, self.target = i, target
                return
        raise ProviderUnavailable(f"fallback target {name!r} is not admitted for this request")

    async def _rewrite(self, raw: bytes) -> msgs.CommonResponse:
        state, target = self.state, self.target
        assert state is not None and target is not None
        upstream = self.ctx.upstreams[target.provider]
        client_api = state.client_api or state.api
        request = await parse_off_loop(client_api, raw, self.ctx.config.limits, state.path)
        served = target.model
        if self.index == 0 and upstream.vertex is None and upstream.signer is None:
            served = request.model  # the head as the client named it (a dated snapshot)
        if upstream.token is not None:  # Entra ID
            await upstream.token.ensure()
        if upstream.signer is not None:
            await upstream.signer.fresh()
        names = tuple(h for h in self.headers if not h.startswith(":"))
        translation = translation_for(client_api, upstream.schema)
        if translation is None:
            common = route.forward(
                upstream,
                request,
                target.cap,
                served_model=served,
                path=state.path,
                client_headers=names,
                redacted=None,
                cluster=None,
            )
        else:
            common = route.forward_translated(
                upstream,
                translation,
                translation.request(request.body),
                served_model=served,
                stream=request.stream,
                max_tokens=target.max_tokens or 0,  # always set for a translated target
                client_headers=names,
                beta=self.headers.get("anthropic-beta", ""),
                cluster=None,
            )
        removed = [h for h in CREDENTIAL_HEADERS if h in self.headers]
        removed += [h for h in self.headers if h.startswith("x-gateway-")]
        set_names = {h.header.key for h in common.header_mutation.set_headers}
        common.header_mutation.remove_headers.extend(
            h
            for h in removed
            if h not in set_names and h not in common.header_mutation.remove_headers
        )
        return common

    def _record(self, message: msgs.ProcessingRequest) -> struct_pb2.Struct:
        """The attempt's record, into the attempts namespace (one key per chain position)."""
        headers = msgs.headers_of(message.response_headers)
        ms = int((self.ctx.monotonic() - self.started) * 1000)
        record = {
            "target": self.target.target if self.target is not None else None,
            "status": int(headers.get(":status", "0") or 0),
            "latency_ms": ms,
        }
        key = f"attempt_{self.index + 1}"
        return msgs.string_struct(handoff.ATTEMPTS_NAMESPACE, {key: orjson.dumps(record).decode()})

    def _reject(self, err: ClientError) -> msgs.ProcessingResponse:
        state = self.state
        rid = state.request_id if state is not None else "-"
        schema = (state.client_api or state.api).schema if state is not None else None
        body = error_body(schema, err, rid) if schema is not None else err.message.encode()
        headers = {"content-type": "application/json", "x-gateway-request-id": rid}
        return msgs.immediate(err.status, body, headers | err.headers, f"gateway_{err.code}")
