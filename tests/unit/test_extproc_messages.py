"""The ext_proc reply builders (extproc/messages.py) fill messages in place for speed: what they
build is exactly what protobuf's own constructors and `Struct.update` build."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2

from gateway_extproc.extproc import messages as msgs

SET = {"x-gateway-cluster": "provider_openai", "content-length": "312", "x-note": "naïve"}
REMOVE = ["authorization", "accept-encoding"]


def _expected_mutation() -> pb.HeaderMutation:
    return pb.HeaderMutation(
        set_headers=[
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=k, raw_value=v.encode()),
                append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
            )
            for k, v in SET.items()
        ],
        remove_headers=REMOVE,
    )


def test_common_is_the_constructed_message() -> None:
    built = msgs.common(set_headers=SET, remove=REMOVE, body=b"{}", clear_route_cache=True)
    expected = pb.CommonResponse(clear_route_cache=True, header_mutation=_expected_mutation())
    expected.body_mutation.body = b"{}"
    assert built == expected
    assert not msgs.common().HasField("header_mutation")


def test_immediate_carries_the_headers() -> None:
    reply = msgs.immediate(429, b"{}", SET, "gateway_budget_exceeded")
    mutation = pb.HeaderMutation(set_headers=_expected_mutation().set_headers)
    assert reply.immediate_response.headers == mutation


def test_string_struct_is_what_struct_update_builds() -> None:
    fields = {"state": '{"v":1}', "state_mac": "abc", "x-gateway-request-id": "r1"}
    expected = struct_pb2.Struct()
    expected.update({"llm_gateway": fields})
    assert msgs.string_struct("llm_gateway", fields) == expected
