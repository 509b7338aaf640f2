"""Observe mode's response phase: one observability-mode ext_proc stream, on whichever sidecar
worker Envoy reached. It rebuilds the request from the state the request filter signed and handed
over in dynamic metadata and meters the response through a `ResponseObserver` (observer.py)."""

from __future__ import annotations

import logging

from gateway_extproc.extproc import messages as msgs
from gateway_extproc.extproc.context import GatewayContext
from gateway_extproc.handoff import MAC_KEY, NAMESPACE, STATE_KEY, HandoffError, RequestState
from gateway_extproc.response.observer import ResponseObserver
from gateway_extproc.sidecar_auth.guard import RejectedState

log = logging.getLogger("gateway.observer")


class StreamObserver:
    """One observability-mode ext_proc stream (observe mode): Envoy sends the request headers
    and the response without waiting for replies. The request filter's state arrives in dynamic
    metadata with the first message; a stream without it (a request the gateway answered
    itself, already audited) has nothing to meter and is closed at once - else Envoy would
    keep it open for its deferred close, holding a stream per refused request. A state whose
    MAC fails (not signed by a worker of this deployment) is never settled, cached or audited."""

    def __init__(self, ctx: GatewayContext) -> None:
        self.ctx = ctx
        self.response: ResponseObserver | None = None

    def handle(self, message: msgs.ProcessingRequest) -> bool:
        """Observe one message; True when there is nothing more to observe (the stream may
        close)."""
        response = self.response
        if response is None:
            text = msgs.observed_state(message, NAMESPACE, STATE_KEY)
            if text is None:
                return True
            if not self._signed(text, msgs.observed_state(message, NAMESPACE, MAC_KEY)):
                return True
            try:
                state = RequestState.decode(text)
            except HandoffError as exc:
                log.error("observer stream without a usable request state: %s", exc)
                return True
            self.response = response = ResponseObserver(self.ctx, state)
        phase = message.WhichOneof("request")
        try:
            if phase == "response_headers":
                response.on_attempts(message)
                headers = msgs.headers_of(message.response_headers)
                response.on_headers(headers, message.response_headers.end_of_stream)
            elif phase == "response_body":
                body = message.response_body
                response.on_body(body.body, body.end_of_stream)
        except Exception:
            response.broken()
        return response.concluded

    def _signed(self, text: str, mac: str | None) -> bool:
        """Verified once per stream, before the state is decoded: counted and logged (never
        its contents) when it fails."""
        if self.ctx.sidecar_auth.seal.verify(text, mac):
            return True
        reason = RejectedState.UNSIGNED if not mac else RejectedState.BAD_MAC
        self.ctx.sidecar_auth.stats.rejected_states[reason] += 1
        log.error(
            "observer stream refused: its request state is %s; nothing settled, cached or "
            "audited (a caller other than this deployment's Envoy, or state keys that differ "
            "between workers)",
            "unsigned" if reason == RejectedState.UNSIGNED else "not signed by a state key",
        )
        return False

    def close(self) -> None:
        if self.response is not None:
            self.response.close()
