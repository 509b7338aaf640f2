"""AWS event-stream framing, written: the mock's Bedrock streams. botocore has a decoder only
(`botocore.eventstream`), so this small encoder is the mock's own, and tests check that
botocore decodes what it writes. Pure.

A message: prelude (total length, headers length: big-endian uint32 each; the CRC32 of those 8
bytes), headers (name length: uint8, name, type 7 = string, value length: uint16, value),
payload, then the CRC32 of everything before it.
"""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Mapping

import orjson

CONTENT_TYPE = "application/vnd.amazon.eventstream"
_STRING = 7


def _headers(headers: Mapping[str, str]) -> bytes:
    out = bytearray()
    for name, value in headers.items():
        raw_name, raw_value = name.encode(), value.encode()
        out += struct.pack(">B", len(raw_name)) + raw_name
        out += struct.pack(">BH", _STRING, len(raw_value)) + raw_value
    return bytes(out)


def encode_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One event-stream message."""
    head = _headers(headers)
    total = 12 + len(head) + len(payload) + 4
    prelude = struct.pack(">II", total, len(head))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + head + payload
    return body + struct.pack(">I", zlib.crc32(body))


def chunk_event(event: Mapping[str, object]) -> bytes:
    """A `chunk` event carrying one Anthropic stream event, as InvokeModelWithResponseStream
    sends it: the event's JSON, base64, under `bytes`."""
    inner = base64.b64encode(orjson.dumps(event)).decode()
    return encode_message(
        {":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"},
        orjson.dumps({"bytes": inner}),
    )


def event_frame(name: str, event: Mapping[str, object]) -> bytes:
    """One ConverseStream event (`messageStart`, `contentBlockDelta`, `metadata`, ...): its
    JSON as the payload, named by `:event-type`."""
    return encode_message(
        {":event-type": name, ":content-type": "application/json", ":message-type": "event"},
        orjson.dumps(event),
    )


def exception_event(name: str, message: str) -> bytes:
    """A modeled exception mid-stream (`throttlingException`, `modelStreamErrorException`, ...)."""
    return encode_message(
        {
            ":exception-type": name,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        orjson.dumps({"message": message}),
    )
