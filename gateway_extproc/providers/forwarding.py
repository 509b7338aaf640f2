"""Which client headers reach a provider: an allow-list per provider. Pure.

A provider sees only what the gateway allows. Some client headers change what a request costs
or who pays for it (`anthropic-beta` turns on premium-priced betas such as the 1M-token context;
`openai-organization` / `openai-project` pick the billed account of a multi-org key): those are
refused with 400 `header_not_allowed` unless the provider's `forward_headers` lists them, since
silently dropping a beta the client relies on changes its results. Any other header that is not
allowed is dropped.

Forwarded to every provider: `content-type`, `accept`, `user-agent`, the W3C trace context
(`traceparent`, `tracestate`), the official SDKs' `x-stainless-*` telemetry (OS, runtime,
retry count, timeout), plus `anthropic-version` for Anthropic-schema providers, `x-mock-*`
for a provider served by the built-in mock, and whatever `providers.NAME.forward_headers` adds
(names, or prefixes ending in `*`). Never touched here, because Envoy owns them: pseudo-headers
(`:path`, `:method`, ...), `host`, `content-length`, `transfer-encoding`, `te`, `x-request-id`,
`x-envoy-*`, `x-forwarded-*`. Credentials, `x-gateway-*` and `accept-encoding` are removed in the
request-headers phase and can never be allowed.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Iterable

from gateway_extproc.apis import Schema
from gateway_extproc.errors import HeaderNotAllowed

__all__ = [
    "BILLING_HEADERS",
    "DEFAULT_FORWARDED",
    "ForwardPolicy",
    "forward_header_problems",
    "forward_policy",
]

DEFAULT_FORWARDED = ("content-type", "accept", "user-agent", "traceparent", "tracestate")
DEFAULT_PREFIXES = ("x-stainless-",)
SCHEMA_FORWARDED = {
    Schema.ANTHROPIC: ("anthropic-version",),
    Schema.OPENAI: (),
    Schema.GEMINI: ("x-goog-api-client",),  # the google SDKs' telemetry (SDK and runtime names)
    # Bedrock: `anthropic-version` goes into the body as `anthropic_version` (translate/).
    Schema.BEDROCK: (),
}
MOCK_PREFIX = "x-mock-"
# What each header changes, for the 400 message.
BILLING_HEADERS = {
    "anthropic-beta": "enables beta features, some billed at a premium",
    "openai-organization": "chooses the organization that is billed",
    "openai-project": "chooses the project that is billed",
}
_ENVOY_OWNED = frozenset({"host", "content-length", "transfer-encoding", "te", "x-request-id"})
_ENVOY_PREFIXES = (":", "x-envoy-", "x-forwarded-")
# Removed before routing by the processor (credentials, internal headers, compression).
_NEVER = frozenset({"authorization", "x-api-key", "api-key", "x-goog-api-key", "accept-encoding"})
_NEVER_PREFIXES = ("x-gateway-",)
_ENTRY = re.compile(r"[a-z0-9!#$%&'+.^_`|~-]+\*?")  # an RFC 9110 token, lower-case; `*` at the end


@dataclasses.dataclass(frozen=True, slots=True)
class ForwardPolicy:
    """The headers one provider may receive from clients."""

    names: frozenset[str]
    prefixes: tuple[str, ...]

    def allows(self, name: str) -> bool:
        return (
            name in self.names
            or name in _ENVOY_OWNED
            or name.startswith(_ENVOY_PREFIXES)
            or name.startswith(self.prefixes)
        )

    def removals(
        self, names: Iterable[str], *, provider: str, keep: Collection[str] = ()
    ) -> list[str]:
        """The client headers (lower-case names) to drop before the request goes to `provider`;
        `keep` are headers the gateway sets itself in the same mutation. Raises
        HeaderNotAllowed for a billing header this provider is not allowed to receive."""
        out: list[str] = []
        for name in names:
            if self.allows(name) or name in keep:
                continue
            reason = BILLING_HEADERS.get(name)
            if reason is not None:
                raise HeaderNotAllowed(
                    f"header {name} is not forwarded to provider {provider}: it {reason}. "
                    f"Send the request without it, or ask the operator to allow it "
                    f"(providers.{provider}.forward_headers)"
                )
            out.append(name)
        return out


def forward_policy(schema: Schema, extra: Iterable[str], *, mocked: bool) -> ForwardPolicy:
    """The policy for a provider of `schema` whose config adds `extra` (validated entries)."""
    entries = [*DEFAULT_FORWARDED, *SCHEMA_FORWARDED[schema], *extra]
    names = frozenset(e for e in entries if not e.endswith("*"))
    prefixes = [*DEFAULT_PREFIXES, *(e[:-1] for e in entries if e.endswith("*"))]
    if mocked:
        prefixes.append(MOCK_PREFIX)
    return ForwardPolicy(names, tuple(prefixes))


def forward_header_problems(raw: object, path: str) -> tuple[tuple[str, ...], list[str]]:
    """Validate `providers.NAME.forward_headers`: the entries (lower-cased) and every problem."""
    if raw is None:
        return (), []
    if not isinstance(raw, list):
        return (), [f"{path}: must be a list of header names (got {raw!r})"]
    out: list[str] = []
    problems: list[str] = []
    for i, item in enumerate(raw):
        entry = item.lower() if isinstance(item, str) else None
        where = f"{path}[{i}]"
        if entry is None or not _ENTRY.fullmatch(entry) or entry == "*":
            problems.append(
                f"{where}: must be a header name, or a prefix ending in * (got {item!r})"
            )
        elif entry in _NEVER or entry.startswith(_NEVER_PREFIXES):
            problems.append(f"{where}: {entry} is never forwarded (credentials, internal headers)")
        elif entry not in out:
            out.append(entry)
    return tuple(out), problems
