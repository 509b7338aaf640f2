"""The cache key (which fields change it, which do not, the tenant) and the cache decision."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway_extproc.apis import Api
from gateway_extproc.budgets.model import Match
from gateway_extproc.cache.key import (
    CacheTicket,
    ClientCacheHeaders,
    Control,
    cache_key,
    client_headers,
    rule_for,
    stateful,
    tenant,
)
from gateway_extproc.cache.settings import CacheRule, CacheScope
from gateway_extproc.errors import BadRequest
from gateway_extproc.identity.model import ANONYMOUS, AuthMethod, Identity, Kind

BASE: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "hi"}],
    "temperature": 0.2,
}


ALICE = ("user", "dev", "a")


def key(
    body: dict[str, Any],
    *,
    model: str = "gpt-4o-mini",
    who: tuple[str, ...] = ALICE,
    beta: str = "",
    cap: tuple[str, int] | None = None,
) -> str:
    return cache_key(Api.OPENAI_CHAT, model, body, tenant=who, beta=beta, output_cap=cap)


@pytest.mark.parametrize(
    "change",
    [
        {"messages": [{"role": "user", "content": "hi!"}]},
        {
            "messages": [
                {"role": "system", "content": "be terse"},
                {"role": "user", "content": "hi"},
            ]
        },
        {"temperature": 0.3},
        {"top_p": 0.9},
        {"max_tokens": 10},
        {"max_completion_tokens": 10},
        {"seed": 1},
        {"response_format": {"type": "json_object"}},
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        {"tool_choice": "none"},
        {"stop": ["\n"]},
        {"n": 2},
        {"logprobs": True},
        {"reasoning_effort": "high"},
        {"some_future_parameter": 1},  # unknown fields are part of the key
        {"store": True},  # a stored response can be chained (previous_response_id), a replay not
        {"previous_response_id": "resp_1"},
    ],
)
def test_parameters_that_change_the_answer_change_the_key(change: dict[str, Any]) -> None:
    assert key({**BASE, **change}) != key(BASE)


@pytest.mark.parametrize(
    "change",
    [
        {"stream": True},
        {"stream": True, "stream_options": {"include_usage": True}},
        {"user": "someone"},
        {"metadata": {"trace": "1"}},
        {"model": "gpt-4o-mini-2024-07-18"},  # an alias: the catalog model decides
        {"temperature": 0.2},  # the same value
    ],
)
def test_delivery_and_labels_do_not_change_the_key(change: dict[str, Any]) -> None:
    assert key({**BASE, **change}) == key(BASE)


def test_key_order_and_nulls_do_not_matter() -> None:
    reordered = {"temperature": 0.2, "messages": BASE["messages"], "model": "x", "seed": None}
    assert key(reordered) == key(BASE)


def test_model_api_tenant_and_beta_are_in_the_key() -> None:
    assert key(BASE, model="gpt-4o") != key(BASE)
    assert key(BASE, who=("user", "dev", "b")) != key(BASE)
    assert key(BASE, beta="context-1m-2025-08-07") != key(BASE)
    assert key(BASE, beta="b, a") == key(BASE, beta="a,b")
    other_api = cache_key(Api.ANTHROPIC_MESSAGES, "gpt-4o-mini", BASE, tenant=ALICE)
    assert other_api != key(BASE)
    assert len(key(BASE)) == 64


def person(user: str, *groups: str, issuer: str = "dev") -> Identity:
    return Identity(
        kind=Kind.USER,
        auth_method=AuthMethod.JWT,
        user=user,
        service=None,
        groups=frozenset(groups),
        issuer=issuer,
        attributes={},
        expires_at=None,
    )


def rule(scope: CacheScope, groups: list[str] | None = None) -> CacheRule:
    match = Match(groups=frozenset(groups) if groups else None)
    return CacheRule("r", match, 60, scope)


def test_tenants() -> None:
    user = rule(CacheScope.USER)
    assert tenant(user, person("a@x", "eng")) == ("user", "dev", "a@x")
    assert tenant(user, person("a@x", issuer="corp")) != tenant(user, person("a@x"))
    assert tenant(user, ANONYMOUS) is None  # anonymous callers share no subject: not cached
    group = rule(CacheScope.GROUP, ["eng", "ops"])
    assert tenant(group, person("a@x", "eng", "sales")) == ("group", "eng")
    assert tenant(group, person("b@x", "eng", "ops")) == ("group", "eng", "ops")
    assert tenant(rule(CacheScope.GROUP), person("c@x")) is None
    assert tenant(rule(CacheScope.GLOBAL), ANONYMOUS) == ("global",)


# (what, two identities whose names, joined with a separator, read the same)
LOOKALIKES = [
    ("a group named a,b vs the pair a, b", person("x", "a,b"), person("y", "a", "b")),
    ("a group named a vs the pair a, ''", person("x", "a"), person("y", "a", "")),
    ("issuer and user split at another ':'", person("b", issuer="i:a"), person("a:b", issuer="i")),
]


@pytest.mark.parametrize(("what", "one", "other"), LOOKALIKES, ids=[c[0] for c in LOOKALIKES])
def test_tenants_whose_names_join_alike_never_share_a_key(
    what: str, one: Identity, other: Identity
) -> None:
    scope = CacheScope.GROUP if one.groups else CacheScope.USER
    first, second = tenant(rule(scope), one), tenant(rule(scope), other)
    assert first is not None and second is not None
    assert first != second
    assert key(BASE, who=first) != key(BASE, who=second)


NAMES = st.text(alphabet=',:;| ab"\\', max_size=4)


@given(st.frozensets(NAMES, min_size=1, max_size=4), st.frozensets(NAMES, min_size=1, max_size=4))
def test_group_tenants_share_a_key_only_for_the_same_groups(
    one: frozenset[str], other: frozenset[str]
) -> None:
    """Whatever the names contain, two callers share group-scoped entries exactly when they
    are in the same (matched) groups."""
    group = rule(CacheScope.GROUP)
    first, second = tenant(group, person("x", *one)), tenant(group, person("y", *other))
    assert first is not None and second is not None
    assert (key(BASE, who=first) == key(BASE, who=second)) is (one == other)


def test_the_output_cap_the_gateway_injects_is_in_the_key() -> None:
    """The key is over the body the provider answers: an answer cut short by an injected cap is
    not the answer to the same request without one, and is the answer to one that sets it."""
    capped = key(BASE, cap=("max_completion_tokens", 4096))
    assert capped != key(BASE)
    assert capped != key(BASE, cap=("max_completion_tokens", 8192))
    assert capped == key({**BASE, "max_completion_tokens": 4096})


def test_first_matching_rule_wins() -> None:
    eng = CacheRule("eng", Match(groups=frozenset({"eng"})), 60)
    other = CacheRule("all", Match(), 5)
    assert rule_for([eng, other], person("a", "eng"), "m", "openai") is eng
    assert rule_for([eng, other], person("a", "ops"), "m", "openai") is other
    assert rule_for([eng], person("a", "ops"), "m", "openai") is None


def test_client_headers() -> None:
    assert client_headers(None, None) == ClientCacheHeaders()
    assert client_headers("SKIP", None).control is Control.SKIP
    assert client_headers("refresh", " 30 ") == ClientCacheHeaders(Control.REFRESH, 30)
    for control, ttl in [("bogus", None), (None, "0"), (None, "1.5"), (None, "-3"), (None, "")]:
        with pytest.raises(BadRequest):
            client_headers(control, ttl)


def test_ticket_travels_as_one_string() -> None:
    ticket = CacheTicket("miss", "ab" * 32, 3600)
    assert CacheTicket.from_metadata(ticket.to_metadata()) == ticket
    assert CacheTicket.from_metadata(CacheTicket("skip").to_metadata()) == CacheTicket("skip")
    assert ticket.response_headers() == {"x-gateway-cache-status": "miss"}


def test_stateful_responses_requests() -> None:
    assert stateful(Api.OPENAI_RESPONSES, {"conversation": "conv_1"})
    assert stateful(Api.OPENAI_RESPONSES, {"background": True, "stream": True})
    assert not stateful(Api.OPENAI_RESPONSES, {"previous_response_id": "resp_1"})
    assert not stateful(Api.OPENAI_CHAT, {"conversation": "x"})
