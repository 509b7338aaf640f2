"""Where the request phase's parts meet, asserted at the processor: `StreamProcessor.handle()`
driven with ext_proc messages as Envoy sends them, over a real redis-server holding the budgets
and the response cache.

- guardrails come before the reservation: a blocked prompt reserves nothing, and a redacted one
  is bounded on the body the provider gets, not on the one the client sent;
- the budget meets the cache: a downgraded request's answer (another model's) is never stored,
  and an answer is stored only under the output cap it was forwarded with;
- a worker whose budget-store turns are all taken answers an honest 503 `overloaded` in the
  client's API format, and reserves nothing for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway_extproc.apis import Api
from gateway_extproc.audit import AuditSink
from gateway_extproc.budgets.gate import BudgetGate
from gateway_extproc.cache.service import build_cache
from gateway_extproc.config.gateway import GatewayConfig, load_document, merge, parse_config
from gateway_extproc.config.upstreams import resolve_upstreams
from gateway_extproc.extproc.context import GatewayContext
from gateway_extproc.identity.authenticator import Authenticator
from gateway_extproc.providers.inbound import parse_request
from gateway_extproc.request import route as route_module
from gateway_extproc.request.processor import StreamProcessor
from gateway_extproc.runtime import build_gate
from tests.redis_servers import (  # noqa: F401 - redis_standalone_server is a session fixture
    RedisEndpoint,
    redis_standalone_server,
    standalone_redis,
)
from tests.sidecar_secrets import sidecar_auth
from tests.unit.test_budget_gate import until_blocked
from tests.unit.test_guardrails import SECRET_TEXT
from tests.unit.test_processor import (
    CHAT_PATH,
    MESSAGES_PATH,
    MOCK,
    req_body,
    req_headers,
    resp_body,
    resp_headers,
)

TIGHT, ROOMY = "sk-tight-0123456789", "sk-roomy-0123456789"
# Short addresses the email guardrail redacts: "[REDACTED:email]" is longer than each, so the
# body the provider gets - and pays for - is larger than the one the client sent.
EMAILS = " ".join(f"u{i}@x.io" for i in range(300))


def _sha(secret: str) -> dict[str, str]:
    return {"sha256": hashlib.sha256(secret.encode()).hexdigest()}


def config_doc(endpoint: RedisEndpoint, prefix: str, **store: int) -> dict[str, Any]:
    month = {"type": "calendar", "period": "month"}
    return {
        "identity": {"static_tokens": {"tight": _sha(TIGHT), "roomy": _sha(ROOMY)}},
        "metering": {"mode": "synchronous"},  # this processor answers the response phases
        "budget_store": {
            "redis_url": f"redis://{endpoint.host}:{endpoint.port}/0",
            "key_prefix": prefix,
            **store,
        },
        "budgets": [
            {  # any gpt-4o request of `tight` is over it: downgraded to gpt-4o-mini
                "name": "tight",
                "scope": {"kind": "static_token"},
                "match": {"static_tokens": ["tight"], "models": ["gpt-4o"]},
                "limit_usd": 0.000001,
                "window": month,
                "action": "downgrade",
                "downgrade_to": "gpt-4o-mini",
            },
            {
                "name": "roomy",
                "scope": {"kind": "static_token"},
                "match": {"static_tokens": ["roomy"]},
                "limit_usd": 100,
                "window": month,
                "action": "block",
            },
        ],
        "guardrails": [{"name": "g", "categories": {"secrets": "block", "email": "redact"}}],
        # One tenant for everyone: a stored answer would reach every caller.
        "cache": {"rules": [{"name": "all", "ttl": "1h", "scope": "global"}]},
    }


class Gateway:
    """A context as the runtime builds it (budgets and cache on the given Redis)."""

    def __init__(self, config: GatewayConfig, audit_path: Path) -> None:
        self.config = config
        self.audit_path = audit_path
        self.ctx = GatewayContext(
            config=config,
            catalog=config.catalog,
            upstreams=resolve_upstreams(config, {}, MOCK),
            audit=AuditSink(stdout=False, path=str(audit_path)),
            authenticator=Authenticator(config.identity),
            budgets=build_gate(config),
            sidecar_auth=sidecar_auth(),
            cache=build_cache(config.cache, config.budget_store),
        )
        prefix = config.budget_store.key_prefix
        self.redis = Redis.from_url(config.budget_store.redis_url)
        self.cache_entries = f"{prefix}:{{gwc}}:e:*"
        self.prefix = prefix

    @property
    def gate(self) -> BudgetGate:
        return self.ctx.budgets

    async def start(self) -> None:
        await self.gate.services.start()

    async def close(self) -> None:
        await self.ctx.cache.close()
        await self.gate.services.close()
        await self.redis.aclose()
        self.ctx.audit.close()

    async def keys(self, pattern: str = "*") -> list[bytes]:
        return [k async for k in self.redis.scan_iter(f"{self.prefix}:{pattern}")]

    async def entries(self) -> int:
        return len([k async for k in self.redis.scan_iter(self.cache_entries)])

    def records(self) -> list[dict[str, Any]]:
        assert self.ctx.audit.flush(timeout_s=10)
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]

    async def ask(self, token: str, body: dict[str, Any], path: str = CHAT_PATH) -> Any:
        """Headers and body phases; the body phase's reply."""
        p = StreamProcessor(self.ctx)
        self.last = p
        headers = {"authorization": f"Bearer {token}"}
        if path == MESSAGES_PATH:
            headers["anthropic-version"] = "2023-06-01"
        first = await p.handle(req_headers(path, extra=headers, request_id=uuid.uuid4().hex))
        assert first.WhichOneof("response") == "request_headers", first
        return await p.handle(req_body(body))

    async def answer(self, model: str, text: str = "a fine answer") -> None:
        """The provider's JSON answer to the last forwarded request, through the response phases;
        then the cache's store and the settle have run."""
        p = self.last
        usage = {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23}
        message = {"role": "assistant", "content": text}
        answer = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": usage,
        }
        await p.handle(resp_headers())
        await p.handle(resp_body(json.dumps(answer).encode(), end=True))
        await self.ctx.cache.drain()
        await self.gate.drain()


def forwarded_body(reply: Any) -> dict[str, Any]:
    assert reply.WhichOneof("response") == "request_body", reply
    mutation = reply.request_body.response.body_mutation
    return dict(json.loads(mutation.body))


def immediate(reply: Any) -> tuple[int, dict[str, Any]]:
    assert reply.WhichOneof("response") == "immediate_response", reply
    return reply.immediate_response.status.code, json.loads(reply.immediate_response.body)


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def make_gateway(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    made: list[Gateway] = []

    async def make(endpoint: RedisEndpoint, **store: int) -> Gateway:
        prefix = f"t{uuid.uuid4().hex[:10]}"
        doc = merge(load_document(None), config_doc(endpoint, prefix, **store))
        gw = Gateway(parse_config(doc, {}), tmp_path / f"audit-{prefix}.jsonl")
        await gw.start()
        made.append(gw)
        return gw

    yield make
    for gw in made:
        await gw.close()


@pytest.fixture
async def gw(make_gateway: GatewayFactory, request: pytest.FixtureRequest) -> Gateway:
    return await make_gateway(request.getfixturevalue("redis_standalone_server"))


def chat(model: str, content: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


# -- guardrails before the reservation ------------------------------------------------------------


async def test_a_blocked_prompt_reserves_nothing(gw: Gateway) -> None:
    status, error = immediate(await gw.ask(ROOMY, chat("gpt-4o", SECRET_TEXT)))
    assert (status, error["error"]["code"]) == (400, "guardrail_blocked")
    assert gw.last.admission is None
    # No counter, no reservation record, no lease: only the refusal's count in the day's spend
    # rollup and the marker that makes that count happen once (`<reservation id>:answered`).
    await gw.ctx.budgets.drain()
    keys = sorted(k.decode().removeprefix(gw.prefix + ":{gwb}:") for k in await gw.keys())
    assert [k.split(":")[0] for k in keys] == ["res", "spend"]
    assert keys[0].endswith(":answered")
    (record,) = gw.records()
    assert record["status"] == 400 and record["budget"] is None


async def test_a_redacted_prompt_is_bounded_on_the_body_the_provider_gets(gw: Gateway) -> None:
    sent = forwarded_body(await gw.ask(ROOMY, chat("gpt-4o", EMAILS)))
    assert "[REDACTED:email]" in sent["messages"][0]["content"]
    entry = gw.ctx.catalog.lookup("gpt-4o")
    assert entry is not None

    def estimate(body: dict[str, Any]) -> int:
        request = parse_request(Api.OPENAI_CHAT, json.dumps(body).encode())
        bound_for = route_module.bounder(
            request,
            default_max_output=gw.gate.settings.default_max_output_tokens,
            unseen_input=gw.gate.settings.unseen_input,
            long_context_beta=False,
        )
        return BudgetGate.estimate(bound_for(entry), entry)

    sent.pop("max_completion_tokens")  # the cap the gateway injected: the client set none
    redacted, original = estimate(sent), estimate(chat("gpt-4o", EMAILS))
    assert redacted > original  # the redaction made the prompt longer: it costs more
    admission = gw.last.admission
    assert admission is not None
    (charge,) = admission.charges
    assert charge.estimate_micros == redacted
    assert gw.gate.store is not None
    status = await gw.gate.store.status(charge.budget, charge.scope_value, time.time())
    assert status.held_micros == redacted  # what Redis holds, not only what was computed


# -- the budget and the response cache ------------------------------------------------------------


async def test_a_downgraded_answer_is_never_stored(gw: Gateway) -> None:
    prompt = chat("gpt-4o", f"What is {uuid.uuid4().hex}?")
    sent = forwarded_body(await gw.ask(TIGHT, prompt))
    assert sent["model"] == "gpt-4o-mini"  # over the tight budget: downgraded
    await gw.answer("gpt-4o-mini", "the small model's answer")
    assert await gw.entries() == 0
    # The same request, admitted on gpt-4o: a miss (the small model's answer was not kept under
    # gpt-4o's key), forwarded as asked, and its answer stored - and served - as gpt-4o's.
    sent = forwarded_body(await gw.ask(ROOMY, prompt))
    assert sent["model"] == "gpt-4o"
    await gw.answer("gpt-4o", "the large model's answer")
    assert await gw.entries() == 1
    status, hit = immediate(await gw.ask(ROOMY, prompt))
    assert status == 200
    assert hit["choices"][0]["message"]["content"] == "the large model's answer"
    cache = [r["cache"] for r in gw.records()]
    assert cache == ["miss", "miss", "hit"]


async def test_an_answer_is_stored_only_under_the_cap_it_was_forwarded_with(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lookup predicts the output cap the admission injects (the key is over the body the
    provider answers); should the two ever differ, the answer is not stored at all."""
    prompt = chat("gpt-4o", f"What is {uuid.uuid4().hex}?")
    sent = forwarded_body(await gw.ask(ROOMY, prompt))
    cap = sent["max_completion_tokens"]
    assert gw.last.cache_cap == ("max_completion_tokens", cap)
    await gw.answer("gpt-4o")
    assert await gw.entries() == 1
    monkeypatch.setattr(route_module, "cap_if_admitted", lambda *args: None)
    other = chat("gpt-4o", f"What is {uuid.uuid4().hex}?")
    sent = forwarded_body(await gw.ask(ROOMY, other))
    assert sent["max_completion_tokens"] == cap  # injected, though the lookup assumed none
    await gw.answer("gpt-4o")
    assert await gw.entries() == 1  # keyed for another body: not stored


# -- a worker out of budget-store turns -----------------------------------------------------------


@pytest.fixture
async def crowded(make_gateway: GatewayFactory) -> AsyncIterator[Gateway]:
    """One budget-store call at a time, a 200 ms wait for a turn, on a Redis of its own."""
    with standalone_redis() as endpoint:
        yield await make_gateway(endpoint, max_inflight=1, queue_timeout_ms=200, deadline_ms=5000)


async def test_a_worker_out_of_store_turns_answers_503_overloaded_in_the_client_format(
    crowded: Gateway,
) -> None:
    gw = crowded
    control = Redis.from_url(gw.config.budget_store.redis_url)
    await control.client_pause(10_000, all=False)  # scripts wait; reads still answer
    try:
        first = asyncio.ensure_future(gw.ask(ROOMY, chat("gpt-4o", "first")))
        await until_blocked(control, 1)  # its reservation holds the worker's one turn
        status, error = immediate(await gw.ask(ROOMY, chat("gpt-4o", "second")))
        refused = [gw.last.reservation_id]
        assert status == 503
        assert (error["error"]["code"], error["error"]["type"]) == ("overloaded", "server_error")
        claude = {"model": "claude-sonnet-5", "max_tokens": 10, "messages": [{"role": "user"}]}
        claude["messages"][0]["content"] = "third"
        status, error = immediate(await gw.ask(ROOMY, claude, MESSAGES_PATH))
        refused.append(gw.last.reservation_id)
        assert status == 503
        assert error["type"] == "error" and error["error"]["type"] == "overloaded_error"
        assert gw.gate.services.stats.overloaded == 2
        assert gw.gate.store_errors == 0  # not a store fault: the breaker is not told
    finally:
        await control.client_unpause()
        await control.aclose()
    assert forwarded_body(await first)["model"] == "gpt-4o"  # the turn's holder went through
    overloaded = [r for r in gw.records() if r["status"] == 503]
    assert [(r["error_code"], r["budget"]) for r in overloaded] == [("overloaded", None)] * 2
    store = gw.gate.store
    assert store is not None
    for reservation_id in refused:  # never reserved
        assert not await gw.redis.exists(store.record_key(reservation_id))
