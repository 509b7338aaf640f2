"""One attempt of a chained request (docs/fallback.md): the per-attempt ext_proc stream Envoy opens
from a chain cluster's upstream filters, once the router picked the target for this attempt.

From the target its endpoint names (a request attribute) and the request filter's signed state
(dynamic metadata), it rewrites the request Envoy replays from its retry buffer for that target:
path, host, credential (every client credential removed again), the body's model and output cap,
or the whole body translated for another API, SigV4 last for Bedrock - with the same functions the
request phase forwards with (route.py). When the attempt's response headers come it records
`attempt_<n>: {target, key, status, latency_ms}` in the attempts namespace, n = Envoy's attempt
count (`x-envoy-attempt-count`, removed by the next upstream filter; `key` only for a key pool's
endpoint): the request filter and the observer receive every attempt's record with the final
response (Envoy merges them by key, so two attempts at one target - two keys of its pool - keep a
record each; response/attempts.py reads them in attempt order).

A stream without a verifiable state, or for a target the state did not admit, is answered with
an error (Envoy's local reply from this filter is final: never retried).
"""

from __future__ import annotations

import logging

import orjson
from google.protobuf import struct_pb2

from gateway_extproc import handoff
from gateway_extproc.budgets.keycool import KeyCooldowns, one_key, pick_key, retry_after_s
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


def target_attribute(
    message: msgs.ProcessingRequest, field: str = handoff.TARGET_KEY
) -> str | None:
    """The endpoint metadata `field` of this attempt's endpoint: its target, or (`POOL_KEY`)
    the name of its pool key."""
    attrs = message.attributes.get(_ATTRIBUTES)
    if attrs is None:
        return None
    for key, value in attrs.fields.items():
        if key.endswith(f"['{field}']") and value.string_value:
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
        self.key: str | None = None  # the pool key this attempt got (its name)
        self.attempt = 0  # Envoy's count of this attempt (0: not sent)
        self.headers: dict[str, str] = {}

    async def handle(self, message: msgs.ProcessingRequest) -> msgs.ProcessingResponse:
        phase = message.WhichOneof("request")
        try:
            if phase == "request_headers":
                self.headers = msgs.headers_of(message.request_headers)
                count = self.headers.get(handoff.ATTEMPT_COUNT_HEADER, "")
                self.attempt = int(count) if count.isdigit() else 0
                self._find_target(message)
                return msgs.passthrough(message)
            if phase == "request_body":
                return msgs.request_body_reply(await self._rewrite(message.request_body.body))
            if phase == "response_headers":
                reply = msgs.passthrough(message)
                reply.dynamic_metadata.CopyFrom(self._record(message))
                await self._cool(message)
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
        self.key = target_attribute(message, handoff.POOL_KEY)
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
        if self.key is not None:
            self.key = await self._key_to_use(target.provider, target.model, self.key)
            _use_key(common, upstream.key_credential(self.key), self.key)
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
        """The attempt's record, into the attempts namespace (one key per Envoy attempt; an
        Envoy that did not send the count: one per chain position, as before it was sent)."""
        headers = msgs.headers_of(message.response_headers)
        ms = int((self.ctx.monotonic() - self.started) * 1000)
        record: dict[str, object] = {
            "target": self.target.target if self.target is not None else None,
            "status": int(headers.get(":status", "0") or 0),
            "latency_ms": ms,
        }
        if self.key is not None:
            record["key"] = self.key
        key = f"attempt_{self.attempt or self.index + 1}"
        return msgs.string_struct(handoff.ATTEMPTS_NAMESPACE, {key: orjson.dumps(record).decode()})

    def _cooldowns(self) -> KeyCooldowns | None:
        store = self.ctx.budgets.store
        return None if store is None else KeyCooldowns(store.client, store.key_base)

    async def _key_to_use(self, provider: str, model: str, got: str) -> str:
        """The endpoint's key, or another of the pool when it is cooling (docs/fallback.md):
        the record names the key actually presented."""
        pool = [name for name, _, _ in self.ctx.upstreams[provider].keys]
        cooldowns = self._cooldowns()
        if len(pool) < 2 or cooldowns is None:
            return got
        return pick_key(got, pool, await cooldowns.cooling(provider, model, pool))

    async def _cool(self, message: msgs.ProcessingRequest) -> None:
        """A 429 with `retry-after` cools the key that got it, for every pod: a pool's key, or
        a one-key provider's only key (then later requests skip the target while it is the
        chain's head: request/chain.py)."""
        headers = msgs.headers_of(message.response_headers)
        seconds = retry_after_s(headers.get("retry-after"))
        cooldowns = self._cooldowns()
        if headers.get(":status") != "429" or seconds <= 0 or cooldowns is None:
            return
        if self.target is None:
            return
        name = self.key
        if name is None:
            name = one_key([n for n, _, _ in self.ctx.upstreams[self.target.provider].keys])
        if name is not None:
            await cooldowns.cool(self.target.provider, self.target.model, name, seconds)

    def _reject(self, err: ClientError) -> msgs.ProcessingResponse:
        state = self.state
        rid = state.request_id if state is not None else "-"
        schema = (state.client_api or state.api).schema if state is not None else None
        body = error_body(schema, err, rid) if schema is not None else err.message.encode()
        headers = {"content-type": "application/json", "x-gateway-request-id": rid}
        return msgs.immediate(err.status, body, headers | err.headers, f"gateway_{err.code}")


def _use_key(common: msgs.CommonResponse, credential: tuple[str, str] | None, name: str) -> None:
    """The pool key's secret in place of the provider's first key (route.forward set that)."""
    if credential is None:  # the endpoint names a key this configuration does not have
        raise ProviderUnavailable(f"pool key {name!r} is not configured")
    header, value = credential
    for option in common.header_mutation.set_headers:
        if option.header.key == header:
            option.header.raw_value = value.encode()
            return
    option = common.header_mutation.set_headers.add()
    option.header.key, option.header.raw_value = header, value.encode()
