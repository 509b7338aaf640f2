"""Synchronous mode's response phase: the request's own processor hands each response message
to its `ResponseObserver` (observer.py) and answers it here - the request id and the headers the
request phase decided, the cost header on a JSON body, a translated answer rewritten into the
client's API. The response is already on its way: a metering fault never breaks it."""

from __future__ import annotations

from collections.abc import Callable

from gateway_extproc.catalog.pricing import format_usd
from gateway_extproc.extproc import messages as msgs
from gateway_extproc.extproc.offload import off_loop_if_large
from gateway_extproc.response.observer import ResponseObserver
from gateway_extproc.response.translated import REMOVED_HEADERS, is_stream


async def reply(
    observer: ResponseObserver,
    message: msgs.ProcessingRequest,
    response_headers: Callable[[int | None], dict[str, str]],
) -> msgs.ProcessingResponse:
    """Synchronous mode: observe a response message and answer it. `response_headers(cost)`
    gives the headers the request phase decided (with the cost once a JSON body is
    metered; a large one is parsed in the body-parsing thread, awaited here). The response
    is already on its way: a metering fault never breaks it."""
    phase = message.WhichOneof("request")
    try:
        if phase == "response_headers":
            observer.on_attempts(message)
            headers = msgs.headers_of(message.response_headers)
            streaming = observer.on_headers(headers, message.response_headers.end_of_stream)
            request_id = {"x-gateway-request-id": observer.state.request_id}
            translated = observer.translated
            remove: tuple[str, ...] = ()
            set_headers = request_id | response_headers(None)
            if translated is not None:  # the body is rewritten: not the provider's length
                set_headers |= translated.start(status=observer.status or 0, streaming=streaming)
                remove = REMOVED_HEADERS
            reply = msgs.common(set_headers=set_headers, remove=remove)
            return msgs.response_headers_reply(reply, stream_body=streaming)
        body = message.response_body
        pieces = observer.take(body.body, body.end_of_stream)
        end = body.end_of_stream
        rewritten = None
        if observer.translated is not None and observer.meter is not None:
            rewritten = observer.translated.chunk(pieces, end)
        if not end:
            return msgs.response_body_reply(_body(rewritten))
        observer.completed = True
        if observer.readable_json():
            json = observer.body.json
            observer.parsed = await off_loop_if_large(json.kept, json.meter, observer.state.api)
        cost = observer.conclude()
        if observer.meter is not None:
            return msgs.response_body_reply(_body(rewritten))
        headers = {"x-gateway-cost-usd": format_usd(cost)} | response_headers(cost)
        if observer.translated is not None:
            whole = observer.body.json.whole() if observer.body.unreadable is None else None
            rewritten = observer.translated.whole(
                None if whole is None else bytes(whole), observer.status or 0
            )
        return msgs.response_body_reply(msgs.common(set_headers=headers, body=rewritten))
    except Exception:
        observer.broken()
        if phase == "response_headers":  # keep streams streaming even so
            content_type = msgs.headers_of(message.response_headers).get("content-type", "")
            return msgs.response_headers_reply(msgs.common(), stream_body=is_stream(content_type))
        return msgs.passthrough(message)


def _body(rewritten: bytes | None) -> msgs.CommonResponse | None:
    """A streamed chunk's reply: unchanged (None), or replaced by `rewritten`."""
    return None if rewritten is None else msgs.common(body=rewritten)
