"""Builders for ext_proc protobuf replies: the only module that spells Envoy's message shapes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2

ProcessingRequest = pb.ProcessingRequest
ProcessingResponse = pb.ProcessingResponse
HttpHeaders = pb.HttpHeaders
HttpBody = pb.HttpBody
CommonResponse = pb.CommonResponse


def headers_of(message: pb.HttpHeaders) -> dict[str, str]:
    """Envoy's header map as a dict of lower-case names (Envoy sends values as raw bytes)."""
    out: dict[str, str] = {}
    for h in message.headers.headers:
        out[h.key.lower()] = h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
    return out


_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def _fill_mutation(
    mutation: pb.HeaderMutation, set_headers: Mapping[str, str], remove: Iterable[str]
) -> None:
    """Fill `mutation` in place (building a message and copying it in costs twice the work)."""
    options = mutation.set_headers
    for k, v in set_headers.items():
        option = options.add(append_action=_OVERWRITE)
        option.header.key = k
        option.header.raw_value = v.encode()
    mutation.remove_headers.extend(remove)


def _mutation(set_headers: Mapping[str, str], remove: Iterable[str]) -> pb.HeaderMutation:
    mutation = pb.HeaderMutation()
    _fill_mutation(mutation, set_headers, remove)
    return mutation


def common(
    *,
    set_headers: Mapping[str, str] | None = None,
    remove: Iterable[str] = (),
    body: bytes | None = None,
    clear_route_cache: bool = False,
) -> pb.CommonResponse:
    resp = pb.CommonResponse(clear_route_cache=clear_route_cache)
    if set_headers or remove:
        _fill_mutation(resp.header_mutation, set_headers or {}, remove)
    if body is not None:
        resp.body_mutation.body = body
    return resp


def string_struct(namespace: str, fields: Mapping[str, str]) -> struct_pb2.Struct:
    """Dynamic metadata `{namespace: {name: string}}`, filled in place (`Struct.update` walks
    every value through protobuf's Python helpers: twice the time)."""
    metadata = struct_pb2.Struct()
    values = metadata.fields[namespace].struct_value.fields
    for k, v in fields.items():
        values[k].string_value = v
    return metadata


_PM = processing_mode_pb2.ProcessingMode
# The request filter's mode for a request the sidecar forwards, set by its reply to the request
# headers (`mode_override`): its body, buffered; its response headers, and a JSON answer's body
# buffered up to Envoy's limit (PARTIAL: a larger one goes on unmetered after its first part and is
# charged its bound). The filter's configured mode sends it no response at all, so a reply Envoy
# makes itself before this one (a header timeout, a malformed request) or one the sidecar made
# (an immediate response) never comes back to the sidecar as a response to meter.
FORWARDED_MODE = _PM(
    request_header_mode=_PM.SEND,
    request_body_mode=_PM.BUFFERED,
    response_header_mode=_PM.SEND,
    response_body_mode=_PM.BUFFERED_PARTIAL,
    request_trailer_mode=_PM.SKIP,
    response_trailer_mode=_PM.SKIP,
)


def request_headers_reply(
    c: pb.CommonResponse, *, forwarded: bool = False
) -> pb.ProcessingResponse:
    """Continue; `forwarded`: the request goes on to a provider, so this stream gets its body and
    its response (`FORWARDED_MODE`)."""
    reply = pb.ProcessingResponse(request_headers=pb.HeadersResponse(response=c))
    if forwarded:
        reply.mode_override.CopyFrom(FORWARDED_MODE)
    return reply


def request_body_reply(
    c: pb.CommonResponse, *, dynamic_metadata: struct_pb2.Struct | None = None
) -> pb.ProcessingResponse:
    reply = pb.ProcessingResponse(request_body=pb.BodyResponse(response=c))
    if dynamic_metadata is not None:
        reply.dynamic_metadata.CopyFrom(dynamic_metadata)
    return reply


def observed_state(request: pb.ProcessingRequest, namespace: str, key: str) -> str | None:
    """A string the request filter left in Envoy's dynamic metadata (forwarded to an
    observability-mode stream on every message), or None."""
    metadata = request.metadata_context.filter_metadata
    if namespace not in metadata:
        return None
    value = metadata[namespace].fields.get(key)
    return value.string_value if value is not None else None


def response_headers_reply(c: pb.CommonResponse, *, stream_body: bool) -> pb.ProcessingResponse:
    reply = pb.ProcessingResponse(response_headers=pb.HeadersResponse(response=c))
    if stream_body:
        reply.mode_override.CopyFrom(
            processing_mode_pb2.ProcessingMode(
                response_body_mode=processing_mode_pb2.ProcessingMode.STREAMED
            )
        )
    return reply


# The reply to the response headers of a request whose response another stream meters (observe
# mode's event streams): no body to this stream; built once, never mutated.
_HEADERS_WITHOUT_BODY = pb.ProcessingResponse(
    response_headers=pb.HeadersResponse(),
    mode_override=processing_mode_pb2.ProcessingMode(
        response_body_mode=processing_mode_pb2.ProcessingMode.NONE
    ),
)


def response_headers_without_body() -> pb.ProcessingResponse:
    """Continue, and send this stream neither the response body nor anything after it."""
    return _HEADERS_WITHOUT_BODY


# The reply to nearly every streamed chunk: built once, never mutated, serialised per send.
_CONTINUE_BODY = pb.ProcessingResponse(response_body=pb.BodyResponse(response=pb.CommonResponse()))


def response_body_reply(c: pb.CommonResponse | None = None) -> pb.ProcessingResponse:
    if c is None:
        return _CONTINUE_BODY
    return pb.ProcessingResponse(response_body=pb.BodyResponse(response=c))


def passthrough(request: pb.ProcessingRequest) -> pb.ProcessingResponse:
    """An empty 'continue' reply of the right kind for any phase."""
    phase = request.WhichOneof("request")
    if phase in ("request_headers", "response_headers"):
        return pb.ProcessingResponse(**{phase: pb.HeadersResponse()})
    if phase in ("request_body", "response_body"):
        return pb.ProcessingResponse(**{phase: pb.BodyResponse()})
    return pb.ProcessingResponse(**{phase or "request_trailers": pb.TrailersResponse()})


def immediate(
    status: int, body: bytes, headers: Mapping[str, str], details: str
) -> pb.ProcessingResponse:
    """Answer the client directly; Envoy never contacts the upstream."""
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status),
            headers=_mutation(headers, ()),
            body=body,
            details=details,
        )
    )
