"""The caller check: Envoy sends a per-deployment token as gRPC metadata on every ext_proc stream
(`GrpcService.initial_metadata`); a stream without the right one is refused before any work.

Pure: metadata in, a verdict out. The comparison is constant-time and covers every accepted
token, so neither the position of the first differing byte nor which token matched shows in
the time it takes.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Iterable

# The gRPC metadata key Envoy's bootstrap sets (lower case: gRPC metadata keys are).
METADATA_KEY = "x-gateway-sidecar-token"


class Refusal(enum.Enum):
    MISSING = "missing"  # no token at all: not Envoy, or an Envoy without the bootstrap's token
    WRONG = "wrong"  # a token that is none of the accepted ones


class CallerCheck:
    def __init__(self, tokens: tuple[bytes, ...]) -> None:
        """`tokens` empty: every caller passes (TLS with client certificates authenticates)."""
        self.tokens = tokens

    def refusal(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Refusal | None:
        """None when the stream's metadata carries an accepted token, else why not. Only the
        first value under METADATA_KEY counts (Envoy sends one)."""
        if not self.tokens:
            return None
        presented: bytes | None = None
        for key, value in metadata or ():
            if key == METADATA_KEY:
                presented = value.encode() if isinstance(value, str) else bytes(value)
                break
        if presented is None:
            return Refusal.MISSING
        accepted = False
        for token in self.tokens:
            accepted |= hmac.compare_digest(presented, token)
        return None if accepted else Refusal.WRONG
