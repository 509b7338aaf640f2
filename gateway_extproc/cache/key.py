"""The cache key and the per-request cache decision. Pure: values in, values out.

The key is sha256 over a canonical JSON (sorted keys, no whitespace) of:
- the API and the catalog model the request resolves to (aliases give the same key); Gemini's
  stream path keys as its generateContent (the model and the stream are in the path, not the body);
- the request body without the fields that cannot change the answer (`DROPPED`) and without
  `model`; every other field - messages, system, tools, temperature, top_p, max tokens, seed,
  response_format, tool_choice, stop, n, logprobs, and any field this code does not know -
  is part of the key, so an unknown parameter can only cause a miss, never a wrong answer;
- the output cap the gateway writes into the body it forwards (a budgeted request that sets
  none gets one): the key is over the body the provider answered, so an answer the cap cut
  short is replayed only to requests that send (or are given) the same cap;
- the Anthropic beta flags (they change what the model does);
- the tenant: the rule's scope value (the caller's subject by default), as a list of its parts
  (kind, then issuer and name, or the sorted group names) - JSON-encoded, so no two tenants
  share an encoding whatever their names contain (a group named "a,b" is not the pair a, b).
  Entries of two tenants have different keys, so a cached answer never crosses tenants.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from gateway_extproc.apis import Api
from gateway_extproc.budgets.matching import matches
from gateway_extproc.cache.settings import CacheRule, CacheScope
from gateway_extproc.errors import BadRequest
from gateway_extproc.identity.model import Identity, Kind

CONTROL_HEADER = "x-gateway-cache"  # skip | refresh
TTL_HEADER = "x-gateway-cache-ttl"  # seconds, at most the rule's ttl
STATUS_HEADER = "x-gateway-cache-status"  # hit | miss | skip | refresh (response)
KEY_VERSION = 2  # 2: the tenant as a list of parts; the injected output cap

# The APIs whose answers are cached (not embeddings, not legacy completions). Responses requests
# that depend on mutable provider-side state are not cached (`stateful`).
CACHEABLE = frozenset(
    {
        Api.OPENAI_CHAT,
        Api.ANTHROPIC_MESSAGES,
        Api.OPENAI_RESPONSES,
        Api.GEMINI_GENERATE,
        Api.GEMINI_STREAM,
    }
)
# Gemini streams by path, not by a body field: both paths key as generateContent, so a streamed
# request and a JSON one share an entry as they do in the other APIs.
_KEYED_AS = {Api.GEMINI_STREAM: Api.GEMINI_GENERATE}
# Fields that change how the answer is delivered or labelled, never what it says.
DROPPED = frozenset(
    {
        "model",  # replaced by the catalog model
        "stream",
        "stream_options",
        "user",
        "metadata",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
    }
)
TOOL_FIELDS = ("tools", "functions")


class Control(enum.StrEnum):
    USE = "use"  # read, and store a miss (no header)
    SKIP = "skip"  # neither read nor store
    REFRESH = "refresh"  # do not read; store the fresh answer


@dataclasses.dataclass(frozen=True, slots=True)
class ClientCacheHeaders:
    control: Control = Control.USE
    ttl_s: int | None = None


def client_headers(control: str | None, ttl: str | None) -> ClientCacheHeaders:
    """The client's cache headers; BadRequest names the allowed values."""
    value = (control or Control.USE.value).strip().lower()
    try:
        parsed = Control(value)
    except ValueError:
        raise BadRequest(f"{CONTROL_HEADER} must be skip or refresh (got {control!r})") from None
    ttl_s = None
    if ttl is not None:
        text = ttl.strip()
        if not text.isdigit() or not 1 <= int(text) <= 10**9:
            raise BadRequest(f"{TTL_HEADER} must be a whole number of seconds >= 1 (got {ttl!r})")
        ttl_s = int(text)
    return ClientCacheHeaders(parsed, ttl_s)


@dataclasses.dataclass(frozen=True, slots=True)
class CacheTicket:
    """A request's cache decision that the response side needs: small and serialisable (it
    may travel to another worker in Envoy dynamic metadata). `key` empty: store nothing."""

    status: str  # miss | skip | refresh: the x-gateway-cache-status of a forwarded request
    key: str = ""
    ttl_s: int = 0

    def to_metadata(self) -> str:
        return f"{self.status}:{self.ttl_s}:{self.key}"

    @classmethod
    def from_metadata(cls, text: str) -> CacheTicket:
        status, ttl, key = text.split(":", 2)
        return cls(status, key, int(ttl))

    def response_headers(self) -> dict[str, str]:
        return {STATUS_HEADER: self.status}


def rule_for(
    rules: Sequence[CacheRule], identity: Identity, model: str, provider: str
) -> CacheRule | None:
    """The first rule that matches the request, None when none does (not cached)."""
    for rule in rules:
        if matches(rule.match, identity=identity, model=model, provider=provider):
            return rule
    return None


Tenant = tuple[str, ...]


def tenant(rule: CacheRule, identity: Identity) -> Tenant | None:
    """The scope value entries are shared within, as its parts (never joined into one string:
    names may contain any separator); None: this identity cannot be cached under the rule
    (anonymous callers have no subject of their own; a group scope needs a group)."""
    if rule.scope is CacheScope.GLOBAL:
        return ("global",)
    if rule.scope is CacheScope.GROUP:
        groups = identity.groups
        if rule.match.groups is not None:
            groups = groups & rule.match.groups
        return ("group", *sorted(groups)) if groups else None
    if identity.kind is Kind.ANONYMOUS:
        return None
    if identity.user:  # issuers are separate namespaces of user names
        return ("user", identity.issuer or "", identity.user)
    if identity.static_token:
        return ("static_token", identity.static_token)
    return ("service", identity.issuer or "", identity.service) if identity.service else None


def stateful(api: Api, body: Mapping[str, Any]) -> bool:
    """A Responses request whose answer depends on provider-side state that can change: a
    `conversation` (it grows) or a `background` response. (`previous_response_id` names an
    immutable response, so it is simply part of the key.)"""
    if api is not Api.OPENAI_RESPONSES:
        return False
    return body.get("background") is True or body.get("conversation") is not None


def has_tools(body: Mapping[str, Any]) -> bool:
    return any(body.get(field) for field in TOOL_FIELDS)


def normalised(
    api: Api,
    model: str,
    body: Mapping[str, Any],
    beta: str,
    output_cap: tuple[str, int] | None = None,
) -> dict[str, Any]:
    """What identifies the answer, tenant aside: the body as the provider gets it (with the
    `output_cap` field the gateway writes into it, if any)."""
    params = {k: v for k, v in body.items() if k not in DROPPED and v is not None}
    if output_cap is not None:
        field, tokens = output_cap
        params[field] = tokens
    flags = sorted({f.strip() for f in beta.split(",") if f.strip()})
    keyed_as = _KEYED_AS.get(api, api)
    return {"v": KEY_VERSION, "api": keyed_as.value, "model": model, "beta": flags, "body": params}


def cache_key(
    api: Api,
    model: str,
    body: Mapping[str, Any],
    *,
    tenant: Tenant,
    beta: str = "",
    output_cap: tuple[str, int] | None = None,
) -> str:
    doc = {"tenant": list(tenant), **normalised(api, model, body, beta, output_cap)}
    return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()
