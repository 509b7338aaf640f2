"""The MAC on the request state the request phase hands to the observer (observe mode).

The state travels in Envoy's dynamic metadata and comes back to the sidecar on the observer's
ext_proc stream: whoever can open such a stream could otherwise book spend against any budget,
write any cache entry and any audit record. The request phase signs the state's exact text with
HMAC-SHA256 under a key only the sidecar workers hold; the observer verifies it once per stream,
before the state is even decoded. Several keys rotate: the first signs, any verifies.

Pure: text and keys in, a MAC or a verdict out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


class StateSeal:
    def __init__(self, keys: tuple[bytes, ...]) -> None:
        if not keys:
            raise ValueError("a StateSeal needs at least one key")
        # Keyed once: each use copies the keyed state instead of hashing the key again.
        self._keyed = tuple(hmac.new(key, digestmod=hashlib.sha256) for key in keys)

    def _mac(self, keyed: hmac.HMAC, data: bytes) -> bytes:
        """URL-safe base64 of the HMAC, without padding (43 characters)."""
        h = keyed.copy()
        h.update(data)
        return base64.urlsafe_b64encode(h.digest()).rstrip(b"=")

    def sign(self, text: str) -> str:
        """The MAC of `text` under the first key."""
        return self._mac(self._keyed[0], _utf8(text)).decode()

    def verify(self, text: str, mac: str | None) -> bool:
        """Whether `mac` is the MAC of `text` under any of the keys, exactly as `sign` writes
        it (constant-time compares, every key tried)."""
        if not mac:
            return False
        presented = _utf8(mac)
        data = _utf8(text)
        valid = False
        for keyed in self._keyed:
            valid |= hmac.compare_digest(presented, self._mac(keyed, data))
        return valid


def _utf8(text: str) -> bytes:
    """UTF-8, a lone surrogate included as its code point's bytes: a state or MAC that carries
    one (never one the sidecar wrote) then fails to verify instead of raising."""
    return text.encode("utf-8", "surrogatepass")
