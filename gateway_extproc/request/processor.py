"""One processor per synchronous ext_proc stream: its phase dispatch and its lifecycle.

`handle` is a coroutine. The request phases await I/O: a JWKS refresh when a token names an
unknown key, the budget reservation in Redis (under its deadline), and large bodies are parsed
in a worker thread. Once the request is forwarded, its response belongs to a `ResponseObserver`
(observer.py) built from a `RequestState` (handoff.py). This processor keeps it and answers the
response phases itself for a non-streamed answer in either mode (Envoy buffers the body; the
JSON `x-gateway-cost-usd` header needs the whole body before the headers go out), and for an
event stream in `synchronous` mode. An event stream or embeddings answer in the default
`metering.mode: observe` is handed over: the state travels in Envoy dynamic metadata to an
observability-mode ext_proc stream that Envoy never waits for. Requests the gateway answers
itself (errors, /v1/models) are audited here.
"""

from __future__ import annotations

import logging

from gateway_extproc.apis import (
    MODELS_PATH,
    Schema,
    api_for_path,
    looks_azure,
    looks_gemini,
)
from gateway_extproc.cache.key import CONTROL_HEADER, TTL_HEADER
from gateway_extproc.catalog.models import ModelEntry
from gateway_extproc.errors import BadRequest, ClientError, InternalError, NotFound
from gateway_extproc.extproc import messages as msgs
from gateway_extproc.identity.metadata import parse_metadata
from gateway_extproc.providers.azure.paths import parse_inbound
from gateway_extproc.providers.gemini.paths import parse_path, without_credentials
from gateway_extproc.providers.registry import error_body
from gateway_extproc.request.admission import admit
from gateway_extproc.request.forward import forward
from gateway_extproc.request.models_api import models_response
from gateway_extproc.request.stream import RequestStream
from gateway_extproc.response import synchronous

log = logging.getLogger("gateway.processor")

# The error code of a request whose stream ended before it was forwarded (nothing was sent).
CLIENT_LEFT = "client_disconnected_before_forward"
# Client headers that carry credentials: never forwarded to a provider.
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key", "x-goog-api-key")


class StreamProcessor(RequestStream):
    """The request's state is `RequestStream`'s (stream.py); this class adds the dispatch."""

    # -- dispatch ---------------------------------------------------------------------------

    async def handle(self, message: msgs.ProcessingRequest) -> msgs.ProcessingResponse:
        """One ext_proc message in, its reply out. The request phases may await (a JWKS
        refresh, the budget reservation); the response phases never do."""
        phase = message.WhichOneof("request")
        if phase in ("response_headers", "response_body"):
            if self.observer is None:  # the observer stream meters it (or nothing was forwarded)
                if phase == "response_headers":
                    return msgs.response_headers_without_body()
                return msgs.passthrough(message)
            return await synchronous.reply(self.observer, message, self.response_headers)
        try:
            if phase == "request_headers":
                headers = msgs.headers_of(message.request_headers)
                self._note_request(headers)
                await self._identify(headers)
                return self._on_request_headers(headers, message.request_headers.end_of_stream)
            if phase == "request_body":  # admitted (admission.py), then forwarded (forward.py)
                cached = await admit(self, message.request_body)
                return cached if cached is not None else await forward(self)
            return msgs.passthrough(message)  # trailers: not requested, answered if sent
        except ClientError as err:
            return self._reject(err)
        except Exception:
            log.exception("request processing failed", extra={"request_id": self.request_id})
            return self._reject(
                InternalError(f"internal gateway error (request id {self.request_id})")
            )

    def close(self) -> None:
        """The ext_proc stream ended. A forwarded request whose response this stream meters
        and which did not finish (client disconnect, upstream abort, Envoy reset) is metered
        from what was seen now: spend is never lost. A handed-over one is the observer
        stream's (or, if it never opens, the reaper's: response/reaped_audit.py). A stream that
        ended before its request was forwarded (the client left while a request phase
        awaited, e.g. its budget check) sent nothing to a provider: whatever it may have
        reserved is released, and its record says so."""
        if self.observer is not None:
            self.observer.close()
        elif not self.handed_off and not self.concluded:
            self.status = self.status or 499  # the client closed the request: no response
            self.error_code = self.error_code or CLIENT_LEFT
            self.conclude()

    # -- request side -----------------------------------------------------------------------

    def _note_request(self, headers: dict[str, str]) -> None:
        """Request id, method, path and the client's API family (for error formats)."""
        self.request_id = headers.get("x-request-id", "-")
        self.client_headers = tuple(headers)  # names; which reach the provider: forwarding.py
        self.anthropic_beta = headers.get("anthropic-beta", "")
        self.cache_headers = (headers.get(CONTROL_HEADER), headers.get(TTL_HEADER))
        self.method = headers.get(":method", "")
        path = headers.get(":path", "")
        gemini = looks_gemini(path)
        self.path = without_credentials(path) if gemini else path
        inbound = parse_inbound(path) if looks_azure(path) else None
        if inbound is not None:  # an AzureOpenAI client: served as the gateway's own path is
            self.path, self.azure_deployment = inbound.gateway_path, inbound.deployment
        self.path_changed = self.path != path
        if self.trace_context[0] is None:
            self.trace_context = (headers.get("traceparent"), headers.get("tracestate"))
        api = api_for_path(self.path)
        if api is not None:
            self.schema = api.schema
        elif gemini:
            self.schema = Schema.GEMINI
        elif "anthropic-version" in headers:
            self.schema = Schema.ANTHROPIC

    async def _identify(self, headers: dict[str, str]) -> None:
        """Who is calling: a verified token (cached after the first verify), a static service
        token, or anonymous when allowed. Raises Unauthenticated / BadRequest."""
        auth = self.ctx.authenticator
        identity = auth.cached(headers, self.ctx.wall_clock())
        self.identity = identity if identity is not None else await auth.authenticate(headers)
        header = self.ctx.config.identity.metadata_header
        self.metadata = parse_metadata(headers.get(header), header=header)

    def _on_request_headers(
        self, headers: dict[str, str], end_of_stream: bool
    ) -> msgs.ProcessingResponse:
        bare_path = self.path.split("?", 1)[0].rstrip("/")
        api = api_for_path(self.path)
        if self.identity is None:  # handle() identifies first; this is a programming error
            raise RuntimeError("request headers processed before identification")

        if api is not None and api.schema is Schema.GEMINI:
            parse_path(self.path)  # a bad model name or query: 400 before the body is read
        elif bare_path == MODELS_PATH or bare_path.startswith(MODELS_PATH + "/"):
            return self._models(bare_path)
        if api is None:
            raise NotFound(f"the gateway does not serve {self.method} {bare_path or '/'}")
        if self.method != "POST":
            raise NotFound(f"{bare_path} accepts POST only")
        if end_of_stream:
            raise BadRequest("request body is empty: expected a JSON object")
        remove = [h for h in headers if h.startswith("x-gateway-") or h in CREDENTIAL_HEADERS]
        # Providers must send identity-encoded bodies, or metering sees only gzip bytes.
        remove.append("accept-encoding")
        # A credential in the query (Gemini `?key=`) leaves the path before Envoy logs or
        # forwards it (the body phase sets the provider's path anyway).
        path = {":path": self.path} if self.path_changed else None
        common = msgs.common(set_headers=path, remove=remove)
        return msgs.request_headers_reply(common, forwarded=True)

    def _models(self, bare_path: str) -> msgs.ProcessingResponse:
        if self.method != "GET":
            raise NotFound(f"{bare_path} accepts GET only")
        identity, ctx = self.identity, self.ctx
        assert identity is not None

        def visible(entry: ModelEntry) -> bool:
            return entry.provider in ctx.upstreams and ctx.config.policies.allows(
                identity, entry.name
            )

        body = models_response(self.schema, bare_path, ctx.catalog, visible)
        self.status = 200
        self.conclude()
        return msgs.immediate(200, body, self._json_headers(), "gateway_models")

    # -- endings ----------------------------------------------------------------------------

    def _json_headers(self) -> dict[str, str]:
        return {"content-type": "application/json", "x-gateway-request-id": self.request_id}

    def _reject(self, err: ClientError) -> msgs.ProcessingResponse:
        self.status = err.status
        self.error_code = err.code
        self.conclude()
        headers = self._json_headers() | err.headers
        body = error_body(self.schema, err, self.request_id)
        return msgs.immediate(err.status, body, headers, f"gateway_{err.code}")
